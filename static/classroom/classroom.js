// The class page (instructor console, student page, watch page): renders the server's snapshot,
// sends intents, and joins the stage call when its user is on stage.
import { ClassSocket } from "./socket.js";
import { StageCall } from "./rtc.js";
import { setupBroadcast } from "./broadcast.js";

const root = document.getElementById("classcast");
const classId = Number(root.dataset.classId);
const page = root.dataset.page;
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const app = {
  me: null,
  state: { session: null, stage: [], hands: [], participants: [] },
  members: [],
  remote: new Map(),     // user_id -> {name, tracks}
  quality: new Map(),
  legs: new Map(), // user_id -> {up, down}: each participant's links as the media node sees them
  call: null,
  inCall: false,
  rtcStates: {},
  joining: false,
  firstFrameMs: null,
  joinAskedAt: null,
  localError: null,
  lastError: null,
  events: [],
};
window.classcast = app; // for operators' consoles and the browser tests

// ---------- banner ------------------------------------------------------------------------------
let bannerTimer = null;
function banner(text, kind = "info", sticky = false) {
  const el = $("banner");
  el.textContent = text;
  el.className = `banner ${kind}`;
  el.hidden = false;
  clearTimeout(bannerTimer);
  if (!sticky) bannerTimer = setTimeout(() => (el.hidden = true), 5000);
}

