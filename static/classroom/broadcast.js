// The broadcast, on both sides: the viewer's player (hls.js, served by us from npm) and the
// instructor's studio panel (go live, layout, destinations, OBS key, live health).
const POLL_MS = 2000;

export function setupBroadcast({ classId, page, send, banner }) {
  const $ = (id) => document.getElementById(id);
  const statusUrl = `/api/classes/${classId}/broadcast/`;
  const view = { status: null, player: null, timer: null, onStage: false };

  async function poll() {
    try {
      const response = await fetch(statusUrl, { credentials: "same-origin" });
      if (!response.ok) return;
      view.status = await response.json();
      render();
    } catch { /* the socket banner tells about lost connections */ }
  }

  function render() {
    const s = view.status;
    if (!s) return;
    if ($("player")) renderPlayer(s);
    if ($("broadcast-panel")) renderStudio(s);
  }

  // ---------- viewer --------------------------------------------------------------------------
  function renderPlayer(s) {
    const badge = $("player-status");
    // On stage, people see and hear the stage itself: the delayed program would only echo.
    $("player").closest(".player-wrap").hidden = view.onStage;
    if (view.onStage) {
      if (view.player) stopPlayer();
      return;
    }
    const live = s.hls.live;
    badge.textContent = live ? "LIVE" : s.hls.ended ? "Ended" : "Offline";
    badge.className = live ? "badge live" : "badge";
    $("viewer-count").textContent = `${s.viewers} watching`;
    $("player-offline").hidden = live;
    if (live && !view.player) startPlayer(s.hls.playlist_url);
    if (!live && view.player && s.hls.ended) stopPlayer();
  }

  function startPlayer(url) {
    const video = $("player");
    if (window.Hls && window.Hls.isSupported()) {
      // Low-latency mode: blocking reloads and parts, PART-HOLD-BACK (~1 s) behind live. No
      // liveSyncDuration* here: set, they would override the server's hold-back. A player that fell
      // behind (a stall) catches up by playing a little faster rather than jumping.
      // A quality ladder (the master playlist): hls.js picks the rung by measured bandwidth. startLevel
      // -1: it first fetches the lowest rung to measure the link, so a weak link never starts on 720p.
      const hls = new window.Hls({ lowLatencyMode: true, maxLiveSyncPlaybackRate: 1.25, startLevel: -1 });
      hls.loadSource(url);
      hls.attachMedia(video);
      hls.on(window.Hls.Events.ERROR, (_, data) => {
        if (data.fatal && data.type === window.Hls.ErrorTypes.NETWORK_ERROR) hls.startLoad();
        else if (data.fatal && data.type === window.Hls.ErrorTypes.MEDIA_ERROR) hls.recoverMediaError();
      });
      view.player = { video, hls };
    } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
      video.src = url; // Safari plays HLS natively
      view.player = { video, hls: null };
    }
    video.muted = false;
    video.play().catch(() => { video.muted = true; video.play().catch(() => {}); });
    window.classcast.player = view.player;
  }

  function stopPlayer() {
    view.player.video.pause();
    if (view.player.hls) view.player.hls.destroy();
    view.player = null;
    window.classcast.player = null;
  }

  function delayTick() {
    const p = view.player;
    const el = $("player-delay");
    if (!p || !el) return;
    const latency = p.hls ? p.hls.latency : NaN;
    el.textContent = Number.isFinite(latency) && latency > 0 ? `${latency.toFixed(1)} s behind live` : "";
    const quality = $("player-quality");
    const level = p.hls && p.hls.levels.length > 1 ? p.hls.levels[p.hls.currentLevel] : null;
    if (quality) quality.textContent = level && level.height ? `${level.height}p` : "";
  }

  // ---------- studio (instructor) ---------------------------------------------------------------
  function renderStudio(s) {
    const b = s.health;
    const active = s.broadcast !== null;
    const status = active ? s.broadcast.status : b ? b.status : "off air";
    $("bc-status").textContent = status === "live" ? "On air" : status;
    $("bc-status").className = status === "live" ? "badge live" : "badge";
    $("go-live").hidden = active;
    $("stop-live").hidden = !active;
    $("layout").disabled = !active;
    if (active && document.activeElement !== $("layout")) $("layout").value = s.broadcast.layout;
    const st = (b && b.stats) || {};
    const parts = [];
    if (active && st.fps !== undefined) parts.push(`${Number(st.fps).toFixed(1)} fps`);
    if (active && st.dropped_frames !== undefined) parts.push(`${st.dropped_frames} dropped`);
    if (active && st.video_bitrate_bps) parts.push(`${(st.video_bitrate_bps / 1e6).toFixed(2)} Mb/s`);
    parts.push(`${s.viewers} viewers`);
    $("bc-health").textContent = parts.join(" · ");
    const error = b && b.error;
    $("bc-error").hidden = !error;
    $("bc-error").textContent = error ? (b.error_is_user ? `Check your settings: ${error}` : error) : "";
    const studio = s.studio;
    $("ingest-url").textContent = studio.ingest_url;
    $("stream-key").textContent = studio.stream_key;
    const dests = (st.destinations) || {};
    $("destinations").replaceChildren(...studio.destinations.map((d) => {
      const li = document.createElement("li");
      const state = dests[`dest-${d.id}`];
      li.textContent = `${d.name} — ${d.url.replace(/\/[^/]+$/, "/•••")}${state ? ` (${state.state}${state.error ? `: ${state.error}` : ""})` : ""}`;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "small secondary";
      remove.textContent = "Remove";
      remove.onclick = () => { send("destination.remove", { destination_id: d.id }); setTimeout(poll, 300); };
      li.append(remove);
      return li;
    }));
  }

  if ($("broadcast-panel")) {
    $("go-live").onclick = () => { send("broadcast.start"); setTimeout(poll, 300); };
    $("stop-live").onclick = () => { send("broadcast.stop"); setTimeout(poll, 300); };
    $("layout").onchange = () => send("broadcast.layout", { layout: $("layout").value });
    $("rotate-key").onclick = () => {
      if (confirm("Rotate the stream key? OBS must be given the new one.")) { send("stream_key.rotate"); setTimeout(poll, 300); }
    };
    $("destination-form").onsubmit = (ev) => {
      ev.preventDefault();
      const form = ev.target;
      send("destination.add", { name: form.elements.name.value, url: form.elements.url.value });
      form.reset();
      setTimeout(poll, 300);
    };
  }

  poll();
  view.timer = setInterval(poll, POLL_MS);
  setInterval(delayTick, 1000);
  function setOnStage(onStage) {
    if (onStage === view.onStage) return;
    view.onStage = onStage;
    render();
  }

  return { refresh: poll, setOnStage, view };
}
