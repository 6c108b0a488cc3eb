"""Per-track recording without re-encoding: real VP8, Opus and H.264 (encoded here with PyAV's libvpx,
libopus and libx264) written through TrackWriter and read back with PyAV; a process SIGKILLed
mid-recording; finalize and probe of what it left; file checksums."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import av
import numpy as np
import pytest

from recorder import RecorderError
from recorder.files import file_checksum
from recorder.finalize import FinalizeError, track_finalize
from recorder.probe import ProbeError, media_probe
from recorder.writer import (
    OPUS_HEAD,
    TrackStats,
    TrackWriter,
    TrackWriterError,
    h264_is_keyframe,
    opus_packet_ms,
    track_suffix,
    vp8_keyframe_size,
)

pytestmark = pytest.mark.once  # pure media: the deployment mode does not matter

ROOT = Path(__file__).resolve().parent.parent
VIDEO_STEP = 3000  # 90 kHz ticks per frame at 30 fps
AUDIO_STEP = 960  # 48 kHz ticks per 20 ms Opus packet


# ---- realistic encoded media (also used by the crash test's child process) ----

def _picture(i: int, width: int, height: int, rng: np.random.Generator) -> av.VideoFrame:
    """A moving gradient with a noisy patch: enough detail for realistic frame sizes."""
    y = ((np.arange(width)[None, :] + np.arange(height)[:, None] + 4 * i) % 256).astype(np.uint8)
    patch = rng.integers(0, 256, (height // 4, width // 4), dtype=np.uint8)
    y[height // 4: height // 2, width // 4: width // 2] = patch
    uv = np.full((height // 2, width), 128, np.uint8)
    frame = av.VideoFrame.from_ndarray(np.vstack([y, uv]), format="yuv420p")
    frame.pts = i
    return frame


def _encode_video(codec: str, n: int, width: int, height: int, gop: int, options: dict[str, str]) -> list[bytes]:
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base, ctx.framerate = Fraction(1, 30), 30
    ctx.gop_size, ctx.bit_rate = gop, 800_000
    ctx.options = options
    rng = np.random.default_rng(7)
    out: list[bytes] = []
    for i in range(n):
        out += [bytes(p) for p in ctx.encode(_picture(i, width, height, rng))]
    out += [bytes(p) for p in ctx.encode(None)]
    return out


def encode_vp8(n: int, *, width: int = 640, height: int = 360, gop: int = 10) -> list[bytes]:
    options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    return _encode_video("libvpx", n, width, height, gop, options)


def encode_h264(n: int, *, width: int = 320, height: int = 240, gop: int = 10) -> list[bytes]:
    # no global-header flag: libx264 then emits Annex B with SPS/PPS before each IDR, as WebRTC does
    options = {"preset": "ultrafast", "tune": "zerolatency", "bframes": "0"}
    return _encode_video("libx264", n, width, height, gop, options)


def encode_opus(n: int) -> list[bytes]:
    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate, ctx.layout, ctx.format, ctx.bit_rate = 48_000, "stereo", "s16", 64_000
    t = np.arange(960 * n) / 48_000
    rng = np.random.default_rng(3)
    tone = (np.sin(2 * np.pi * 440 * t) * 6000 + rng.normal(0, 300, t.size)).astype(np.int16)
    out: list[bytes] = []
    for i in range(n):
        samples = np.repeat(tone[i * 960:(i + 1) * 960], 2)[None, :]  # interleaved stereo
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48_000, i * 960
        out += [bytes(p) for p in ctx.encode(frame)]
    return out


@pytest.fixture(scope="module")
def vp8() -> list[bytes]:
    return encode_vp8(60)


@pytest.fixture(scope="module")
def h264() -> list[bytes]:
    return encode_h264(60)


@pytest.fixture(scope="module")
def opus() -> list[bytes]:
    return encode_opus(100)


def packets(path: Path) -> list[av.Packet]:
    with av.open(str(path)) as container:
        return [p for p in container.demux(container.streams[0]) if p.size]


def decoded(path: Path) -> list[Any]:
    with av.open(str(path)) as container:
        return list(container.decode(container.streams[0]))


def write_all(writer: TrackWriter, frames: list[bytes], *, first: int, step: int) -> TrackStats:
    for i, data in enumerate(frames):
        writer.write(data, timestamp=first + i * step)
    return writer.close()


def keyframe_indexes(frames: list[bytes]) -> list[int]:
    return [i for i, f in enumerate(frames) if vp8_keyframe_size(f)]


# ---- bitstream inspection ----

def test_payload_inspection(vp8: list[bytes], h264: list[bytes], opus: list[bytes]) -> None:
    assert vp8_keyframe_size(vp8[0]) == (640, 360)
    assert vp8_keyframe_size(vp8[1]) is None
    assert h264[0][:4] == b"\x00\x00\x00\x01"  # PyAV's libx264 gives Annex B: nothing to convert
    assert h264_is_keyframe(h264[0]) and not h264_is_keyframe(h264[1])
    assert [opus_packet_ms(p) for p in opus[:3]] == [20, 20, 20]
    assert opus_packet_ms(bytes([16 << 3 | 3, 4])) == 10  # CELT 2.5 ms x 4 frames (code 3)
    assert opus_packet_ms(b"") is None
    assert track_suffix(codec="VP8") == ".webm" and track_suffix(codec="h264") == ".mkv"


def test_refuses_unknown_codec_or_wrong_kind(tmp_path: Path) -> None:
    with pytest.raises(TrackWriterError, match="cannot record codec 'av1'"):
        TrackWriter(tmp_path / "x.webm", kind="video", codec="av1", clock_rate=90_000)
    with pytest.raises(TrackWriterError, match="'opus' is audio") as caught:
        TrackWriter(tmp_path / "x.webm", kind="video", codec="opus", clock_rate=48_000)
    assert isinstance(caught.value, RecorderError)


# ---- writing ----

def test_vp8_track_keeps_leading_offset_and_duration(tmp_path: Path, vp8: list[bytes]) -> None:
    path = tmp_path / "u3-video-1.webm"
    writer = TrackWriter(path, kind="video", codec="vp8", clock_rate=90_000)
    stats = write_all(writer, vp8, first=45_000, step=VIDEO_STEP)  # media arrives 500 ms after t=0
    assert stats.opened and not stats.error and stats.dropped == 0
    assert (stats.frames, stats.width, stats.height, stats.first_ms) == (60, 640, 360, 500)
    assert stats.keyframes == len(keyframe_indexes(vp8)) >= 1
    assert stats.bytes == sum(map(len, vp8))
    assert writer.close() == stats  # idempotent

    got = packets(path)
    assert len(got) == 60 and got[0].pts == 500 and got[0].is_keyframe
    assert [p.pts for p in got] == sorted({p.pts for p in got})
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("vp8", 640, 360)
        assert container.duration is not None
        assert abs(container.duration / 1000 - (500 + 60 * 1000 / 30)) <= 34  # within one frame
        assert stats.end_ms is not None and abs(container.duration / 1000 - stats.end_ms) <= 1
    assert len(decoded(path)) == 60


def test_opus_track_has_opus_head_and_packet_durations(tmp_path: Path, opus: list[bytes]) -> None:
    path = tmp_path / "u3-audio-1.webm"
    writer = TrackWriter(path, kind="audio", codec="opus", clock_rate=48_000)
    stats = write_all(writer, opus, first=24_000, step=AUDIO_STEP)
    assert (stats.frames, stats.first_ms, stats.end_ms, stats.dropped) == (100, 500, 2500, 0)
    assert stats.width is None and stats.keyframes == 0
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        ctx = stream.codec_context
        assert (ctx.name, ctx.sample_rate, ctx.channels, ctx.extradata) == ("opus", 48_000, 2, OPUS_HEAD)
        # Duration counts the OpusHead pre-skip as Matroska CodecDelay (312 samples = 6.5 ms)
        assert container.duration is not None and 0 <= container.duration / 1000 - 2500 <= 20
    got = packets(path)
    assert len(got) == 100 and got[0].pts == 500 and {p.duration for p in got} == {20}
    assert sum(f.samples for f in decoded(path)) == 100 * 960 - 312


def test_h264_track_starts_at_first_idr(tmp_path: Path, h264: list[bytes]) -> None:
    path = tmp_path / "u3-video-1.mkv"
    writer = TrackWriter(path, kind="video", codec="h264", clock_rate=90_000)
    first_idr = next(i for i in range(3, len(h264)) if h264_is_keyframe(h264[i]))
    for i in range(3, len(h264)):  # joins mid-GOP: frames 3.. until the next IDR cannot be decoded
        writer.write(h264[i], timestamp=9_000 + i * VIDEO_STEP)
    stats = writer.close()
    assert stats.dropped_waiting_keyframe == stats.dropped == first_idr - 3 > 0
    assert stats.frames == len(h264) - first_idr
    assert (stats.width, stats.height) == (320, 240)
    assert stats.first_ms == round((9_000 + first_idr * VIDEO_STEP) / 90)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (container.format.name.split(",")[0], stream.codec_context.name) == ("matroska", "h264")
        assert stream.codec_context.extradata[:1] == b"\x01"  # avcC built from the in-band SPS/PPS
        assert abs(container.duration / 1000 - stats.end_ms) <= 1
    got = packets(path)
    assert got[0].pts == stats.first_ms and got[0].is_keyframe
    assert len(decoded(path)) == stats.frames


def test_vp8_frames_before_first_keyframe_are_dropped(tmp_path: Path, vp8: list[bytes]) -> None:
    keys = keyframe_indexes(vp8)
    start = keys[0] + 1
    second = next(k for k in keys if k >= start)
    path = tmp_path / "v.webm"
    writer = TrackWriter(path, kind="video", codec="vp8", clock_rate=90_000)
    for i in range(start, len(vp8)):
        writer.write(vp8[i], timestamp=i * VIDEO_STEP)
    stats = writer.close()
    assert stats.dropped_waiting_keyframe == second - start > 0
    assert stats.frames == len(vp8) - second
    assert packets(path)[0].pts == round(second * 1000 / 30)


def test_a_track_without_keyframe_leaves_no_file(tmp_path: Path, vp8: list[bytes]) -> None:
    path = tmp_path / "never.webm"
    deltas = [f for f in vp8 if not vp8_keyframe_size(f)][:10]
    stats = write_all(TrackWriter(path, kind="video", codec="vp8", clock_rate=90_000), deltas, first=0, step=VIDEO_STEP)
    assert not stats.opened and stats.frames == 0 and stats.dropped_waiting_keyframe == 10
    assert not path.exists()


def test_duplicate_and_out_of_order_frames_are_dropped_and_counted(tmp_path: Path, opus: list[bytes]) -> None:
    path = tmp_path / "a.webm"
    writer = TrackWriter(path, kind="audio", codec="opus", clock_rate=48_000)
    order = [0, 1, 2, 2, 3, 1, 4, 5]  # a duplicate of 2, a late 1
    for i in order:
        writer.write(opus[i], timestamp=i * AUDIO_STEP)
    stats = writer.close()
    assert (stats.frames, stats.dropped_order, stats.dropped) == (6, 2, 2)
    assert [p.pts for p in packets(path)] == [0, 20, 40, 60, 80, 100]


def _wait_processed(writer: TrackWriter, count: int) -> None:
    """Until the writer thread has dealt with `count` frames (written or dropped there)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        s = writer.stats()
        if s.frames + s.dropped_order + s.dropped_waiting_keyframe >= count:
            return
        time.sleep(0.01)
    raise AssertionError(f"writer thread stuck: {writer.stats()}")