// ---------- socket ------------------------------------------------------------------------------
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/classes/${classId}/?page=${page}`;
const socket = new ClassSocket(wsUrl, {
  onMessage: handle,
  onStatus(status, info) {
    if (status === "lost") {
      banner(`Connection lost. Reconnecting in ${Math.round(info.delay / 100) / 10} s…`, "warn", true);
      leaveCall(false);
    } else if (status === "reconnecting") banner("Reconnecting…", "warn", true);
    else if (status === "reconnected") banner("Reconnected.", "ok");
    else if (status === "refused") {
      leaveCall(false);
      // The server said why just before closing: removed while the page was open ("You are no longer a
      // member of this class."), or this class open in too many tabs.
      const said = app.lastError && ["not_member", "too_many_sockets"].includes(app.lastError.code);
      banner(said ? app.lastError.message : "You cannot join this class (not logged in or not a member).", "error", true);
    }
  },
});
const send = (type, fields) => socket.send(type, fields);
const broadcast = setupBroadcast({ classId, page, send, banner });

function handle(msg) {
  switch (msg.type) {
    case "welcome":
      app.me = msg.me;
      app.members = msg.members || [];
      app.state = msg.state;
      $("chat-log").replaceChildren();
      for (const m of msg.chat || []) addChat(m);
      render();
      break;
    case "event":
      app.events.push(msg.event);
      if (msg.state) app.state = msg.state;
      announce(msg.event);
      if (msg.event.kind.startsWith("broadcast.")) broadcast.refresh();
      render();
      break;
    case "presence":
      app.state.participants = msg.participants;
      renderParticipants();
      break;
    case "chat":
      addChat(msg.message);
      break;
    case "rtc.config":
      app.call.configure(msg.ice_servers);
      break;
    case "rtc.offer":
      app.call.handleOffer(msg).catch((err) => banner(`Could not apply the media offer: ${err}`, "error"));
      break;
    case "rtc.quality":
      app.legs = new Map(msg.participants.map((p) => [p.user_id, p]));
      renderQuality();
      break;
    case "rtc.state":
      break; // the browser's own connection state is shown (see onState)
    case "rtc.closed":
      leaveCall(false);
      if (msg.reason === "removed") banner("The instructor took you off the stage.", "info");
      else if (msg.reason === "replaced") banner("You joined the stage from another tab.", "info");
      else if (msg.reason === "connection_failed" || msg.reason === "setup_timeout") rejoinSoon();
      break;
    case "error":
      app.lastError = msg;
      banner(msg.message, "error");
      break;
  }
}

// ---------- state rendering ---------------------------------------------------------------------
const myStage = () => app.me && app.state.stage.find((m) => m.user_id === app.me.user_id);
const onStage = () => { const m = myStage(); return !!m && m.state === "on_stage"; };
const handRaised = () => app.me && app.state.hands.some((h) => h.user_id === app.me.user_id);

function announce(ev) {
  const me = app.me && app.me.user_id;
  if (ev.kind === "session.ended") banner("The class has ended.", "info");
  if (ev.kind === "recording.started") banner("The instructor started recording this session.", "info");
  if (ev.kind === "recording.stopped") banner("Recording stopped.", "info");
  if (ev.kind === "stage.invited" && ev.subject_id === me && page === "class") banner("You are invited on stage.", "ok");
  if (ev.kind === "stage.muted" && ev.subject_id === me && ev.actor_id !== me && ev.data.muted) {
    app.call && app.call.setEnabled(ev.data.kind, false);
    banner(`The instructor muted your ${ev.data.kind === "audio" ? "microphone" : "camera"}.`, "info");
  }
}

function show(id, visible) { const el = $(id); if (el) el.hidden = !visible; }

function render() {
  const s = app.state;
  const live = !!s.session;
  const status = $("session-status");
  status.textContent = live ? "Live" : "Not started";
  status.className = live ? "badge live" : "badge";
  const mine = myStage();
  const rec = s.recording;
  show("rec-indicator", live && !!rec);  // from the moment it is asked for: people are told before, not after
  if (rec) {
    const note = { recording: "", restarting: " · reconnecting" }[rec.status] ?? " · starting";
    $("rec-indicator").textContent = `● REC${note}`;
    $("rec-indicator").title = rec.status === "recording" ? "This session is being recorded" : `Recording: ${rec.status}`;
  }
  if (page === "console") {
    show("start-session", !live);
    show("end-session", live);
    show("record-start", live && !rec);
    show("record-stop", live && !!rec);
    renderHands();
    renderMembers();
  }
  if (page === "class") {
    show("raise-hand", live && !mine && !handRaised());
    show("lower-hand", live && handRaised());
    show("invitation", live && mine && mine.state === "invited");
    show("leave-stage", live && onStage());
  }
  show("toggle-audio", onStage());
  show("toggle-video", onStage());
  if (mine) {
    $("toggle-audio") && ($("toggle-audio").textContent = mine.audio_muted ? "Unmute mic" : "Mute mic");
    $("toggle-video") && ($("toggle-video").textContent = mine.video_muted ? "Start camera" : "Stop camera");
  }
  renderStage();
  renderParticipants();
  broadcast.setOnStage(onStage());
  syncCall();
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function renderStage() {
  const grid = $("stage-grid");
  const members = app.state.stage.filter((m) => m.state === "on_stage");
  $("stage-empty").hidden = members.length > 0;
  const keep = new Set(members.map((m) => String(m.user_id)));
  for (const tile of [...grid.children]) if (!keep.has(tile.dataset.userId)) tile.remove();
  for (const m of members) {
    let tile = grid.querySelector(`[data-user-id="${m.user_id}"]`);
    if (!tile) {
      const video = el("video", { autoplay: "", playsinline: "" });
      tile = el("figure", { class: "tile", dataset: { userId: String(m.user_id) } },
        video,
        el("figcaption", {}, el("span", { class: "name" }), el("span", { class: "flags" }), el("span", { class: "quality" })),
        el("div", { class: "tile-actions" }));
      grid.append(tile);
    }
    const isMe = app.me && m.user_id === app.me.user_id;
    tile.classList.toggle("me", isMe);
    tile.querySelector(".name").textContent = isMe ? `${m.name} (you)` : m.name;
    tile.querySelector(".flags").textContent = `${m.audio_muted ? " 🔇" : ""}${m.video_muted ? " 📷✕" : ""}`;
    const actions = tile.querySelector(".tile-actions");
    actions.replaceChildren();
    if (app.me && app.me.can_manage && !isMe && page === "console") {
      actions.append(
        el("button", { type: "button", class: "small", onclick: () => send("stage.mute", { user_id: m.user_id, kind: "audio", muted: true }) }, "Mute"),
        el("button", { type: "button", class: "small danger", "data-action": "remove", onclick: () => send("stage.remove", { user_id: m.user_id }) }, "Remove"),
      );
    }
    attachMedia(tile, m.user_id, isMe);
  }
  renderQuality();
}

function attachMedia(tile, userId, isMe) {
  const video = tile.querySelector("video");
  if (isMe) {
    video.muted = true; // never play our own microphone back
    const local = app.call && app.call.local;
    if (local && video.srcObject !== local) video.srcObject = local;
    return;
  }
  const entry = app.remote.get(userId);
  if (!entry) { video.srcObject = null; return; }
  const current = video.srcObject;
  const same = current && entry.tracks.length === current.getTracks().length &&
    entry.tracks.every((t) => current.getTracks().includes(t));
  if (!same) {
    video.srcObject = new MediaStream(entry.tracks);
    video.play().catch(() => {});
  }
  if (!video.dataset.watch) {
    video.dataset.watch = "1";
    const first = () => {
      if (app.firstFrameMs === null && app.joinAskedAt !== null) {
        // Join time from asking for the call, not from page load: a student may wait minutes for an invitation.
        app.firstFrameMs = performance.now();
        send("stats.report", { join_ms: Math.round(app.firstFrameMs - app.joinAskedAt) });
      }
    };
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(first);
    else video.addEventListener("loadeddata", first, { once: true });
  }
}

// A tile says how that person's media reaches you: their uplink as the media node sees it, and your
// own downlink (your browser's getStats()); the worse of the two names whose link it is.
function renderQuality() {
  const myId = app.me && app.me.user_id;
  const mine = app.legs.get(myId);
  for (const tile of $("stage-grid").children) {
    const isMe = tile.classList.contains("me");
    const userId = isMe ? myId : Number(tile.dataset.userId);
    const q = app.quality.get(isMe ? "me" : userId);
    const theirs = app.legs.get(userId);
    const span = tile.querySelector(".quality");
    if (!q && !theirs) { span.textContent = ""; span.className = "quality"; continue; }
    const up = (theirs && theirs.up) || {};
    const down = (mine && mine.down) || {};
    const legs = isMe
      ? [["your connection", up.loss ?? 0, up.jitter_ms ?? 0], ["your connection", down.loss ?? 0, down.rtt_ms ?? 0]]
      : [[`${theirs ? theirs.name.split(" ")[0] : "their"}'s connection`, up.loss ?? 0, up.jitter_ms ?? 0],
         ["your connection", Math.max(q ? q.packet_loss || 0 : 0, down.loss ?? 0), q ? q.rtt_ms ?? 0 : down.rtt_ms ?? 0]];
    const [whose, loss, delay] = legs.reduce((worst, leg) => (leg[1] > worst[1] || (leg[1] === worst[1] && leg[2] > worst[2]) ? leg : worst));
    const level = loss > 0.08 || delay > 600 ? "poor" : loss > 0.02 || delay > 300 ? "fair" : "good";
    const kbps = isMe ? up.kbps : q ? q.bitrate_bps / 1000 : up.kbps;
    span.className = `quality ${level}`;
    span.title = `${level}: ${whose}`;
    span.textContent = `● ${kbps != null ? ((kbps || 0) / 1000).toFixed(2) : "–"} Mb/s · ${(loss * 100).toFixed(1)}% loss · ${Math.round(delay)} ms` +
      (level === "good" ? "" : ` · ${whose}`);
  }
}

