"""Per-track recorder: CPU per recorded track beside aiortc's MediaRecorder, and post-processing time
per recorded hour beside the ffmpeg CLI, each from one run.

    .venv/bin/python bench/recorder.py [--tracks 4] [--seconds 20] [--media-seconds 120]

A. CPU per recorded track. A publisher process (aiortc, one peer connection) sends N video tracks
   (640x360@30, VP8, aiortc's own encoder; pictures precomputed from FFmpeg's testsrc2 so the publisher
   only encodes) and N Opus tracks (a tone), one "participant" per video + audio pair, over loopback to
   a subscriber process. The subscriber is the recorder's own `StageSubscriber` with its class socket
   replaced by pipes (same `_apply_offer`: the encoded-frame tap goes on right after
   `setRemoteDescription`, before the receivers start). Two runs, one fresh publisher each:

   * ours: `recorder.stage_recorder.StageRecorder` on that subscriber: `receiver_tap(decode=False)`
     hands each received frame to the track's `TrackWriter`, which muxes it untouched into a .webm.
   * peer: aiortc's `MediaRecorder` (the usual way to record with aiortc), one per track, to .webm: the
     receivers decode every frame and MediaRecorder re-encodes it (libvpx / libopus).

   Figure: the subscriber process's CPU time (all threads, `time.process_time`) over a window of
   --seconds after --warmup, per wall second and per recorded track (2N tracks), and ours / peer.
   A recorder that cannot keep up spends less CPU than the job needs and writes less media, so the
   run's CPU per second of media actually in the files (`cpu_s_per_media_s`, connected -> files
   closed) is printed beside it. Context: video frames in the files per second recorded, how far the
   files' video ends behind live when the recording stops, RTP packets lost, the publisher's and the
   whole host's CPU over the window, and the video bitrate the publisher ended up sending.
   Both sets of files are opened with PyAV afterwards (codec, size, packets, every frame decoded): a
   check, not timed.

B. Post-processing per recorded hour. One set of raw tracks written by TrackWriter from PyAV-encoded
   packets (--media-seconds of VP8 640x360@30 at 1 Mbit/s with aiortc's encoder settings, keyframes
   only every 100 s as from a WebRTC sender, and the same length of Opus), then our steps in the order
   `classroom/services/recording_processing.py` runs them, with the ffmpeg of `ffmpeg_default()` and
   the settings' default QC thresholds: `track_finalize`; `media_probe` + `file_checksum`;
   `detect_video` (blackdetect + freezedetect in one pass) / `detect_silence` (audio); `thumbnail_make` (the track's
   thumbnail and the poster). Peer: the ffmpeg CLI remuxing each track (`ffmpeg -i raw.webm -c copy
   out.webm`) plus one ffmpeg pass running all three detectors on the set. Wall and CPU (this process
   and its children, `os.times`) per hour of recorded track = seconds / track-hours, scaled linearly.

Last line: `RESULT {json}`. Loopback only, no ICE servers; about 2 minutes with the defaults.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import aioice.ice
import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.contrib.media import MediaRecorder
from aiortc.mediastreams import MediaStreamError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # first: this file's own name would shadow the `recorder` package

from rtc.stage_client import StageClientConfig, StageSubscriber  # noqa: E402
from recorder.ffmpeg_bin import ffmpeg_default  # noqa: E402
from recorder.files import file_checksum  # noqa: E402
from recorder.finalize import track_finalize  # noqa: E402
from recorder.probe import media_probe  # noqa: E402
from recorder.qc import detect_silence, detect_video  # noqa: E402
from recorder.stage_recorder import RecorderConfig, StageRecorder  # noqa: E402
from recorder.thumbnails import thumbnail_make  # noqa: E402
from recorder.writer import TrackWriter  # noqa: E402

W, H, FPS = 640, 360, 30
AUDIO_RATE, AUDIO_PTIME = 48_000, 0.020
# the settings' defaults (config/settings.py: CLASSCAST_QC_*), as recording_processing passes them
QC_BLACK_S, QC_FROZEN_S, QC_SILENCE_S = 5.0, 5.0, 10.0
PAIR_TIMEOUT_S = 120.0  # extra time a publisher/subscriber pair may take beyond warm-up + window
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---- measuring ----------------------------------------------------------------------------------------

def host_busy_s() -> float:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / CLK_TCK


def host_busy_cores(seconds: float = 2.0) -> float:
    before = host_busy_s()
    time.sleep(seconds)
    return (host_busy_s() - before) / seconds


def pid_cpu_s(pid: int) -> float:
    """utime + stime of every thread of a process (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_with_children_s() -> float:
    """This process (all threads) plus its waited-for children; getrusage, finer than os.times' ticks."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# ---- media for the publisher and for part B ----------------------------------------------------------

def pictures(count: int = 2 * FPS) -> list[np.ndarray]:
    """`count` moving 640x360 pictures (testsrc2) as yuv420p planes, decoded once."""
    with av.open(f"testsrc2=size={W}x{H}:rate={FPS}", format="lavfi") as src:
        out = []
        for frame in src.decode(video=0):
            out.append(frame.reformat(format="yuv420p").to_ndarray())
            if len(out) == count:
                return out
    return out


def tone_chunks(hz: int) -> list[np.ndarray]:
    """One second of a stereo s16 tone (whole cycles, so it loops seamlessly), in 20 ms chunks."""
    t = np.arange(AUDIO_RATE) / AUDIO_RATE
    wave = (0.25 * 32767 * np.sin(2 * np.pi * hz * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))).astype(np.int16)
    stereo = np.repeat(wave, 2)  # interleaved L R
    step = int(AUDIO_RATE * AUDIO_PTIME) * 2
    return [stereo[i:i + step].reshape(1, -1) for i in range(0, len(stereo), step)]


def audio_frame(chunk: np.ndarray, n: int) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
    frame.sample_rate = AUDIO_RATE
    frame.pts = n * int(AUDIO_RATE * AUDIO_PTIME)
    frame.time_base = fractions.Fraction(1, AUDIO_RATE)
    return frame


class PictureTrack(VideoStreamTrack):
    """30 fps from precomputed pictures; aiortc paces it (next_timestamp) and encodes it (VP8)."""

    def __init__(self, planes: list[np.ndarray], offset: int) -> None:
        super().__init__()
        self.planes, self.n = planes, offset

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        # a fresh frame each time: aiortc's encoder marks forced keyframes on the frame itself
        frame = av.VideoFrame.from_ndarray(self.planes[self.n % len(self.planes)], format="yuv420p")
        self.n += 1
        frame.pts, frame.time_base = pts, time_base
        return frame


class ToneTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, hz: int) -> None:
        super().__init__()
        self.chunks, self.n, self.start = tone_chunks(hz), 0, 0.0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.n == 0:
            self.start = time.time()
        else:
            await asyncio.sleep(max(0.0, self.start + self.n * AUDIO_PTIME - time.time()))
        frame = audio_frame(self.chunks[self.n % len(self.chunks)], self.n)
        self.n += 1
        return frame


# ---- child processes: JSON lines on stdin/stdout ---------------------------------------------------------

def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def receive() -> dict[str, Any]:
    """The next message from the bench process, read on a thread of its own: aiortc's encoders use the
    loop's default executor, which a blocked readline must not hold."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()
    threading.Thread(target=lambda: loop.call_soon_threadsafe(future.set_result, sys.stdin.readline()), daemon=True).start()
    line = await future
    if not line:
        raise SystemExit("the bench process went away")
    return json.loads(line)


def loopback_only() -> None:
    """Host candidates on 127.0.0.1 only (the seam classroom.media_node.node uses for the same thing)."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


def rtc_config() -> RTCConfiguration:
    return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


async def publisher_main(args: argparse.Namespace) -> None:
    loopback_only()
    planes = pictures()
    pc = RTCPeerConnection(rtc_config())
    vp8 = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() in ("video/vp8", "video/rtx")]
    opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]
    owners = []
    for i in range(args.tracks):
        video = pc.addTransceiver(PictureTrack(planes, offset=i * 7), direction="sendonly")
        video.setCodecPreferences(vp8)
        audio = pc.addTransceiver(ToneTrack(300 + 100 * i), direction="sendonly")
        audio.setCodecPreferences(opus)
        owners += [(video, i + 1, "video"), (audio, i + 1, "audio")]
    await pc.setLocalDescription(await pc.createOffer())
    described = {t.mid: {"user_id": uid, "kind": kind, "name": f"Participant {uid}", "role": "student"}
                 for t, uid, kind in owners}
    emit({"offer": pc.localDescription.sdp, "tracks": described})
    answer = await receive()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    t0 = time.monotonic()
    await receive()  # stop
    sent = {"video": 0, "audio": 0}
    for transceiver, _, kind in owners:
        for stat in (await transceiver.sender.getStats()).values():
            if stat.type == "outbound-rtp":
                sent[kind] += stat.bytesSent
    wall = time.monotonic() - t0
    await pc.close()
    emit({"video_kbit_per_s_per_track": sent["video"] * 8 / wall / 1000 / args.tracks,
          "audio_kbit_per_s_per_track": sent["audio"] * 8 / wall / 1000 / args.tracks})


class PipeSubscriber(StageSubscriber):
    """The egress StageSubscriber with its class socket replaced by the bench's pipes: one offer in, the
    answer out (the inherited `_apply_offer`: tap installed right after setRemoteDescription)."""

    def __init__(self, *, offer: str, described: dict[str, dict[str, Any]], stage: list[dict[str, Any]],
                 on_tracks: Callable[[dict[str, Any]], None] | None = None) -> None:
        super().__init__(StageClientConfig(ws_url="ws://127.0.0.1/unused", origin="http://127.0.0.1"), on_tracks=on_tracks)
        self.state = {"stage": stage}
        self._offer, self._described = offer, described
        self._done = asyncio.Event()

    async def run(self) -> None:
        try:
            await self._apply_offer(self._offer, self._described)
            self.joined.set()
            await self._done.wait()
        finally:
            if self.pc is not None:
                await self.pc.close()

    async def close(self) -> None:
        self._done.set()

    async def _send(self, type_: str, **fields: Any) -> None:
        emit({"type": type_, **fields})


async def inbound(pc: RTCPeerConnection) -> dict[str, int]:
    totals = {"packets": 0, "lost": 0}
    for transceiver in pc.getTransceivers():
        for stat in (await transceiver.receiver.getStats()).values():
            if stat.type == "inbound-rtp":
                totals["packets"] += stat.packetsReceived
                totals["lost"] += stat.packetsLost
    return totals


async def subscriber_main(args: argparse.Namespace) -> None:
    loopback_only()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    offer = await receive()
    started_at = datetime.now(timezone.utc)
    users = sorted({t["user_id"] for t in offer["tracks"].values()})
    stage = [{"user_id": u, "state": "on_stage", "since": started_at.isoformat(), "name": f"Participant {u}",
              "role": "student"} for u in users]
    recorders: list[MediaRecorder] = []
    recorder: StageRecorder | None = None
    if args.variant == "ours":
        sub = PipeSubscriber(offer=offer["offer"], described=offer["tracks"], stage=stage)
        recorder = StageRecorder(sub.config, RecorderConfig(folder=out, started_at=started_at), subscriber=sub)
        task = asyncio.ensure_future(recorder.run())
    else:
        def on_tracks(tracks: dict[str, Any]) -> None:
            for track in tracks.values():
                media = MediaRecorder(str(out / f"u{track.user_id}-{track.kind}.webm"))
                media.addTrack(track.track)
                recorders.append(media)
                asyncio.ensure_future(media.start())

        sub = PipeSubscriber(offer=offer["offer"], described=offer["tracks"], stage=stage, on_tracks=on_tracks)
        task = asyncio.ensure_future(sub.run())
    await asyncio.wait_for(sub.joined.wait(), 20)
    deadline = time.monotonic() + 20
    while sub.pc.connectionState != "connected":
        if time.monotonic() > deadline or sub.pc.connectionState in ("failed", "closed"):
            raise SystemExit(f"no media connection ({sub.pc.connectionState})")
        await asyncio.sleep(0.05)
    connected, run_cpu0 = time.monotonic(), time.process_time()
    await asyncio.sleep(args.warmup)

    def written() -> dict[str, int]:
        files = recorder.files() if recorder else []
        return {kind: sum(f["frames"] for f in files if f["kind"] == kind) for kind in ("video", "audio")}

    frames0, packets0 = written(), await inbound(sub.pc)
    emit({"event": "window_start"})
    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.sleep(args.seconds)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    emit({"event": "window_end"})
    frames1, packets1 = written(), await inbound(sub.pc)
    stop = time.monotonic()
    if recorder is not None:
        await recorder.stop()
        await task
        stats = recorder.stats()
        errors, dropped = stats["errors"], stats["dropped"]
    else:
        for media in recorders:
            await media.stop()
        await sub.close()
        await task
        errors, dropped = [], None
    run_cpu = time.process_time() - run_cpu0  # connected -> every file closed
    emit({"result": {
        "cpu_s": cpu, "wall_s": wall, "recorded_s": stop - connected, "run_cpu_s": run_cpu,
        "frames_written": {k: frames1[k] - frames0[k] for k in frames1} if recorder else None,
        "packets": packets1["packets"] - packets0["packets"], "packets_lost": packets1["lost"] - packets0["lost"],
        "writer_dropped": dropped, "errors": errors,
    }})


# ---- part A, driven from the bench process ---------------------------------------------------------------

class Child:
    def __init__(self, *argv: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *argv], cwd=ROOT, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def send(self, message: dict[str, Any]) -> None:
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"a bench child ({' '.join(self.proc.args[2:])}) exited ({self.proc.wait()})")
        return json.loads(line)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()


def run_pair(variant: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    common = ["--tracks", str(args.tracks)]
    publisher = Child("--role", "publisher", *common)
    subscriber = Child("--role", "subscriber", "--variant", variant, "--out", str(out), "--seconds", str(args.seconds),
                       "--warmup", str(args.warmup), *common)
    watchdog = threading.Timer(args.warmup + args.seconds + PAIR_TIMEOUT_S, lambda: (publisher.kill(), subscriber.kill()))
    watchdog.start()
    try:
        offer = publisher.receive()
        subscriber.send(offer)
        publisher.send(subscriber.receive())  # the answer
        assert subscriber.receive()["event"] == "window_start"
        pub0, host0, t0 = pid_cpu_s(publisher.proc.pid), host_busy_s(), time.monotonic()
        assert subscriber.receive()["event"] == "window_end"
        pub1, host1, wall = pid_cpu_s(publisher.proc.pid), host_busy_s(), time.monotonic() - t0
        result = subscriber.receive()["result"]
        publisher.send({"stop": True})
        result.update(publisher.receive())
        for child in (publisher, subscriber):
            child.proc.stdin.close()
            child.proc.wait(timeout=30)
    finally:
        watchdog.cancel()
        publisher.kill()
        subscriber.kill()
    tracks = 2 * args.tracks
    result.update({
        "cpu_s_per_s": result["cpu_s"] / result["wall_s"],
        "cpu_s_per_s_per_track": result["cpu_s"] / result["wall_s"] / tracks,
        "publisher_cpu_s_per_s": (pub1 - pub0) / wall, "host_busy_cores": (host1 - host0) / wall,
        "files": [file_summary(p) for p in sorted(out.rglob("*.webm"))],
    })
    video = [f for f in result["files"] if f["kind"] == "video"]
    result["video_fps_in_files"] = sum(f["frames"] for f in video) / len(video) / result["recorded_s"] if video else 0.0
    # how far behind live the recording was when it stopped: media the files never got
    result["video_lag_s"] = result["recorded_s"] - sum(f["span_s"] for f in video) / len(video) if video else 0.0
    # backlog-independent: the whole run's CPU (connected -> files closed) per second of media the files
    # hold (video frames at 30 fps, Opus packets at 20 ms), i.e. per second of one recorded track
    result["media_s_in_files"] = sum(f["frames"] / FPS if f["kind"] == "video" else f["frames"] * AUDIO_PTIME
                                     for f in result["files"])
    result["cpu_s_per_media_s"] = result["run_cpu_s"] / result["media_s_in_files"]
    if result["frames_written"] is not None:
        result["video_fps_written"] = result["frames_written"]["video"] / args.tracks / result["wall_s"]
    return result


def file_summary(path: Path) -> dict[str, Any]:
    """Codec, size, packets and their time span; every packet is also decoded (a check that the
    file plays: `decoded` frames, `decode_errors`), which is not timed."""
    with av.open(str(path)) as c:
        stream = next(s for s in c.streams if s.type in ("video", "audio"))
        ctx = stream.codec_context
        frames, decoded, errors, first, last = 0, 0, 0, None, None
        for packet in c.demux(stream):
            if packet.size and packet.pts is not None:
                frames += 1
                t = float(packet.pts * packet.time_base)
                first, last = (t if first is None else first), t
                try:
                    decoded += len(ctx.decode(packet))
                except av.FFmpegError:
                    errors += 1
        with contextlib.suppress(av.FFmpegError):
            decoded += len(ctx.decode(None))
        return {"name": path.name, "kind": stream.type, "codec": ctx.name, "frames": frames, "decoded": decoded,
                "decode_errors": errors,
                "size": f"{ctx.width}x{ctx.height}" if stream.type == "video" else f"{ctx.sample_rate} Hz",
                "span_s": (last - first) if frames else 0.0}


def describe_files(files: list[dict[str, Any]]) -> str:
    parts = []
    for kind in ("video", "audio"):
        group = [f for f in files if f["kind"] == kind]
        if group:
            codecs = sorted({f"{f['codec']} {f['size']}" for f in group})
            frames = [f["frames"] for f in group]
            parts.append(f"{len(group)} x {', '.join(codecs)}, {min(frames)}-{max(frames)} frames "
                         f"over {min(f['span_s'] for f in group):.1f}-{max(f['span_s'] for f in group):.1f} s, "
                         f"{sum(f['decoded'] for f in group)} decoded, {sum(f['decode_errors'] for f in group)} decode errors")
    return "; ".join(parts)


# ---- part B: post-processing -------------------------------------------------------------------------------

def make_track_set(folder: Path, seconds: float) -> list[tuple[Path, str]]:
    """Raw TrackWriter files, as the recorder leaves them: one VP8 640x360@30 track, one Opus track."""
    video_path, audio_path = folder / "u1-video-1.webm", folder / "u1-audio-1.webm"
    video = TrackWriter(video_path, kind="video", codec="vp8", clock_rate=90_000, queue_max=1 << 20)
    enc = av.CodecContext.create("libvpx", "w")
    enc.width, enc.height, enc.pix_fmt = W, H, "yuv420p"
    enc.time_base, enc.framerate = fractions.Fraction(1, FPS), FPS
    enc.bit_rate, enc.gop_size, enc.thread_count = 1_000_000, 3000, 2  # aiortc's kf_max_dist, its top bitrate
    enc.options = {"deadline": "realtime", "cpu-used": "-6", "lag-in-frames": "0", "static-thresh": "1",
                   "bufsize": "1000000", "minrate": "1000000", "maxrate": "1000000"}
    frames = int(seconds * FPS)
    with av.open(f"testsrc2=size={W}x{H}:rate={FPS}:duration={frames / FPS}", format="lavfi") as src:
        for i, frame in enumerate(src.decode(video=0)):
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = i, enc.time_base
            for packet in enc.encode(frame):
                video.write(bytes(packet), timestamp=packet.pts * (90_000 // FPS))
    for packet in enc.encode(None):
        video.write(bytes(packet), timestamp=packet.pts * (90_000 // FPS))
    audio = TrackWriter(audio_path, kind="audio", codec="opus", clock_rate=AUDIO_RATE, queue_max=1 << 20)
    opus = av.CodecContext.create("libopus", "w")
    opus.sample_rate, opus.layout, opus.format, opus.bit_rate = AUDIO_RATE, "stereo", "s16", 64_000
    chunks, first = tone_chunks(440), []
    for n in [*range(int(seconds / AUDIO_PTIME)), None]:
        for packet in opus.encode(None if n is None else audio_frame(chunks[n % len(chunks)], n)):
            first = first or [packet.pts]  # libopus starts at -(its delay): the file starts at 0
            audio.write(bytes(packet), timestamp=packet.pts - first[0])
    for writer in (video, audio):
        stats = writer.close()
        if stats.error or not stats.opened:
            raise SystemExit(f"could not write {writer.path.name}: {stats.error or 'nothing written'}")
    return [(video_path, "video"), (audio_path, "audio")]


class Steps:
    """Wall and CPU (this process and its children) per (step, track kind)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, list[float]]] = {}

    @contextlib.contextmanager
    def timed(self, step: str, kind: str):
        cpu0, t0 = cpu_with_children_s(), time.perf_counter()
        yield
        wall, cpu = time.perf_counter() - t0, cpu_with_children_s() - cpu0
        row = self.rows.setdefault(step, {}).setdefault(kind, [0.0, 0.0])
        row[0] += wall
        row[1] += cpu

    def total(self, steps: list[str] | None = None, kind: str | None = None) -> tuple[float, float]:
        wall = cpu = 0.0
        for step, kinds in self.rows.items():
            if steps is None or step in steps:
                for k, (w, c) in kinds.items():
                    if kind is None or k == kind:
                        wall, cpu = wall + w, cpu + c
        return wall, cpu


