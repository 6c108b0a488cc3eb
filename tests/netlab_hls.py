"""HLS viewers on an impaired link: the pieces of tests/test_network_hls.py that run elsewhere or are pure.

* `publish_ladder`: the compositor's program with the default ladder publishing one RTMP stream per rung,
  fed with a noisy moving clip so every rung runs at its bitrate cap (solid colours would make the 180p
  rung a few kbit/s and prove nothing about a 300 kbit/s link). Runs in a child process, so this module
  imports nothing of Django or the test fixtures;
* `PLAYBACK_SAMPLER_JS`: an init script that samples the watch page's player (hls.js and <video>) every
  100 ms into `window.__playback`, with the events that matter (waiting/playing, level switches, errors);
* `playback_stalls` / `settled_at`: what those samples say (pure).
"""
from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

SAMPLE_EVERY_MS = 100


# --- the publisher (child process) -----------------------------------------------------------------------


def clip_frames(path: str) -> list[Any]:
    import av

    with av.open(path) as container:
        return [frame for frame in container.decode(video=0)]


def publish_ladder(port: int, stream_key: str, clip: str, seconds: float) -> None:
    """As the compositor job does (classroom.egress.packager_destinations): one program, one destination
    per rung of the default ladder. Two people on stage, each a noisy moving picture, and two tones."""
    from compositor.config import Destination, ProgramConfig
    from compositor.program import Program
    from classroom.services.ladder import ladder_program_renditions, ladder_stream_key
    from tests.test_compositor_program import STAGE, tone
    from tests.test_hls_ladder import RUNGS, SEGMENT_S

    config = ProgramConfig(keyint_s=SEGMENT_S, h264_level=RUNGS[0].h264_level,
                           renditions=ladder_program_renditions(RUNGS))
    destinations = [
        Destination(id=r.name, url=f"rtmp://127.0.0.1:{port}/live/{ladder_stream_key(stream_key, r.name)}",
                    rendition="" if i == 0 else r.name)
        for i, r in enumerate(RUNGS)
    ]
    frames = clip_frames(clip)
    program = Program(config, destinations)
    people = STAGE[:2]
    program.set_participants(people)
    stop = threading.Event()

    def feed() -> None:
        t0, i, n = time.monotonic(), 0, 0
        while not stop.is_set():
            elapsed = time.monotonic() - t0
            for k, person in enumerate(people):  # offset so the two tiles differ
                program.push_video(person.user_id, frames[(n + 37 * k) % len(frames)])
            n += 1
            while i * 0.02 <= elapsed + 0.04:
                for person in people:
                    program.push_audio(person.user_id, tone(300 * person.user_id, i * 960))
                i += 1
            stop.wait(max(0.0, t0 + n / 30 - time.monotonic()))

    program.start()
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    # Until told (a line or EOF on stdin) or `seconds` at most, whichever first.
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), done.set()), daemon=True).start()
    done.wait(seconds)
    stop.set()
    stats = program.stats()
    program.stop()
    print(json.dumps({"states": {k: v["state"] for k, v in stats["destinations"].items()},
                      "keyframes": stats["keyframes_by_rendition"]}), flush=True)


# --- the page side ------------------------------------------------------------------------------------------