function renderParticipants() {
  const list = $("participants");
  const people = app.state.participants || [];
  $("participant-count").textContent = String(people.length);
  list.replaceChildren(...people.map((p) =>
    el("li", { dataset: { userId: String(p.user_id) } }, `${p.name}`, el("span", { class: "role" }, ` ${p.role}${p.pages.includes("watch") && !p.pages.includes("class") ? " · watching" : ""}`))));
}

function renderHands() {
  const list = $("hands");
  const hands = app.state.hands;
  $("hand-count").textContent = String(hands.length);
  $("hands-empty").hidden = hands.length > 0;
  list.replaceChildren(...hands.map((h) => el("li", { dataset: { userId: String(h.user_id) } },
    el("span", {}, h.name),
    el("button", { type: "button", class: "small", "data-action": "invite", onclick: () => send("stage.invite", { user_id: h.user_id }) }, "Invite"),
    el("button", { type: "button", class: "small secondary", onclick: () => send("hand.lower", { user_id: h.user_id }) }, "Dismiss"))));
}

function renderMembers() {
  const list = $("members");
  const stageBy = new Map(app.state.stage.map((m) => [m.user_id, m.state]));
  const online = new Set((app.state.participants || []).map((p) => p.user_id));
  list.replaceChildren(...app.members.filter((m) => m.role === "student").map((m) => {
    const st = stageBy.get(m.user_id);
    const label = st === "on_stage" ? "on stage" : st === "invited" ? "invited" : online.has(m.user_id) ? "online" : "offline";
    const li = el("li", { dataset: { userId: String(m.user_id) } }, el("span", {}, m.name), el("span", { class: "role" }, ` ${label}`));
    if (app.state.session && !st) li.append(el("button", { type: "button", class: "small", onclick: () => send("stage.invite", { user_id: m.user_id }) }, "Invite"));
    return li;
  }));
}

// ---------- chat --------------------------------------------------------------------------------
function addChat(m) {
  const log = $("chat-log");
  const time = new Date(m.at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  log.append(el("li", {}, el("time", {}, time), el("strong", {}, ` ${m.name}: `), el("span", {}, m.text)));
  log.scrollTop = log.scrollHeight;
}
$("chat-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("chat-input");
  const text = input.value.trim();
  if (!text) return;
  send("chat.send", { text });
  input.value = "";
});