def test_full_queue_drops_without_blocking_and_video_resumes_at_a_keyframe(tmp_path: Path, vp8: list[bytes]) -> None:
    path = tmp_path / "v.webm"
    writer = TrackWriter(path, kind="video", codec="vp8", clock_rate=90_000, queue_max=5)
    release = threading.Event()
    handle = writer._handle  # stall the writer thread, as a slow disk would

    def stalled(*args: Any) -> None:
        release.wait(10)
        handle(*args)

    writer._handle = stalled  # type: ignore[method-assign]
    burst = threading.Thread(target=lambda: [writer.write(vp8[i], timestamp=i * VIDEO_STEP) for i in range(30)])
    burst.start()
    burst.join(10)
    assert not burst.is_alive(), "write() blocked on a full queue"
    stats = writer.stats()
    assert stats.dropped_overflow >= 30 - 6  # 5 queued, perhaps 1 taken by the stalled thread
    accepted = 30 - stats.dropped_overflow
    release.set()
    _wait_processed(writer, accepted)

    # after the gap a delta frame cannot be decoded: the writer waits for the next keyframe
    keys = keyframe_indexes(vp8)
    resume = next(k for k in keys if k > 31) - 2
    for i in range(resume, len(vp8)):
        writer.write(vp8[i], timestamp=i * VIDEO_STEP)
        _wait_processed(writer, accepted + i - resume + 1)
    stats = writer.close()
    assert stats.dropped_waiting_keyframe == 2
    assert stats.frames == accepted + len(vp8) - resume - 2
    assert stats.dropped == stats.dropped_overflow + 2
    assert len(decoded(path)) == stats.frames