# Times are performance.now() in seconds (monotonic, the page's own clock). The player object is the watch
# page's (window.classcast.player = { video, hls }); it is hooked as soon as it appears, before hls.js has
# loaded anything (its first answer needs a round trip over the link, the hook 100 ms at most).
PLAYBACK_SAMPLER_JS = """
(() => {
  const log = window.__playback = { samples: [], events: [], levels: [] };
  // Every request keeps its resource timing (the default 250 would be gone in a minute of LL-HLS).
  performance.setResourceTimingBufferSize(100000);
  const now = () => performance.now() / 1000;
  let hooked = null;
  function hook(p) {
    hooked = p;
    const ev = (type, extra) => log.events.push(Object.assign({ t: now(), type, ct: p.video.currentTime }, extra || {}));
    for (const type of ["waiting", "playing", "stalled"]) p.video.addEventListener(type, () => ev(type));
    if (!p.hls) return;
    const E = window.Hls.Events;
    p.hls.on(E.MANIFEST_PARSED, () => {
      log.levels = p.hls.levels.map((l) => ({ width: l.width, height: l.height, bitrate: l.bitrate, uri: l.url[0] }));
    });
    p.hls.on(E.LEVEL_SWITCHED, (_, d) => {
      const l = p.hls.levels[d.level] || {};
      ev("levelSwitched", { level: d.level, height: l.height || 0, bitrate: l.bitrate || 0 });
    });
    p.hls.on(E.ERROR, (_, d) => ev("error", { details: d.details, fatal: !!d.fatal }));
  }
  setInterval(() => {
    const p = window.classcast && window.classcast.player;
    if (!p) return;
    if (p !== hooked) hook(p);
    const v = p.video, h = p.hls;
    const q = v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : {};
    const level = h ? h.currentLevel : -1;
    const info = h && level >= 0 ? h.levels[level] : null;
    const b = v.buffered;
    log.samples.push({
      t: now(), ct: v.currentTime, paused: v.paused, ended: v.ended, ready: v.readyState,
      level, height: info ? info.height || 0 : 0, videoHeight: v.videoHeight, videoWidth: v.videoWidth,
      frames: q.totalVideoFrames || 0, dropped: q.droppedVideoFrames || 0,
      ahead: b.length ? b.end(b.length - 1) - v.currentTime : 0,
      bw: h ? h.bandwidthEstimate : 0, latency: h ? h.latency : 0, rate: v.playbackRate,
    });
  }, %(every)d);
})();
""" % {"every": SAMPLE_EVERY_MS}


# --- what the samples say (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Stall:
    at: float  # page time playback last advanced before the stall
    seconds: float


def playback_stalls(samples: Sequence[dict[str, Any]], start: float, end: float, threshold_s: float) -> list[Stall]:
    """Spells in [start, end] where the <video>'s currentTime did not advance for more than threshold_s
    while it was not paused. A paused sample restarts the clock (a pause is not a stall); a spell still
    running at `end` counts up to `end`. Sampled every SAMPLE_EVERY_MS, so a spell is known to +-0.1 s."""
    stalls: list[Stall] = []
    inside = [s for s in samples if start <= s["t"] <= end]
    if not inside:
        return [Stall(start, end - start)]  # nothing sampled at all: the page stopped
    last_t, last_ct = inside[0]["t"], inside[0]["ct"]
    for s in inside[1:]:
        if s["paused"] or s["ct"] > last_ct:
            if not s["paused"] and s["t"] - last_t > threshold_s:
                stalls.append(Stall(last_t, s["t"] - last_t))
            last_t, last_ct = s["t"], s["ct"]
    if not inside[-1]["paused"] and end - last_t > threshold_s:
        stalls.append(Stall(last_t, end - last_t))
    return stalls


# What the page fetched: [(start, end, path without the query, body bytes)], from its resource timings.
FETCHES_JS = """() => performance.getEntriesByType("resource").map((r) => [
  r.startTime / 1000, r.responseEnd / 1000, new URL(r.name).pathname, r.encodedBodySize || 0,
])"""


def fetch_kind(path: str) -> str:
    """'<rung> playlist', '<rung> media', 'master' or 'other' for a path under /hls/classes/<id>/."""
    parts = path.split("/")
    if len(parts) == 6 and parts[1] == "hls":  # /hls/classes/<id>/<rung>/<file>
        return f"{parts[4]} {'playlist' if parts[5].endswith('.m3u8') else 'media'}"
    return "master" if path.endswith(".m3u8") else "other"


def kbps_by_kind(fetches: Sequence[Sequence[Any]], start: float, end: float) -> dict[str, float]:
    """Body bytes of the responses that ended in [start, end], in kbit/s over that span, per kind."""
    total: dict[str, float] = {}
    for _, ended, path, size in fetches:
        if start <= ended <= end:
            kind = fetch_kind(path)
            total[kind] = total.get(kind, 0.0) + size
    return {kind: round(size * 8 / 1000 / (end - start), 1) for kind, size in sorted(total.items())}


def settled_at(samples: Sequence[dict[str, Any]], height: int) -> float | None:
    """Page time from which the player plays `height`: hls.js's current level has it, the decoded
    picture has it too, and playback advances; None if that never happens."""
    for prev, s in zip(samples, samples[1:]):
        if s["height"] == height and s["videoHeight"] == height and s["ct"] > prev["ct"] and not s["paused"]:
            return float(s["t"])
    return None
