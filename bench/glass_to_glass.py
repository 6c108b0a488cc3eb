"""Glass-to-glass delay of the broadcast: from a stage member sending a video frame to that frame being
available to an HLS viewer, for regular HLS (whole segments) beside Low-Latency HLS (parts, blocking
reloads), measured on the same live class, at the same time, in one run.

    .venv/bin/python bench/glass_to_glass.py [--seconds 60] [--keep]

The class is real (`bench/live_class.py`): daphne with the media node, the packager, Celery workers;
four aiortc stage members publish a pre-encoded VP8 clip whose every frame carries a stamp (its clip
index as black/white blocks) and log when they sent each frame; the compositor mixes the 2x2 grid at
1280x720@30, x264 (`tune=zerolatency`, keyframe every 2 s), RTMP to the packager, which writes 2 s
segments and ~1/3 s parts. Two viewers run in this process, both through the app's own origin
(`/hls/classes/<id>/live.m3u8`, logged in as a class member, one keep-alive connection each):

* **regular**: like a player without LL-HLS, reloads the playlist every target duration / 2 (1 s) and
  downloads each new whole segment once;
* **LL-HLS**: like hls.js in low-latency mode, loads the playlist once, then loops on blocking reloads
  (`?_HLS_msn=<m>&_HLS_part=<p>` for the part after the newest listed) and downloads each new part once.

Beside them, two real players on the same stream: hls.js (the version our viewer page serves, from
npm) in headless Chromium (Debian's, by path), one in low-latency mode with the viewer page's settings,
one with `lowLatencyMode: false`; a page served from a temp dir on loopback plays the playlist with a
signed token (`manage.py stream_key`) and, every 16 ms, draws the video into a canvas and reads the
four stamps from its pixels with the same rule as `stamp_read`: that is the delay **on screen**, with
the player's hold-back and buffering included.

Each viewer demuxes what it downloads and decodes every video frame once (one persistent H.264 decoder
per viewer), reads the stamp in each of the four tiles, and maps (tile's member, clip index, time the
bytes arrived) to the wall-clock time that member sent that frame (its send log). The delay of a frame
= arrival of the segment or part holding it - its send time: the moment a player could first show it,
i.e. "to the viewer's playlist" (a player then adds its own hold-back: hls.js starts LL-HLS streams
PART-HOLD-BACK = 1.0 s behind the newest part and regular ones 2-3 segments behind, which the
on-screen figures include). Figures: p50 / p95 / max per mode over every stamped frame in `--seconds`,
the ratio LL / regular, and requests made.

Last line: `RESULT {json}`. About 3 minutes.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import av
import m3u8
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_class import CLIP_H, CLIP_W, PASSWORD, LiveStack, SendLog, clip_make, http_login, log, luma, stamp_read  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from compositor.config import Participant  # noqa: E402
from compositor.layout import fit_rect, layout_compute  # noqa: E402

W, H = 1280, 720
PLAYER_SETTLE_S = 8.0


class Viewer(threading.Thread):
    """One simulated player: fetches playlists and media from the origin, decodes, reads stamps."""

    def __init__(self, *, mode: str, port: int, path: str, cookie: str, rects: list[Any], end: float) -> None:
        super().__init__(daemon=True, name=f"viewer-{mode}")
        self.mode, self.port, self.base, self.cookie, self.rects, self.end = mode, port, path, cookie, rects, end
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.decoder = av.CodecContext.create("h264", "r")
        self.readings: list[tuple[int, int, float]] = []  # (tile, clip index, arrival time)
        self.requests = 0
        self.errors: list[str] = []
        self.frames = 0
        self.segment, self.carry, self.last_dts = "", b"", None

    def get(self, name: str, query: str = "") -> tuple[int, bytes, float]:
        self.requests += 1
        url = f"{self.base}{name}{'?' + query if query else ''}"
        for attempt in (0, 1):
            try:
                self.conn.request("GET", url, headers={"Cookie": f"sessionid={self.cookie}"})
                response = self.conn.getresponse()
                body = response.read()
                return response.status, body, time.time()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def media(self, uri: str, data: bytes, arrived: float) -> None:
        """Demux what arrived (a part is demuxed after the earlier parts of its segment: a part in the
        middle need not carry the stream tables, and a player keeps its demuxer across parts) and decode
        each video frame once, in order."""
        segment = uri.split(".", 1)[0]
        if segment != self.segment:
            self.segment, self.carry, self.last_dts = segment, b"", None
        self.carry += data
        with av.open(io.BytesIO(self.carry), format="mpegts") as container:
            for packet in container.demux(video=0):
                if packet.dts is None or (self.last_dts is not None and packet.dts <= self.last_dts):
                    continue
                self.last_dts = packet.dts
                for frame in self.decoder.decode(packet):
                    self.frames += 1
                    y = luma(frame)  # a view of the Y plane, no conversion
                    for tile, rect in enumerate(self.rects):
                        index = stamp_read(y, rect)
                        if index is not None:
                            self.readings.append((tile, index, arrived))

    def run(self) -> None:
        try:
            self.run_regular() if self.mode == "regular" else self.run_ll()
        except Exception as exc:  # noqa: BLE001 - reported with the figures
            self.errors.append(repr(exc))

    def run_regular(self) -> None:
        fetched: set[str] = set()
        first = True
        while time.time() < self.end:
            polled = time.time()
            status, body, _ = self.get("live.m3u8")
            if status == 200:
                playlist = m3u8.loads(body.decode())
                uris = [s.uri for s in playlist.segments if s.uri]
                if first:  # start at the live edge: the newest whole segment
                    fetched.update(uris[:-1])
                    first = False
                for uri in uris:
                    if uri not in fetched:
                        fetched.add(uri)
                        status, data, arrived = self.get(uri)
                        if status == 200:
                            self.media(uri, data, arrived)
            time.sleep(max(0.0, polled + 1.0 - time.time()))

    def run_ll(self) -> None:
        status, body, _ = self.get("live.m3u8")
        playlist = m3u8.loads(body.decode())
        msn = playlist.media_sequence + len(playlist.segments) - 1  # the open segment (parts only)
        parts = playlist.segments[-1].parts if playlist.segments else []
        # Start at the newest independent part, as hls.js does near the live edge.
        fetched: set[str] = {p.uri for s in playlist.segments for p in s.parts}
        start = max((i for i, p in enumerate(parts) if p.independent == "YES"), default=None)
        pending = [p.uri for p in parts[start:]] if start is not None else []
        fetched -= set(pending)
        next_part = len(parts)
        while time.time() < self.end:
            for uri in pending:
                status, data, arrived = self.get(uri)
                fetched.add(uri)
                if status == 200:
                    try:
                        self.media(uri, data, arrived)
                    except (av.FFmpegError, IndexError, ValueError) as exc:  # a part it could not demux
                        self.errors.append(f"{uri}: {exc!r}")
            status, body, _ = self.get("live.m3u8", f"_HLS_msn={msn}&_HLS_part={next_part}")
            if status != 200:
                self.errors.append(f"blocking reload {msn}/{next_part}: HTTP {status}")
                time.sleep(0.2)
                status, body, _ = self.get("live.m3u8")
                if status != 200:
                    continue
            playlist = m3u8.loads(body.decode())
            pending = []
            for offset, segment in enumerate(playlist.segments):
                for k, part in enumerate(segment.parts):
                    if part.uri not in fetched:
                        pending.append(part.uri)
                    msn, next_part = playlist.media_sequence + offset, k + 1
        self.conn.close()


PLAYER_PAGE = """<!doctype html><meta charset="utf-8"><title>g2g</title>
<video id="v" muted autoplay playsinline width="1280" height="720"></video>
<script src="hls.min.js"></script>
<script>
const RECTS = %(rects)s, BLOCKS = 16, ROWS = 40, CLIP_H = 360;
const params = new URLSearchParams(location.search), low = params.get("ll") === "1";
const video = document.getElementById("v");
// The viewer page's settings (static/classroom/broadcast.js), or hls.js's defaults without LL-HLS.
const hls = new Hls(low ? { lowLatencyMode: true, maxLiveSyncPlaybackRate: 1.25 } : { lowLatencyMode: false });
hls.loadSource(params.get("src"));
hls.attachMedia(video);
hls.on(Hls.Events.ERROR, (_, d) => { if (d.fatal) { window.fatal = d.details; hls.startLoad(); } });
video.play().catch(() => {});
// Only each tile's stamp stripe is copied out of the video (a full 720p readback every 16 ms would cost
// more CPU than the player itself on a 2-core machine shared with the whole class).
const canvas = document.createElement("canvas");
canvas.width = 1280; canvas.height = 720;
const ctx = canvas.getContext("2d", { willReadFrequently: true });
const stripe = (r) => [r[1], Math.ceil(ROWS * r[3] / CLIP_H) + 2];
window.readings = []; const last = {};
function stamp(r) {                     // bench/live_class.py stamp_read, on canvas pixels
  const row = r[1] + Math.floor(ROWS * r[3] / CLIP_H * 0.5), halfH = Math.max(1, Math.floor(ROWS * r[3] / CLIP_H * 0.25));
  const halfW = Math.max(1, Math.floor(r[2] / BLOCKS * 0.25));
  const img = ctx.getImageData(r[0], row - halfH, r[2], 2 * halfH).data, stride = r[2] * 4;
  let word = 0;
  for (let i = 0; i < BLOCKS; i++) {
    const cx = Math.floor((i + 0.5) * r[2] / BLOCKS); let sum = 0, n = 0;
    for (let y = 0; y < 2 * halfH; y++) for (let x = cx - halfW; x < cx + halfW; x++) {
      const o = y * stride + x * 4; sum += 0.299 * img[o] + 0.587 * img[o + 1] + 0.114 * img[o + 2]; n++;
    }
    const mean = sum / n;
    if (mean > 70 && mean < 180) return null;
    word = (word << 1) | (mean >= 126 ? 1 : 0);
  }
  const value = word >> 4, check = word & 15;
  return (((value >> 8) + (value >> 4) + value) & 15) === check ? value : null;
}
setInterval(() => {
  if (video.readyState < 2) return;
  const now = Date.now();
  const sx = video.videoWidth / 1280, sy = video.videoHeight / 720;
  RECTS.forEach((r) => { const [y, h] = stripe(r); ctx.drawImage(video, r[0] * sx, y * sy, r[2] * sx, h * sy, r[0], y, r[2], h); });
  RECTS.forEach((r, tile) => {
    const index = stamp(r);
    if (index !== null && index !== last[tile]) { last[tile] = index; window.readings.push([tile, index, now / 1000]); }
  });
}, 16);
</script>
"""


def players_run(*, page_dir: Path, src: str, rects: list[Any], seconds: float,
                modes: tuple[str, ...] = ("ll", "regular")) -> dict[str, dict[str, Any]]:
    """hls.js in headless Chromium (one page per mode), on screen; readings and counters per mode. The first
    few seconds (the player starting, catching up to its target) are not counted."""
    import functools
    import http.server
    import socketserver

    from playwright.sync_api import sync_playwright

    page_dir.mkdir(exist_ok=True)
    shutil.copy(ROOT / "node_modules" / "hls.js" / "dist" / "hls.min.js", page_dir / "hls.min.js")
    (page_dir / "index.html").write_text(PLAYER_PAGE % {"rects": json.dumps([[r.x, r.y, r.w, r.h] for r in rects])})
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(page_dir))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    out: dict[str, dict[str, Any]] = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                         args=["--autoplay-policy=no-user-gesture-required", "--no-first-run"])
            pages = {}
            for mode in modes:
                page = browser.new_page(viewport={"width": 1300, "height": 760})
                from urllib.parse import quote
                page.goto(f"http://127.0.0.1:{httpd.server_address[1]}/index.html?ll={int(mode == 'll')}&src={quote(src, safe='')}")
                pages[mode] = page
            time.sleep(PLAYER_SETTLE_S)
            for page in pages.values():
                page.evaluate("() => { window.readings = []; }")
            time.sleep(seconds)
            for mode, page in pages.items():
                out[mode] = page.evaluate("""() => ({readings: window.readings, fatal: window.fatal || null,
                    latency: hls.latency, target: hls.targetLatency,
                    dropped: document.getElementById('v').getVideoPlaybackQuality().droppedVideoFrames,
                    frames: document.getElementById('v').getVideoPlaybackQuality().totalVideoFrames})""")
            browser.close()
    finally:
        httpd.shutdown()
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def delays(readings: list[tuple[int, int, float]], logs: list[SendLog]) -> tuple[list[float], int]:
    """Per stamped frame: arrival - send time. The compositor repeats a member's last frame when the next
    one is late; only the first sighting of a (tile, clip index) counts (the clip repeats after 60 s)."""
    out, unmatched, first_seen = [], 0, {}
    for tile, index, arrived in readings:
        previous = first_seen.get((tile, index))
        if previous is not None and arrived - previous < 30:
            continue
        first_seen[(tile, index)] = arrived
        sent = logs[tile].send_time(index, arrived)
        if sent is None or not 0 <= arrived - sent < 30:
            unmatched += 1
            continue
        out.append(arrived - sent)
    return out, unmatched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=6.0, help="after the program is on air")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory and logs")
    parser.add_argument("--no-players", action="store_true", help="skip the hls.js players in Chromium")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-g2g-"))
    try:
        log("encoding the stamped clip (VP8 640x360@30, once)")
        clip = clip_make(tmp / "clip.webm")
        with LiveStack(tmp, classes_max=1, keep=args.keep) as stack:
            log("starting the class: 4 members on stage, broadcast, recording")
            cls = stack.class_start(1, clip)
            stack.wait_on_air([cls])
            time.sleep(args.warmup)
            members = [m["username"] for m in cls.info.members]
            tiles = layout_compute("grid", [Participant(i + 1, "") for i in range(len(members))], width=W, height=H)
            rects = [fit_rect(CLIP_W, CLIP_H, t.rect) for t in tiles]  # stage order = the members' order
            base = f"http://127.0.0.1:{stack.port}"
            cookie = http_login(base, members[-1], PASSWORD)  # a class member: the class is private
            path = f"/hls/classes/{cls.class_id}/"
            end = time.time() + args.seconds
            viewers = [Viewer(mode=m, port=stack.port, path=path, cookie=cookie, rects=rects, end=end)
                       for m in ("regular", "ll")]
            log(f"two simulated viewers (regular, LL-HLS), side by side, for {args.seconds:.0f} s")
            for v in viewers:
                v.start()
            for v in viewers:
                v.join(args.seconds + 60)
            players: dict[str, dict[str, Any]] = {}
            if not args.no_players:
                # One player at a time: a software-decoding Chromium is a big share of 2 cores.
                token_url = stack.manage("stream_key", str(cls.class_id)).strip().splitlines()[-1]
                for mode in ("ll", "regular"):
                    log(f"hls.js in Chromium, {mode}, for {args.seconds:.0f} s")
                    players.update(players_run(page_dir=tmp / "player", src=f"{base}{token_url}", rects=rects,
                                               seconds=args.seconds, modes=(mode,)))
            logs = [cls.send_log(name) for name in members]
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    figures: dict[str, Any] = {"seconds": args.seconds, "cores": os.cpu_count()}
    print(f"\nglass-to-glass: a stage member sends a frame -> an HLS viewer has it (app origin), "
          f"{args.seconds:.0f} s, 4 on stage, 1280x720@30 program, 2 s segments, ~1/3 s parts")
    print(f"{'':<40}{'LL-HLS':>12}{'regular HLS':>14}{'ratio':>8}")
    stats: dict[str, dict[str, Any]] = {}
    sources: list[tuple[str, list[tuple[int, int, float]], dict[str, Any]]] = []
    for v in viewers:
        sources.append((f"avail_{v.mode}", v.readings, {"requests": v.requests, "decoded": v.frames, "errors": v.errors}))
    for mode, got in players.items():
        readings = [(int(t), int(i), float(at)) for t, i, at in got["readings"]]
        sources.append((f"screen_{mode}", readings, {"frames": got["frames"], "dropped": got["dropped"],
                                                     "hls_latency_s": got["latency"], "hls_target_s": got["target"],
                                                     "errors": [got["fatal"]] if got["fatal"] else []}))
    for name, readings, extra in sources:
        d, unmatched = delays(readings, logs)
        stats[name] = {"p50": percentile(d, 50) * 1000, "p95": percentile(d, 95) * 1000,
                       "max": max(d, default=float("nan")) * 1000, "n": len(d), "unmatched": unmatched, **extra}

    def row(label: str, key: str, kind: str, fmt: str = "{:.0f}") -> None:
        ll, reg = stats.get(f"{kind}_ll", {}).get(key, float("nan")), stats.get(f"{kind}_regular", {}).get(key, float("nan"))
        ratio = ll / reg if isinstance(reg, float) and reg and not math.isnan(reg) else float("nan")
        print(f"{label:<40}{fmt.format(ll):>12}{fmt.format(reg):>14}{ratio:>8.2f}")

    for kind, what in (("avail", "available to the viewer"), ("screen", "on screen, hls.js")):
        if f"{kind}_ll" not in stats:
            continue
        for key in ("p50", "p95", "max"):
            row(f"{what} {key} ms", key, kind)
        row(f"{what}: stamped frames", "n", kind)
    for name, s in stats.items():
        print(f"{name}: unmatched stamps {s['unmatched']}, " + ", ".join(
            f"{k} {v}" for k, v in s.items() if k in ("requests", "decoded", "frames", "dropped", "hls_latency_s", "hls_target_s")) +
            (f", errors {s['errors'][:3]}" if s["errors"] else ""))
    target = 2000
    for kind in ("avail", "screen"):
        if f"{kind}_ll" in stats:
            p50 = stats[f"{kind}_ll"]["p50"]
            print(f"target LL-HLS p50 <= {target} ms ({kind}): {'met' if p50 <= target else 'MISSED'} ({p50:.0f} ms)")
    for name, s in stats.items():
        for key in ("p50", "p95", "max"):
            figures[f"{name}_{key}_ms"] = None if math.isnan(s[key]) else round(s[key], 1)
        figures[f"{name}_frames"] = s["n"]
        figures[f"{name}_errors"] = len(s["errors"])
        if "requests" in s:
            figures[f"{name}_requests"] = s["requests"]
    for kind in ("avail", "screen"):
        ll, reg = stats.get(f"{kind}_ll"), stats.get(f"{kind}_regular")
        if ll and reg and reg["p50"]:
            figures[f"{kind}_ratio_ll_vs_regular_p50"] = round(ll["p50"] / reg["p50"], 3)
            figures[f"{kind}_ll_p50_under_2000_ms"] = ll["p50"] <= target
    print("RESULT " + json.dumps(figures))


if __name__ == "__main__":
    main()