def test_writes_after_close_are_dropped(tmp_path: Path, opus: list[bytes]) -> None:
    writer = TrackWriter(tmp_path / "a.webm", kind="audio", codec="opus", clock_rate=48_000)
    writer.write(opus[0], timestamp=0)
    writer.close()
    writer.write(opus[1], timestamp=AUDIO_STEP)
    assert (writer.stats().frames, writer.stats().dropped) == (1, 1)


def test_a_muxing_error_is_reported_and_later_writes_dropped(opus: list[bytes]) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    writer = TrackWriter(Path("/dev/full"), kind="audio", codec="opus", clock_rate=48_000)
    for i in range(20):
        writer.write(opus[i], timestamp=i * AUDIO_STEP)
    stats = writer.close()  # never raises
    assert "No space left" in stats.error
    assert stats.frames + stats.dropped == 20 and stats.dropped >= 1


# ---- crash safety ----

CHILD = """
import sys, time
from pathlib import Path
from recorder.writer import TrackWriter
from tests.test_recorder_writer import encode_opus, encode_vp8

out = Path(sys.argv[1])
video, audio = encode_vp8(90), encode_opus(150)
vw = TrackWriter(out / "video.webm", kind="video", codec="vp8", clock_rate=90000)
aw = TrackWriter(out / "audio.webm", kind="audio", codec="opus", clock_rate=48000)
# 3 s of media after a leading gap (on stage at t=0, media from 0.30 s / 0.25 s), paced in real time
events = sorted([(0.30 + i / 30, 0, i) for i in range(90)] + [(0.25 + i * 0.02, 1, i) for i in range(150)])
start, ready = time.monotonic(), False
for at, kind, i in events:
    time.sleep(max(0.0, start + at - time.monotonic()))
    if kind == 0:
        vw.write(video[i], timestamp=round(at * 90000))
    else:
        aw.write(audio[i], timestamp=round(at * 48000))
    if not ready and at >= 2.0:
        v, a = vw.stats(), aw.stats()  # what the muxer has taken so far
        print("READY", v.end_ms, a.end_ms, flush=True)
        ready = True
time.sleep(600)  # never closes: the test kills us
"""


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int, int]]:
    """Record VP8 + Opus in a child process and SIGKILL it after ~2 s: (folder, video end, audio end)."""
    folder = tmp_path_factory.mktemp("killed")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.startswith("READY"), f"child said {line!r}"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    _, video_end, audio_end = line.split()
    yield folder, int(video_end), int(audio_end)


