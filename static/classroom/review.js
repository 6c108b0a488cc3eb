// The recording review page: the program and every track on one timeline. Each player knows where
// its file sits on the recording's timeline (start_ms..end_ms); seeking moves them all, and while
// playing the others follow the program (or a wall clock without one), re-synced when they drift.
const data = JSON.parse(document.getElementById("review-data").textContent);
const $ = (id) => document.getElementById(id);
const DRIFT_S = 0.15;

function clock(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

const players = [];
function addPlayer(el, spec, label) {
  el.src = spec.url;
  el.preload = "auto";
  el.addEventListener("error", refreshLinks);
  players.push({ el, start: spec.start_ms, end: spec.end_ms, label });
}

// Signed links are short-lived; a player whose link expired while the page stayed open gets a fresh
// one (at most every few seconds), and everything is put back where it was.
let refreshedAt = 0;
async function refreshLinks() {
  if (performance.now() - refreshedAt < 5000) return;
  refreshedAt = performance.now();
  const response = await fetch(`/recordings/${data.id}/review.json`, { credentials: "same-origin" });
  if (!response.ok) return;
  const fresh = await response.json();
  const urls = new Map(fresh.tracks.map((t) => [t.name, t.url]));
  if (fresh.program) urls.set("program", fresh.program.url);
  for (const p of players) if (urls.has(p.label)) p.el.src = urls.get(p.label);
  seek(position);
}

if (data.program) addPlayer($("program-player"), data.program, "program");
for (const t of data.tracks) {
  const box = document.createElement("figure");
  box.className = `track ${t.kind}`;
  const el = document.createElement(t.kind === "video" ? "video" : "audio");
  el.controls = false;
  el.playsInline = true;
  if (t.kind === "video") el.muted = true; // sound comes from the program (or the audio tracks)
  if (t.poster) el.poster = t.poster;
  else el.muted = !!data.program;
  const caption = document.createElement("figcaption");
  caption.textContent = `${t.label} (${clock(t.start_ms)}–${clock(t.end_ms)})`;
  box.append(el, caption);
  $("track-players") && $("track-players").append(box);
  addPlayer(el, t, t.name);
}

const length = Math.max(data.duration_ms, ...players.map((p) => p.end), 1);
let position = 0; // ms on the recording's timeline
let playing = false;
let wallStart = 0;
let wallFrom = 0;

function inside(p, ms) { return ms >= p.start && ms < p.end; }

function place(p, ms, force) {
  const wanted = (ms - p.start) / 1000;
  p.el.closest("figure")?.classList.toggle("off", !inside(p, ms));
  if (!inside(p, ms)) {
    if (!p.el.paused) p.el.pause();
    return;
  }
  if (force || Math.abs(p.el.currentTime - wanted) > DRIFT_S) p.el.currentTime = wanted;
  if (playing && p.el.paused) p.el.play().catch(() => {});
  if (!playing && !p.el.paused) p.el.pause();
}

function seek(ms) {
  position = Math.min(Math.max(0, ms), length);
  wallStart = performance.now();
  wallFrom = position;
  for (const p of players) place(p, position, true);
  render();
}

function master() { return players.find((p) => p.label === "program" && inside(p, position) && !p.el.paused); }

function tick() {
  if (playing) {
    const m = master();
    position = m ? m.start + m.el.currentTime * 1000 : wallFrom + (performance.now() - wallStart);
    if (!m) { wallStart = performance.now(); wallFrom = position; }
    if (position >= length) { playing = false; position = length; }
    for (const p of players) if (p !== m) place(p, position, false);
    render();
  }
  requestAnimationFrame(tick);
}

function render() {
  if ($("review-clock")) $("review-clock").textContent = clock(position);
  if ($("review-seek") && document.activeElement !== $("review-seek")) $("review-seek").value = String(position);
  if ($("review-play")) $("review-play").textContent = playing ? "Pause" : "Play";
}

function togglePlay() {
  playing = !playing;
  wallStart = performance.now();
  wallFrom = position;
  for (const p of players) place(p, position, true);
  render();
}

if ($("review-seek")) {
  $("review-seek").max = String(length);
  $("review-length").textContent = clock(length);
  $("review-seek").addEventListener("input", (e) => seek(Number(e.target.value)));
  $("review-play").addEventListener("click", togglePlay);
  const marks = $("timeline-marks");
  const list = $("event-list");
  data.events.forEach((ev, i) => {
    const mark = document.createElement("button");
    mark.type = "button";
    mark.className = `mark ${ev.kind.replace(".", "-")}`;
    mark.style.left = `${(100 * ev.offset_ms) / length}%`;
    mark.title = `${clock(ev.offset_ms)} ${ev.label}`;
    mark.dataset.offset = String(ev.offset_ms);
    mark.dataset.index = String(i);
    mark.addEventListener("click", () => seek(ev.offset_ms));
    marks.append(mark);
    const item = document.createElement("li");
    const link = document.createElement("button");
    link.type = "button";
    link.className = "link event";
    link.dataset.offset = String(ev.offset_ms);
    link.textContent = `${clock(ev.offset_ms)} ${ev.label}`;
    link.addEventListener("click", () => seek(ev.offset_ms));
    item.append(link);
    list.append(item);
  });
  for (const gap of data.gaps) {
    const band = document.createElement("span");
    band.className = "gap";
    band.style.left = `${(100 * gap.start_ms) / length}%`;
    band.style.width = `${(100 * Math.max(gap.end_ms - gap.start_ms, 200)) / length}%`;
    band.title = `Not recorded: ${gap.reason}`;
    marks.append(band);
  }
  seek(0);
  requestAnimationFrame(tick);
}

// Still processing: look again shortly.
const status = $("review").dataset.status;
if (status === "processing" || status === "recording" || status === "queued" || status === "starting" || status === "restarting") {
  setTimeout(() => location.reload(), 4000);
}

window.classcast = Object.assign(window.classcast || {}, {
  review: {
    seek,
    position: () => position,
    players: () => players.map((p) => ({ label: p.label, start: p.start, end: p.end, time: p.el.currentTime,
                                         inside: inside(p, position), readyState: p.el.readyState })),
  },
});
