"""Real browsers on an impaired link: the pieces bench/network.py and real-browser network tests share.

* `running_stage_server`: an embedded-default classcast (daphne + media node in one process, SQLite,
  its own var dir) reachable from a lab namespace at http://<link.host_address>:<port>;
* `launch_chromium`: headless Chromium on the host or inside the namespace, fake camera (optionally a
  noisy clip, so the encoder has something to spend bits on) and microphone;
* `STATS_SAMPLER_JS`: an init script that samples a page's getStats() every 300 ms into
  `window.__netstats`; `summarise_flow` turns those samples into the figures we compare (pure).

    with ImpairedLink() as link, running_stage_server(tmp, link.host_address) as server:
        browser = launch_chromium(pw, chromium_args(server.origins()), link=link, wrapper_dir=tmp)
        page = login(browser, server.url, "ben", server.password, sampler=CLASSCAST_PCS)
        ...
        figures = summarise_flow(samples_of(page), t0, t1)
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from .conftest import CHROMIUM_ARGS
from .netlab import ImpairedLink, write_chromium_wrapper

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

# The browser tests' flags: fake camera and tone, prompts answered, loopback allowed.
BASE_CHROMIUM_ARGS = CHROMIUM_ARGS


class NetlabStageError(RuntimeError):
    pass


# --- the stack, reachable from the namespace ----------------------------------------------------------


@dataclass
class StageServer:
    proc: subprocess.Popen[bytes]
    host_address: str
    port: int
    log_path: Path
    demo: dict[str, Any]

    @property
    def url(self) -> str:
        return f"http://{self.host_address}:{self.port}"

    @property
    def password(self) -> str:
        return str(self.demo["instructor"]["password"])  # every demo login shares this install's password

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def wait_for_port(address: str, port: int, *, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NetlabStageError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise NetlabStageError(f"nothing listens on {address}:{port} after {timeout:.0f} s")


def stage_server_env(var_dir: Path, host_address: str, port: int) -> dict[str, str]:
    """The embedded default in var_dir, served at the TUN host address: the media node offers that address
    (and loopback) as ICE candidates, and the Host header / Origin of http://<host_address>:<port> pass."""
    drop = {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
    # The stage's own tuning knobs (CLASSCAST_STAGE_*) pass through, so a bench can compare settings;
    # CLASSCAST_LOG_LEVEL=DEBUG keeps the node's layer trace in the daphne log (--keep).
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("CLASSCAST_", "PYTEST"))
           or k.startswith("CLASSCAST_STAGE_") or k == "CLASSCAST_LOG_LEVEL"}
    origin = f"http://{host_address}:{port}"
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        CLASSCAST_VAR_DIR=str(var_dir),
        CLASSCAST_ICE_HOST_ADDRESSES=f"{host_address},127.0.0.1",
        DJANGO_ALLOWED_HOSTS=f"{host_address},127.0.0.1,localhost",
        DJANGO_CSRF_TRUSTED_ORIGINS=f"{origin},http://127.0.0.1:{port}",
        PYTHONUNBUFFERED="1",
    )
    return env


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    if done.returncode != 0:
        raise NetlabStageError(f"manage.py {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


@contextlib.contextmanager
def running_stage_server(var_dir: Path, host_address: str) -> Iterator[StageServer]:
    """Migrate and seed a throwaway install, then daphne on 0.0.0.0 (the host's TUN address included)."""
    var_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = stage_server_env(var_dir, host_address, port)
    manage(env, "migrate", "--noinput")
    demo = json.loads(manage(env, "seed_demo", "--json").strip().splitlines()[-1])
    log_path = var_dir / "daphne.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "0.0.0.0", "-p", str(port), "config.asgi:application"],
            cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    server = StageServer(proc=proc, host_address=host_address, port=port, log_path=log_path, demo=demo)
    try:
        wait_for_port(host_address, port, proc=proc)
        yield server
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --- Chromium ------------------------------------------------------------------------------------------


def make_noisy_clip(path: Path, *, width: int = 640, height: int = 360, fps: int = 30, seconds: float = 4.0) -> Path:
    """A y4m clip for --use-file-for-fake-video-capture: moving test pattern plus per-frame noise, so the
    encoder needs ~1-2 Mbit/s for full quality (the built-in fake camera encodes to ~190 kbit/s)."""
    if path.exists():
        return path
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        import imageio_ffmpeg  # the wheel's binary (ARCHITECTURE.md §3)

        ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run(
        [ffmpeg, "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}",
         "-vf", "noise=alls=24:allf=t+u", "-t", str(seconds), "-pix_fmt", "yuv420p", str(path)],
        check=True, timeout=120,
    )
    return path


def chromium_args(secure_origins: Sequence[str], clip: Path | None = None) -> list[str]:
    """The fake-media flags plus: these http origins count as secure (getUserMedia off localhost), host
    ICE candidates as plain addresses (mDNS names resolve nowhere across the lab), optionally a clip."""
    args = [*BASE_CHROMIUM_ARGS, "--disable-features=WebRtcHideLocalIpsWithMdns"]
    if secure_origins:
        args.append(f"--unsafely-treat-insecure-origin-as-secure={','.join(secure_origins)}")
    if clip is not None:
        args.append(f"--use-file-for-fake-video-capture={clip}")
    return args


def launch_chromium(pw: Any, args: list[str], *, link: ImpairedLink | None = None,
                    wrapper_dir: Path | None = None) -> Any:
    """Headless Chromium on the host, or inside `link`'s namespace (behind the impairment)."""
    executable = CHROMIUM
    if link is not None:
        if wrapper_dir is None:
            raise ValueError("a namespaced Chromium needs wrapper_dir for its launcher script")
        executable = str(write_chromium_wrapper(link, wrapper_dir, CHROMIUM))
    return pw.chromium.launch(executable_path=executable, headless=True, args=args)


def new_sampled_page(browser: Any, base_url: str | None, pcs_expr: str) -> Any:
    """A page in a fresh context whose every document samples getStats() (see STATS_SAMPLER_JS)."""
    context = browser.new_context(base_url=base_url, permissions=["camera", "microphone"])
    context.add_init_script(sampler_script(pcs_expr))
    return context.new_page()


def login(browser: Any, base_url: str, username: str, password: str, *, pcs_expr: str) -> Any:
    """A sampled page logged in as `username` through the real login form."""
    page = new_sampled_page(browser, base_url, pcs_expr)
    page.goto("/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)
    return page


def bring_on_stage(instructor: Any, student: Any, *, timeout_ms: int = 30_000) -> None:
    """The stage's front door, as people use it: raise a hand, get invited, accept, see the first frame."""
    student.wait_for_selector("#raise-hand:not([hidden])")
    student.click("#raise-hand")
    instructor.wait_for_selector("#hands li [data-action=invite]")
    instructor.click("#hands li [data-action=invite]")
    student.wait_for_selector("#invitation:not([hidden])")
    student.click("#accept-invite")
    student.wait_for_function("() => window.classcast.firstFrameMs !== null", timeout=timeout_ms)


# --- getStats sampling ------------------------------------------------------------------------------------

# Which connections a page receives on (rx) and sends on (tx), as a JS expression.
CLASSCAST_PCS = "(c => c ? { rx: [c.sub], tx: [c.pub] } : {})(window.classcast && window.classcast.call)"
P2P_PCS = "(p => p && p.pc ? { rx: [p.pc], tx: [p.pc] } : {})(window.p2p)"

SAMPLE_EVERY_MS = 300

# Counters are summed over a page's inbound streams of a kind (a renegotiation may add one); resolution is
# the one of the stream that decoded most. Times are Date.now(): the same clock as Python's time.time().
STATS_SAMPLER_JS = """
(() => {
  const pcsOf = () => { try { return (%(pcs)s) || {}; } catch (e) { return {}; } };
  const live = (pcs) => (pcs || []).filter((pc) => pc && pc.connectionState !== "closed");
  window.__netstats = [];
  let busy = false;
  async function sample() {
    const { rx, tx } = pcsOf();
    const s = { t: Date.now() / 1000, video: null, audio: null, out: null, rtt_s: null, avail_kbps: null };
    for (const pc of live(rx)) {
      (await pc.getStats()).forEach((r) => {
        if (r.type !== "inbound-rtp") return;
        if (r.kind === "video") {
          const v = s.video || (s.video = { frames: 0, bytes: 0, rtx_bytes: 0, lost: 0, nacks: 0, freeze_count: 0,
                                          freezes_s: 0, width: 0, height: 0, top: -1 });
          v.frames += r.framesDecoded || 0; v.bytes += r.bytesReceived || 0; v.lost += r.packetsLost || 0;
          v.rtx_bytes += r.retransmittedBytesReceived || 0;
          v.nacks += r.nackCount || 0; v.freeze_count += r.freezeCount || 0; v.freezes_s += r.totalFreezesDuration || 0;
          if ((r.framesDecoded || 0) > v.top) { v.top = r.framesDecoded || 0; v.width = r.frameWidth || 0; v.height = r.frameHeight || 0; }
        } else if (r.kind === "audio") {
          const a = s.audio || (s.audio = { concealed: 0, samples: 0, fec: 0, lost: 0, bytes: 0 });
          a.concealed += r.concealedSamples || 0; a.samples += r.totalSamplesReceived || 0;
          a.fec += r.fecPacketsReceived || 0; a.lost += r.packetsLost || 0; a.bytes += r.bytesReceived || 0;
        }
      });
    }
    for (const pc of live(tx)) {
      (await pc.getStats()).forEach((r) => {
        if (r.type === "outbound-rtp" && r.kind === "video") {
          const o = s.out || (s.out = { bytes: 0, rtx_bytes: 0, width: 0, height: 0, limit: "" });
          o.bytes += r.bytesSent || 0; o.rtx_bytes += r.retransmittedBytesSent || 0;
          if ((r.frameHeight || 0) > o.height) { o.width = r.frameWidth || 0; o.height = r.frameHeight || 0; }
          if (r.qualityLimitationReason && r.qualityLimitationReason !== "none") o.limit = r.qualityLimitationReason;
        } else if (r.type === "candidate-pair" && r.nominated && r.state === "succeeded") {
          if (r.currentRoundTripTime !== undefined) s.rtt_s = r.currentRoundTripTime;
          if (r.availableOutgoingBitrate !== undefined) s.avail_kbps = r.availableOutgoingBitrate / 1000;
        }
      });
    }
    window.__netstats.push(s);
  }
  setInterval(() => {
    if (busy) return;
    busy = true;
    sample().catch(() => {}).finally(() => { busy = false; });
  }, %(every)d);
})();
"""


def sampler_script(pcs_expr: str, every_ms: int = SAMPLE_EVERY_MS) -> str:
    return STATS_SAMPLER_JS % {"pcs": pcs_expr, "every": every_ms}


def page_samples(page: Any) -> list[dict[str, Any]]:
    """Everything the page's sampler has collected since its document loaded."""
    return list(page.evaluate("() => window.__netstats || []"))


# --- the summariser (pure) ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowFigures:
    """One receiving direction over a window."""

    seconds: float
    fps: float
    longest_freeze_s: float
    frozen_s: float
    freezes: int
    width: int  # median over samples that showed new frames
    height: int
    kbps: float  # video received
    rtx_kbps: float  # of which retransmissions (RTX) that arrived
    audio_kbps: float
    concealed_pct: float | None  # None: no audio samples played out at all
    fec_packets: int
    video_lost_packets: int
    browser_freeze_count: int  # the browser's own freezeCount / totalFreezesDuration (ended freezes only)
    browser_frozen_s: float
    sent_kbps: float | None  # video this page sent on its tx connection over the window (None: no sender)
    sent_rtx_kbps: float | None
    sent_height: int | None
    limit: str  # qualityLimitationReason seen most often while sending ("" = none)


def counter_delta(values: Sequence[float]) -> float:
    """Growth of a cumulative counter; a drop means the stream was replaced and counts from 0 again."""
    total = 0.0
    for prev, cur in zip(values, values[1:]):
        total += cur - prev if cur >= prev else cur
    return total


def freeze_threshold_s(fps: float) -> float:
    """A frame gap counts as a freeze above max(3 mean frame intervals, 150 ms), as WebRTC's stats say."""
    return max(3.0 / fps, 0.150) if fps > 0 else 0.150


def stalls(points: Sequence[tuple[float, float]], start: float, end: float, threshold_s: float) -> list[float]:
    """Frame gaps longer than threshold_s in (time, cumulative frames) samples.

    A gap is seen when at least one sample shows no new frame; it runs from the last sample that saw new
    frames to the next one that does (or to the window's end). With even sampling every I seconds and
    k samples without progress, the true gap lies between k*I and (k+2)*I: this (k+1)*I is its midpoint.
    The first point is the window's baseline; a window without any new frame is one gap."""
    gaps: list[float] = []
    last_new, stalled = start, False
    prev_frames = points[0][1] if points else 0.0
    for t, frames in points[1:]:
        if frames != prev_frames:  # advanced (or a replaced stream started over)
            if stalled and t - last_new > threshold_s:
                gaps.append(t - last_new)
            last_new, stalled = t, False
        else:
            stalled = True
        prev_frames = frames
    if stalled and end - last_new > threshold_s:
        gaps.append(end - last_new)
    return gaps


def _window(samples: Sequence[dict[str, Any]], start: float, end: float) -> list[dict[str, Any]]:
    """The samples within [start, end], plus the last one before start as the baseline."""
    before = [s for s in samples if s["t"] < start]
    inside = [s for s in samples if start <= s["t"] <= end]
    return ([before[-1]] if before else []) + inside


def _series(samples: Sequence[dict[str, Any]], kind: str, key: str) -> list[float]:
    return [float((s.get(kind) or {}).get(key, 0) or 0) for s in samples]


def _median_resolution(samples: Sequence[dict[str, Any]]) -> tuple[int, int]:
    showing = []
    for prev, cur in zip(samples, samples[1:]):
        v, pv = cur.get("video") or {}, prev.get("video") or {}
        if v.get("frames", 0) != pv.get("frames", 0) and v.get("height"):
            showing.append((int(v["width"]) * int(v["height"]), int(v["width"]), int(v["height"])))
    if not showing:
        return 0, 0
    showing.sort()
    _, width, height = showing[(len(showing) - 1) // 2]  # lower median: a real sampled resolution
    return width, height


def _most_common(values: Sequence[str]) -> str:
    seen = [v for v in values if v]
    return max(set(seen), key=seen.count) if seen else ""


def summarise_flow(samples: Sequence[dict[str, Any]], start: float, end: float) -> FlowFigures:
    """Figures of one receiving page over [start, end] (times as in the samples, i.e. epoch seconds)."""
    window = _window(samples, start, end)
    seconds = end - start
    # Rates over the time the counters actually span (baseline sample to last sample), not the window.
    span = window[-1]["t"] - window[0]["t"] if len(window) > 1 else 0.0
    frames = _series(window, "video", "frames")
    fps = counter_delta(frames) / span if span > 0 else 0.0
    gaps = stalls(list(zip((s["t"] for s in window), frames)), start, end, freeze_threshold_s(fps))
    width, height = _median_resolution(window)
    concealed = counter_delta(_series(window, "audio", "concealed"))
    played = counter_delta(_series(window, "audio", "samples"))
    def rate(kind: str, key: str) -> float:
        return counter_delta(_series(window, kind, key)) * 8 / 1000 / span if span > 0 else 0.0

    has_out = any(s.get("out") for s in window)
    heights = [int(s["out"]["height"]) for s in window if s.get("out") and s["out"].get("height")]
    return FlowFigures(
        seconds=seconds,
        fps=fps,
        longest_freeze_s=max(gaps, default=0.0),
        frozen_s=sum(gaps),
        freezes=len(gaps),
        width=width,
        height=height,
        kbps=rate("video", "bytes"),
        rtx_kbps=rate("video", "rtx_bytes"),
        audio_kbps=rate("audio", "bytes"),
        concealed_pct=100.0 * concealed / played if played > 0 else None,
        fec_packets=int(counter_delta(_series(window, "audio", "fec"))),
        video_lost_packets=int(counter_delta(_series(window, "video", "lost"))),
        browser_freeze_count=int(counter_delta(_series(window, "video", "freeze_count"))),
        browser_frozen_s=counter_delta(_series(window, "video", "freezes_s")),
        sent_kbps=rate("out", "bytes") if has_out else None,
        sent_rtx_kbps=rate("out", "rtx_bytes") if has_out else None,
        sent_height=int(statistics.median(heights)) if heights else None,
        limit=_most_common([str((s.get("out") or {}).get("limit", "")) for s in window]),
    )


def first_time(samples: Sequence[dict[str, Any]], *, min_height: int = 0, after: float = -math.inf) -> float | None:
    """Epoch time of the first sample after `after` whose video has decoded frames at >= min_height."""
    for s in samples:
        v = s.get("video") or {}
        if s["t"] >= after and v.get("frames", 0) > 0 and int(v.get("height", 0)) >= min_height:
            return float(s["t"])
    return None


def video_back_after(samples: Sequence[dict[str, Any]], restored: float) -> float | None:
    """Seconds from `restored` until the first sample showing new frames (after an outage)."""
    prev = None
    for s in samples:
        frames = (s.get("video") or {}).get("frames", 0)
        if prev is not None and s["t"] > restored and frames != prev:
            return float(s["t"]) - restored
        prev = frames
    return None