def test_sigkilled_recording_decodes_up_to_about_the_last_second(killed: tuple[Path, int, int]) -> None:
    folder, video_end, audio_end = killed
    assert video_end >= 2000 and audio_end >= 2000
    with av.open(str(folder / "video.webm")) as container:
        assert container.streams.video[0].codec_context.name == "vp8"
        frames = list(container.decode(video=0))
    assert frames[0].pts == 300  # the leading gap survives
    assert frames[-1].pts + 33 >= video_end - 1200
    with av.open(str(folder / "audio.webm")) as container:
        assert container.streams.audio[0].codec_context.name == "opus"
        chunks = list(container.decode(audio=0))
    assert chunks[-1].pts + chunks[-1].samples * 1000 // 48_000 >= audio_end - 1200


def test_finalize_of_a_killed_file_is_seekable_and_idempotent(killed: tuple[Path, int, int], tmp_path: Path) -> None:
    folder, video_end, _ = killed
    raw = folder / "video.webm"
    with av.open(str(raw)) as container:
        assert container.duration is None  # no trailer was written
    dst = tmp_path / "final" / "video.webm"
    dst.parent.mkdir()
    result = track_finalize(src=raw, dst=dst)
    assert result.truncated and result.path == dst
    assert result.first_ms == 300 and result.last_ms >= video_end - 1200 - 33
    assert result.end_ms > result.last_ms and result.duration_ms == result.end_ms
    assert result.packets == len(packets(raw)) == len(packets(dst))
    assert [p.pts for p in packets(dst)] == [p.pts for p in packets(raw)]  # copied untouched, offset kept
    with av.open(str(dst)) as container:
        stream = container.streams.video[0]
        assert container.duration is not None and container.duration // 1000 == result.end_ms
        container.seek(1000, stream=stream, backward=True)  # has Cues: seeking works
        assert next(container.decode(stream)).pts <= 1000
    digest = file_checksum(path=dst)
    again = track_finalize(src=raw, dst=dst)
    assert again == result and file_checksum(path=dst) == digest  # same bytes
    assert [p.name for p in dst.parent.iterdir()] == ["video.webm"]  # no temporary left behind
    # a finished file finalizes to the same packets and is no longer truncated
    second = track_finalize(src=dst, dst=tmp_path / "again.webm")
    assert not second.truncated and second.packets == result.packets and second.end_ms == result.end_ms