def postprocess_ours(raw: list[tuple[Path, str]], final: Path, ffmpeg: str) -> Steps:
    steps = Steps()
    final.mkdir(parents=True, exist_ok=True)  # as _finalize does
    done = []
    for path, kind in raw:  # finalize
        with steps.timed("finalize", kind):
            track_finalize(src=path, dst=final / path.name)
        done.append((final / path.name, kind))
    durations = {}
    for path, kind in done:  # probe (with the checksum, as _probe does)
        with steps.timed("probe+checksum", kind):
            durations[path] = media_probe(path=path).duration_ms or 0
            file_checksum(path=path)
    for path, kind in done:  # qc
        with steps.timed("qc", kind):
            if kind == "video":
                detect_video(path=path, ffmpeg=ffmpeg, black_s=QC_BLACK_S, frozen_s=QC_FROZEN_S)
            else:
                detect_silence(path=path, ffmpeg=ffmpeg, min_s=QC_SILENCE_S)
    videos = [(p, k) for p, k in done if k == "video"]
    for path, kind in videos:  # thumbnails: each video track's, then the poster from the first one
        at_s = min(10.0, durations[path] / 2000)
        with steps.timed("thumbnails", kind):
            thumbnail_make(video=path, out=final / "thumbs" / f"{path.stem}.jpg", at_s=at_s, ffmpeg=ffmpeg)
    if videos:
        with steps.timed("thumbnails", "video"):
            at_s = min(10.0, durations[videos[0][0]] / 2000)
            thumbnail_make(video=videos[0][0], out=final / "poster.jpg", at_s=at_s, width=640, ffmpeg=ffmpeg)
    return steps