// ---------- the stage call ----------------------------------------------------------------------
function syncCall() {
  if (page === "watch" || !app.me) return;
  if (onStage() && !app.inCall && !app.joining) joinCall();
  else if (!onStage() && app.inCall) leaveCall(true);
}

async function joinCall() {
  app.joining = true;
  app.call = app.call || new StageCall({
    send,
    icePolicy: params.get("ice") === "relay" ? "relay" : "all",
    onRemote(byUser) { app.remote = byUser; renderStage(); },
    onState(name, state) {
      app.rtcStates[name] = state;
      const states = Object.values(app.rtcStates);
      const shown = states.includes("failed") ? "failed" : states.every((s) => s === "connected") ? "connected" : states.includes("disconnected") ? "disconnected" : "connecting";
      const badge = $("rtc-status");
      badge.hidden = false;
      badge.textContent = `media: ${shown}`;
      badge.className = `badge subtle ${shown}`;
      watchRecovery(shown);
    },
    onStats(quality) { app.quality = quality; renderQuality(); },
  });
  // Ask for the call at once and open the camera meanwhile: the media node builds our connections
  // while getUserMedia runs; the publish answer waits for the camera (rtc.js `localReady`).
  app.inCall = true;
  app.joining = false;
  const local = app.call.startLocal();
  app.joinAskedAt = performance.now();
  send("rtc.join");
  renderStage();
  const result = await local;
  if (!result.ok) {
    const error = result.error;
    app.localError = String(error && error.name);
    const denied = error && (error.name === "NotAllowedError" || error.name === "SecurityError");
    banner(denied
      ? "Camera and microphone access was denied. Allow it in the browser's site settings to be seen and heard; you can still see and hear the stage."
      : `No camera or microphone could be opened (${error && error.name}). You can still see and hear the stage.`, "error", true);
  }
  renderStage();
}

// ---------- recovery: a broken media path re-joins by itself -------------------------------------
// The media node (aiortc) has no ICE restart, so a connection whose path broke (network change, a long
// outage) is replaced by a fresh join while the person stays on stage: no reload. The page says
// "Reconnecting…" meanwhile and nothing once the call is back.
const RECOVER_AFTER_DISCONNECTED_MS = 4000; // a blip recovers by itself; longer, and we re-join
const recovery = { timer: null, watch: null, attempt: 0 };

function watchRecovery(shown) {
  if (shown === "connected") {
    clearTimeout(recovery.watch);
    recovery.watch = null;
    if (recovery.attempt > 0) {
      recovery.attempt = 0;
      $("banner").hidden = true; // back: nothing more to say
    }
  } else if (shown === "failed") rejoinSoon();
  else if (shown === "disconnected" && !recovery.watch) {
    banner("Reconnecting…", "warn", true);
    recovery.watch = setTimeout(() => { recovery.watch = null; rejoinSoon(); }, RECOVER_AFTER_DISCONNECTED_MS);
  }
}

function rejoinSoon() {
  if (recovery.timer || page === "watch") return;
  const delay = recovery.attempt === 0 ? 0 : Math.min(8000, 1000 * 2 ** (recovery.attempt - 1));
  recovery.attempt += 1;
  banner("Reconnecting…", "warn", true);
  recovery.timer = setTimeout(() => {
    recovery.timer = null;
    leaveCall(true);
    syncCall(); // joins again if this person is still on stage
  }, delay);
}

function leaveCall(tellServer) {
  if (!app.inCall) return;
  if (tellServer) send("rtc.leave");
  app.inCall = false;
  app.rtcStates = {};
  clearTimeout(recovery.watch);
  recovery.watch = null;
  if (app.call) app.call.stop();
  app.remote = new Map();
  $("rtc-status").hidden = true;
  renderStage();
}

// ---------- controls ----------------------------------------------------------------------------
const on = (id, fn) => { const b = $(id); if (b) b.addEventListener("click", fn); };
on("start-session", () => send("session.start"));
on("end-session", () => { if (confirm("End the class for everyone?")) send("session.end"); });
on("record-start", () => send("recording.start"));
on("record-stop", () => send("recording.stop"));
on("raise-hand", () => send("hand.raise"));
on("lower-hand", () => send("hand.lower"));
on("accept-invite", () => send("stage.accept"));
on("decline-invite", () => send("stage.decline"));
on("leave-stage", () => send("stage.leave"));
for (const kind of ["audio", "video"]) {
  on(`toggle-${kind}`, () => {
    const mine = myStage();
    if (!mine) return;
    const muted = !mine[`${kind}_muted`];
    app.call && app.call.setEnabled(kind, !muted);
    send("stage.mute", { kind, muted });
  });
}
window.addEventListener("beforeunload", () => socket.close());