def test_finalize_of_a_killed_opus_file_keeps_its_offset(killed: tuple[Path, int, int], tmp_path: Path) -> None:
    folder, _, audio_end = killed
    result = track_finalize(src=folder / "audio.webm", dst=tmp_path / "audio.webm")
    assert result.truncated and result.first_ms == 250 and result.end_ms >= audio_end - 1200
    assert packets(tmp_path / "audio.webm")[0].pts == 250


def test_finalize_refuses_a_file_without_packets(tmp_path: Path, vp8: list[bytes]) -> None:
    full = tmp_path / "full.webm"
    write_all(TrackWriter(full, kind="video", codec="vp8", clock_rate=90_000), vp8[:5], first=0, step=VIDEO_STEP)
    header_only = tmp_path / "header.webm"
    header_only.write_bytes(full.read_bytes()[:200])
    garbage = tmp_path / "garbage.webm"
    garbage.write_bytes(b"not a matroska file" * 100)
    for src in (header_only, garbage, tmp_path / "missing.webm"):
        with pytest.raises(FinalizeError, match=src.name):
            track_finalize(src=src, dst=tmp_path / "out.webm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.webm", "garbage.webm", "header.webm"]


def test_finalize_cuts_a_damaged_tail(tmp_path: Path, h264: list[bytes]) -> None:
    full = tmp_path / "full.mkv"
    stats = write_all(TrackWriter(full, kind="video", codec="h264", clock_rate=90_000), h264, first=0, step=VIDEO_STEP)
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 3])
    result = track_finalize(src=cut, dst=tmp_path / "cut-final.mkv")
    assert result.truncated and 0 < result.packets < stats.frames
    assert len(decoded(tmp_path / "cut-final.mkv")) == result.packets
    whole = track_finalize(src=full, dst=tmp_path / "full-final.mkv")
    assert not whole.truncated and whole.packets == stats.frames
    assert stats.end_ms is not None and abs(whole.end_ms - stats.end_ms) <= 1  # last duration is re-estimated