def postprocess_ffmpeg(raw: list[tuple[Path, str]], final: Path, ffmpeg: str) -> Steps:
    steps = Steps()
    final.mkdir(parents=True, exist_ok=True)
    base = [ffmpeg, "-hide_banner", "-nostdin", "-y"]
    for path, kind in raw:
        with steps.timed("remux (-c copy)", kind):
            subprocess.run([*base, "-loglevel", "error", "-i", str(path), "-c", "copy", str(final / path.name)], check=True)
    inputs, graph, maps = [], [], []
    for i, (path, kind) in enumerate(raw):
        inputs += ["-i", str(final / path.name)]
        if kind == "video":
            graph.append(f"[{i}:v]blackdetect=d={QC_BLACK_S}:pix_th=0.10,freezedetect=n=-60dB:d={QC_FROZEN_S}[o{i}]")
        else:
            graph.append(f"[{i}:a]silencedetect=n=-50dB:d={QC_SILENCE_S}[o{i}]")
        maps += ["-map", f"[o{i}]"]
    with steps.timed("detectors (1 pass)", "all"):
        subprocess.run([*base, "-loglevel", "info", *inputs, "-filter_complex", ";".join(graph), *maps, "-f", "null", "-"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return steps


def run_postprocess(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    ffmpeg = ffmpeg_default()
    t0 = time.monotonic()
    raw = make_track_set(tmp / "raw", args.media_seconds)
    generate_s = time.monotonic() - t0
    media_s = {kind: (media_probe(path=p).duration_ms or 0) / 1000 for p, kind in raw}
    peer = postprocess_ffmpeg(raw, tmp / "ffmpeg", ffmpeg)
    ours = postprocess_ours(raw, tmp / "final", ffmpeg)
    return {"raw": raw, "media_s": media_s, "generate_s": generate_s, "ours": ours, "peer": peer, "ffmpeg": ffmpeg}


# ---- main --------------------------------------------------------------------------------------------------

def ffmpeg_version(binary: str) -> str:
    out = subprocess.run([binary, "-version"], capture_output=True, text=True).stdout.split()
    return out[2] if len(out) > 2 else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=4, help="video tracks sent (as many audio tracks go with them)")
    parser.add_argument("--seconds", type=float, default=20.0, help="CPU window per variant, after --warmup")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--media-seconds", type=float, default=120.0, help="length of the post-processed tracks")
    parser.add_argument("--role", choices=("bench", "publisher", "subscriber"), default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=("ours", "mediarecorder"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role != "bench":
        logging.basicConfig(level=logging.ERROR)
        asyncio.run(publisher_main(args) if args.role == "publisher" else subscriber_main(args))
        return

    started = time.monotonic()
    busy_before = host_busy_cores()
    with tempfile.TemporaryDirectory(prefix="bench-recorder-") as tmp_name:
        tmp = Path(tmp_name)
        ours = run_pair("ours", args, tmp / "ours")
        peer = run_pair("mediarecorder", args, tmp / "mediarecorder")
        post = run_postprocess(args, tmp / "post")
    tracks = 2 * args.tracks
    ratio = ours["cpu_s_per_s_per_track"] / peer["cpu_s_per_s_per_track"]
    ratio_media = ours["cpu_s_per_media_s"] / peer["cpu_s_per_media_s"]

    print(f"\nA. Recording {args.tracks} video (VP8 {W}x{H}@{FPS}, aiortc encoder) + {args.tracks} audio (Opus) tracks "
          f"= {tracks} tracks, one aiortc publisher process -> one subscriber process over loopback; CPU window "
          f"{args.seconds:g} s after {args.warmup:g} s warm-up; {os.cpu_count()} cores, host busy before: "
          f"{busy_before:.2f} cores; aiortc + PyAV {av.__version__}\n")
    print(f"{'subscriber':<33} | {'cpu s/s':>7} | {'per track':>9} | {'cpu s per media s':>17} | {'video fps in files':>18} | "
          f"{'behind live at stop':>19} | {'RTP lost':>8} | {'publisher cpu s/s':>17} | {'host busy':>9} | {'video kbit/s':>12}")
    for name, r in (("ours: tap -> TrackWriter", ours), ("aiortc MediaRecorder (re-encodes)", peer)):
        print(f"{name:<33} | {r['cpu_s_per_s']:>7.3f} | {r['cpu_s_per_s_per_track']:>9.4f} | {r['cpu_s_per_media_s']:>17.4f} | "
              f"{r['video_fps_in_files']:>18.1f} | {r['video_lag_s']:>17.1f} s | "
              f"{r['packets_lost']:>8} | {r['publisher_cpu_s_per_s']:>17.3f} | {r['host_busy_cores']:>9.2f} | "
              f"{r['video_kbit_per_s_per_track']:>12.0f}")
    print(f"ratio ours / MediaRecorder: {ratio:.3f} (cpu s/s per track, window); {ratio_media:.3f} (cpu s per second "
          f"of media in the files, whole run: counts only what each one actually recorded)")
    print(f"ours, files (checked with PyAV): {describe_files(ours['files'])}; frames written in the window: "
          f"{ours['frames_written']['video']} video, {ours['frames_written']['audio']} audio "
          f"({ours['video_fps_written']:.1f} fps per video track), writer drops {ours['writer_dropped']}, "
          f"errors {ours['errors'] or 'none'}")
    print(f"MediaRecorder, files: {describe_files(peer['files'])}")

    media_hours = sum(post["media_s"].values()) / 3600
    hours = {kind: s / 3600 for kind, s in post["media_s"].items()}
    o, p = post["ours"], post["peer"]
    wall, cpu = o.total()
    pwall, pcpu = p.total()
    same_wall, same_cpu = o.total(["finalize", "qc"])
    print(f"\nB. Post-processing one raw set written by TrackWriter: {post['media_s']['video']:.0f} s VP8 {W}x{H}@{FPS} "
          f"(1 Mbit/s, keyframes every 100 s) + {post['media_s']['audio']:.0f} s Opus = {media_hours * 60:.1f} track-minutes; "
          f"ffmpeg {ffmpeg_version(post['ffmpeg'])} ({post['ffmpeg']}); set generated in {post['generate_s']:.1f} s, not timed. "
          f"Per hour of recorded track = seconds / track-hours.\n")
    print(f"{'step':<28} | {'wall s':>7} | {'cpu s':>7} | {'wall s/track-h':>14} | {'cpu s/track-h':>13} | "
          f"{'video: wall/cpu s per h':>23} | {'audio: wall/cpu s per h':>23}")

    def row(name: str, steps: Steps, which: list[str] | None) -> None:
        w, c = steps.total(which)
        split = []
        for kind in ("video", "audio"):
            kw, kc = steps.total(which, kind)
            per_kind = steps is o and (kw or kc)  # the peer's detector pass serves both kinds at once
            split.append(f"{kw / hours[kind]:>10.1f} / {kc / hours[kind]:<10.1f}" if per_kind else f"{'-':>23}")
        print(f"{name:<28} | {w:>7.2f} | {c:>7.2f} | {w / media_hours:>14.1f} | {c / media_hours:>13.1f} | "
              f"{split[0]:>23} | {split[1]:>23}")

    for step in o.rows:
        row(f"ours: {step}", o, [step])
    row("ours: total", o, None)
    for step in p.rows:
        row(f"ffmpeg CLI: {step}", p, [step])
    row("ffmpeg CLI: total", p, None)
    print(f"ratio ours / ffmpeg CLI, cpu: {cpu / pcpu:.2f} all steps (peer has no probe, checksum or thumbnails); "
          f"{same_cpu / pcpu:.2f} same steps (finalize + qc vs remux + one detector pass); wall: {wall / pwall:.2f} / "
          f"{same_wall / pwall:.2f}")

    result = {
        "tracks": tracks, "video_tracks": args.tracks, "audio_tracks": args.tracks, "duration_s": args.seconds,
        "warmup_s": args.warmup,
        "ours_cpu_s_per_s": round(ours["cpu_s_per_s"], 4),
        "ours_cpu_s_per_s_per_track": round(ours["cpu_s_per_s_per_track"], 5),
        "mediarecorder_cpu_s_per_s": round(peer["cpu_s_per_s"], 4),
        "mediarecorder_cpu_s_per_s_per_track": round(peer["cpu_s_per_s_per_track"], 5),
        "ratio_vs_mediarecorder": round(ratio, 4),
        "ours_cpu_s_per_media_s": round(ours["cpu_s_per_media_s"], 5),
        "mediarecorder_cpu_s_per_media_s": round(peer["cpu_s_per_media_s"], 5),
        "ratio_vs_mediarecorder_per_media_s": round(ratio_media, 4),
        "ours_media_s_in_files": round(ours["media_s_in_files"], 1),
        "mediarecorder_media_s_in_files": round(peer["media_s_in_files"], 1),
        "ours_frames_in_files": sum(f["frames"] for f in ours["files"]),
        "ours_frames_decoded_check": sum(f["decoded"] for f in ours["files"]),
        "ours_decode_errors_check": sum(f["decode_errors"] for f in ours["files"]),
        "ours_video_fps_in_files": round(ours["video_fps_in_files"], 1),
        "mediarecorder_video_fps_in_files": round(peer["video_fps_in_files"], 1),
        "ours_video_fps_written": round(ours["video_fps_written"], 1),
        "ours_video_behind_live_s": round(ours["video_lag_s"], 2),
        "mediarecorder_video_behind_live_s": round(peer["video_lag_s"], 2),
        "ours_rtp_packets_lost": ours["packets_lost"], "mediarecorder_rtp_packets_lost": peer["packets_lost"],
        "ours_writer_dropped_frames": ours["writer_dropped"],
        "publisher_cpu_s_per_s_ours_run": round(ours["publisher_cpu_s_per_s"], 3),
        "publisher_cpu_s_per_s_mediarecorder_run": round(peer["publisher_cpu_s_per_s"], 3),
        "host_busy_cores_ours_run": round(ours["host_busy_cores"], 2),
        "host_busy_cores_mediarecorder_run": round(peer["host_busy_cores"], 2),
        "video_kbit_per_s_per_track_ours_run": round(ours["video_kbit_per_s_per_track"]),
        "video_kbit_per_s_per_track_mediarecorder_run": round(peer["video_kbit_per_s_per_track"]),
        "media_s_per_track": round(post["media_s"]["video"], 2),
        "postprocess_wall_s_per_hour": round(wall / media_hours, 2),
        "postprocess_cpu_s_per_hour": round(cpu / media_hours, 2),
        "postprocess_wall_s_per_hour_video_track": round(o.total(None, "video")[0] / hours["video"], 2),
        "postprocess_cpu_s_per_hour_video_track": round(o.total(None, "video")[1] / hours["video"], 2),
        "postprocess_wall_s_per_hour_audio_track": round(o.total(None, "audio")[0] / hours["audio"], 2),
        "postprocess_cpu_s_per_hour_audio_track": round(o.total(None, "audio")[1] / hours["audio"], 2),
        **{f"postprocess_cpu_s_per_hour_{step.replace('+', '_')}": round(o.total([step])[1] / media_hours, 2) for step in o.rows},
        "ffmpeg_postprocess_wall_s_per_hour": round(pwall / media_hours, 2),
        "ffmpeg_postprocess_cpu_s_per_hour": round(pcpu / media_hours, 2),
        "ratio_vs_ffmpeg": round(cpu / pcpu, 3),
        "ratio_vs_ffmpeg_same_steps": round(same_cpu / pcpu, 3),
        "ratio_vs_ffmpeg_wall": round(wall / pwall, 3),
        "host_busy_cores_before_run": round(busy_before, 2), "cores": os.cpu_count(),
        "run_s": round(time.monotonic() - started, 1),
    }
    print(f"\nRESULT {json.dumps(result)}")


if __name__ == "__main__":
    main()