# ---- probe and checksum ----

def test_probe_reports_recorded_tracks(tmp_path: Path, vp8: list[bytes], opus: list[bytes]) -> None:
    video, audio = tmp_path / "v.webm", tmp_path / "a.webm"
    v = write_all(TrackWriter(video, kind="video", codec="vp8", clock_rate=90_000), vp8, first=45_000, step=VIDEO_STEP)
    writer = TrackWriter(audio, kind="audio", codec="opus", clock_rate=48_000)
    a = write_all(writer, opus, first=24_000, step=AUDIO_STEP)
    info = media_probe(path=video)
    assert (info.kinds, info.kind, info.codec, info.frames, info.start_ms) == (("video",), "video", "vp8", 60, 500)
    assert (info.width, info.height, info.sample_rate, info.channels) == (640, 360, None, None)
    assert info.duration_ms == v.end_ms and info.size == video.stat().st_size
    info = media_probe(path=audio)
    assert (info.kind, info.codec, info.frames, info.start_ms) == ("audio", "opus", 100, 500)
    assert (info.sample_rate, info.channels, info.width) == (48_000, 2, None)
    assert info.duration_ms is not None and a.end_ms is not None and 0 <= info.duration_ms - a.end_ms <= 20


def test_probe_of_a_killed_file_falls_back_to_its_packets(killed: tuple[Path, int, int]) -> None:
    folder, video_end, _ = killed
    info = media_probe(path=folder / "video.webm")
    assert info.codec == "vp8" and info.start_ms == 300 and info.frames == len(packets(folder / "video.webm"))
    assert info.duration_ms is not None and video_end - 1300 <= info.duration_ms <= video_end


@pytest.mark.parametrize(("suffix", "fmt"), [(".mp4", "mp4"), (".ts", "mpegts")])
def test_probe_reads_mp4_and_ts(tmp_path: Path, h264: list[bytes], suffix: str, fmt: str) -> None:
    mkv = tmp_path / "h.mkv"
    write_all(TrackWriter(mkv, kind="video", codec="h264", clock_rate=90_000), h264, first=0, step=VIDEO_STEP)
    out = tmp_path / f"h{suffix}"
    with av.open(str(mkv)) as source, av.open(str(out), "w", format=fmt) as sink:
        stream = sink.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.size:
                packet.stream = stream
                sink.mux(packet)
    info = media_probe(path=out)
    assert (info.kind, info.codec, info.frames, info.width, info.height) == ("video", "h264", 60, 320, 240)
    assert info.duration_ms is not None and abs(info.duration_ms - 2000) <= 40


def test_probe_refuses_unreadable_files(tmp_path: Path) -> None:
    garbage = tmp_path / "x.webm"
    garbage.write_bytes(b"\x00" * 100)
    for path in (garbage, tmp_path / "missing.mkv"):
        with pytest.raises(ProbeError, match=path.name):
            media_probe(path=path)


def test_file_checksum_streams_large_files(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    data = np.random.default_rng(1).integers(0, 256, (5 << 20) // 2 + 3, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    assert file_checksum(path=path) == (len(data), hashlib.sha256(data).hexdigest())
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_checksum(path=empty) == (0, hashlib.sha256(b"").hexdigest())
