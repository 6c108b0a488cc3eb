"""The RTMP ingest and segmenter with real publishers: ffmpeg (as OBS would publish), PyAV's rtmp output
(as the compositor does) and hand-made clients for refusals and garbage. Outputs are checked by parsing
the playlists (m3u8) and opening the segments (PyAV)."""
from __future__ import annotations

import asyncio
import os
import shutil
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import imageio_ffmpeg
import m3u8
import numpy as np
import pytest

from hls_packager import amf0
from hls_packager.config import PackagerConfig
from hls_packager.rtmp_chunks import COMMAND_AMF0, VIDEO, ChunkParser, ChunkWriter, Message
from hls_packager.server import IngestServer

ROOT = Path(__file__).resolve().parent.parent
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
TARGET = 2.0
KEYS = {
    "good-key": "class-1/session-1",
    "back-key": "class-2/session-5",
    "pyav-key": "class-3/session-1",
    "deb-key": "class-4/session-1",
    "cut-key": "class-5/session-1",
    "long-key": "class-6/session-1",
    "evil-abs": "/etc",
    "evil-dots": "class-1/../../outside",
    "evil-type": 42,
}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple]] = []
        self.segment_seen = asyncio.Event()

    def on_publish_start(self, folder): self.calls.append(("start", (folder,)))
    def on_publish_end(self, folder, reason): self.calls.append(("end", (folder, reason)))
    def on_refused(self, app, key, reason): self.calls.append(("refused", (app, key, reason)))

    async def on_segment(self, folder, name, duration_s):  # async handlers are allowed too
        self.calls.append(("segment", (folder, name, duration_s)))
        self.segment_seen.set()

    def of(self, kind: str) -> list[tuple]:
        return [args for k, args in self.calls if k == kind]


async def resolve_key(app: str, key: str) -> Any:
    return KEYS.get(key) if app == "live" else None


@pytest.fixture
async def server(tmp_path):
    events = Recorder()
    srv = IngestServer(PackagerConfig(port=0, output_dir=tmp_path / "hls", segment_duration_s=TARGET), resolve_key=resolve_key, events=events)
    await srv.start()
    srv.test_events = events
    yield srv
    await srv.close()


async def publish_ffmpeg(port: int, key: str, seconds: float, *, exe: str = FFMPEG) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        exe, "-hide_banner", "-loglevel", "error", "-re",
        "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
        "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", "60",
        "-c:a", "aac", "-f", "flv", f"rtmp://127.0.0.1:{port}/live/{key}",
        stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), seconds + 30)
    except asyncio.TimeoutError:
        proc.kill()
        raise
    return proc.returncode, err.decode(errors="replace")


def video_duration(path: Path) -> float:
    """What the segment really holds: first to last video frame, plus one frame."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        pts = [p.pts for p in c.demux(stream) if p.pts is not None]
        return float((max(pts) - min(pts)) * stream.time_base) + 1 / 30


def check_media(path: Path, *, width: int = 640, height: int = 360) -> None:
    with av.open(str(path)) as c:
        video, audio = c.streams.video[0], c.streams.audio[0]
        assert (video.codec_context.name, video.codec_context.width, video.codec_context.height) == ("h264", width, height)
        assert (audio.codec_context.name, audio.codec_context.sample_rate) == ("aac", 48000)
        frames = sum(1 for _ in c.decode(video))
        assert frames > 0


def load(folder: Path, name: str) -> m3u8.M3U8:
    return m3u8.loads((folder / name).read_text())


def assert_segment_durations(folder: Path, playlist: m3u8.M3U8) -> None:
    """Every segment but the last of each publish is within 10 % of the target, measured in the file."""
    segments = playlist.segments
    for i, segment in enumerate(segments):
        last_of_run = i + 1 == len(segments) or segments[i + 1].discontinuity
        measured = video_duration(folder / segment.uri)
        assert abs(measured - segment.duration) < 0.05, (segment.uri, measured, segment.duration)
        if not last_of_run:
            assert abs(measured - TARGET) <= 0.1 * TARGET, (segment.uri, measured)


class RawClient:
    """A minimal hand-made RTMP publisher, for refusals and broken input."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.parser = ChunkParser(max_message_bytes=1 << 20)
        self.out = ChunkWriter()

    async def open(self, *, handshake: bool = True) -> "RawClient":
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        if handshake:
            self.writer.write(b"\x03" + bytes(1536))
            s0s1s2 = await self.reader.readexactly(1 + 2 * 1536)
            self.writer.write(s0s1s2[1:1537])
        return self

    def command(self, *values: Any, stream_id: int = 0) -> None:
        self.writer.write(self.out.encode(3, Message(COMMAND_AMF0, stream_id, 0, amf0.encode(*values))))

    async def publish(self, key: str) -> list[str]:
        """connect, createStream, publish; the onStatus codes the server answers with (then EOF or timeout)."""
        self.command("connect", 1, {"app": "live", "type": "nonprivate", "tcUrl": f"rtmp://127.0.0.1:{self.port}/live"})
        self.command("createStream", 2, None)
        self.command("publish", 3, None, key, "live", stream_id=1)
        return await self.statuses()

    async def statuses(self, timeout: float = 5.0) -> list[str]:
        codes: list[str] = []
        try:
            while not codes:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    break
                for m in self.parser.feed(data):
                    values = amf0.decode_all(m.payload) if m.type_id == COMMAND_AMF0 else []
                    if values and values[0] == "onStatus":
                        codes.append(values[3]["code"])
        except asyncio.TimeoutError:
            pass
        return codes

    async def closed_by_server(self, timeout: float = 15.0) -> bool:
        try:
            while await asyncio.wait_for(self.reader.read(65536), timeout):
                pass
            return True
        except (asyncio.TimeoutError, ConnectionError):
            return False

    def close(self) -> None:
        self.writer.close()


async def garbage_clients(port: int) -> list[bool]:
    """Random bytes; a handshake then garbage; a cut mid-chunk before publish; a publisher cut
    mid-message. Each must be closed by the server; returns whether each was."""
    results = []
    c = await RawClient(port).open(handshake=False)
    c.writer.write(os.urandom(4000))
    results.append(await c.closed_by_server())
    c = await RawClient(port).open()
    c.writer.write(b"\x03\xff\xff\xff\x00\x00\x10\x14" + os.urandom(3000))
    results.append(await c.closed_by_server())
    c = await RawClient(port).open()
    c.writer.write(ChunkWriter().encode(3, Message(COMMAND_AMF0, 0, 0, amf0.encode("connect", 1, {"app": "live"})))[:20])
    c.writer.write_eof()
    results.append(await c.closed_by_server())
    c = await RawClient(port).open()
    assert await c.publish("cut-key") == ["NetStream.Publish.Start"]
    big = ChunkWriter()
    big.chunk_size = 128
    c.writer.write(big.encode(6, Message(VIDEO, 1, 0, b"\x17\x00" + os.urandom(5000)))[:700])  # cut mid-message
    c.writer.write_eof()
    results.append(await c.closed_by_server())
    return results


async def test_ffmpeg_publisher_becomes_hls_while_bad_clients_are_refused(server, tmp_path):
    events: Recorder = server.test_events
    good = asyncio.create_task(publish_ffmpeg(server.port, "good-key", 8))
    await asyncio.wait_for(events.segment_seen.wait(), 30)
    # While the good stream runs: a wrong key from real ffmpeg, path tricks from the resolver, garbage.
    wrong_rc, wrong_err = await publish_ffmpeg(server.port, "wrong-key", 2)
    assert wrong_rc != 0
    tricks = []
    for key in ("evil-abs", "evil-dots", "evil-type"):
        client = await RawClient(server.port).open()
        tricks.append(await client.publish(key))
        assert await client.closed_by_server()
    assert tricks == [["NetStream.Publish.BadName"]] * 3
    stats = server.stats()
    assert [p["folder"] for p in stats["publishers"]] == ["class-1/session-1"]
    assert stats["publishers"][0]["video_codec"] == "h264" and stats["publishers"][0]["audio_codec"] == "aac"
    assert stats["publishers"][0]["bytes_in"] > 0
    assert await garbage_clients(server.port) == [True, True, True, True]

    rc, err = await good
    assert rc == 0, err
    await asyncio.sleep(0.5)
    stats = server.stats()
    assert stats["refused_total"] == 4
    assert stats["refused_by_reason"] == {"unknown_key": 1, "bad_folder": 3}
    assert stats["protocol_errors_total"] >= 3
    assert sorted(args[1:] for args in events.of("refused")) == [
        ("evil-abs", "bad_folder"), ("evil-dots", "bad_folder"), ("evil-type", "bad_folder"), ("wrong-key", "unknown_key"),
    ]
    assert not (tmp_path / "outside").exists() and not (tmp_path / "hls" / "outside").exists()

    folder = tmp_path / "hls" / "class-1" / "session-1"
    live, vod = load(folder, "live.m3u8"), load(folder, "vod.m3u8")
    assert live.is_endlist and live.target_duration == 2 and len(live.segments) <= 6
    assert vod.is_endlist and vod.playlist_type == "vod"
    assert [s.uri for s in vod.segments] == [f"seg-{i}.ts" for i in range(len(vod.segments))]
    assert abs(sum(s.duration for s in vod.segments) - 8.0) < 0.3
    assert all(s.program_date_time is not None for s in vod.segments)
    assert not any(s.discontinuity for s in vod.segments)
    assert_segment_durations(folder, vod)
    check_media(folder / vod.segments[0].uri)
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temp files left
    assert [a for a in events.of("segment") if a[0] == "class-1/session-1"] == [
        ("class-1/session-1", s.uri, pytest.approx(s.duration, abs=0.001)) for s in vod.segments
    ]
    assert ("class-1/session-1", "unpublished") in events.of("end")
    # the cut publisher ended too, without harming anything
    assert any(a[0] == "class-5/session-1" for a in events.of("end"))


async def test_publisher_that_comes_back_continues_the_playlist_after_a_discontinuity(server, tmp_path):
    folder = tmp_path / "hls" / "class-2" / "session-5"
    rc, err = await publish_ffmpeg(server.port, "back-key", 5)
    assert rc == 0, err
    await asyncio.sleep(0.3)
    first = load(folder, "vod.m3u8")
    assert first.is_endlist and load(folder, "live.m3u8").is_endlist
    rc, err = await publish_ffmpeg(server.port, "back-key", 5)
    assert rc == 0, err
    await asyncio.sleep(0.3)
    vod, live = load(folder, "vod.m3u8"), load(folder, "live.m3u8")
    n1 = len(first.segments)
    assert [s.uri for s in vod.segments] == [f"seg-{i}.ts" for i in range(len(vod.segments))]
    assert [s.discontinuity for s in vod.segments] == [i == n1 for i in range(len(vod.segments))]
    assert vod.segments[n1].program_date_time > vod.segments[n1 - 1].program_date_time
    assert live.is_endlist and live.segments[-1].uri == vod.segments[-1].uri
    assert live.media_sequence == len(vod.segments) - len(live.segments)
    assert_segment_durations(folder, vod)
    check_media(folder / vod.segments[n1].uri)


def pyav_publish(url: str, seconds: float) -> None:
    """The compositor's way: PyAV encodes H.264 + AAC and writes FLV to an rtmp URL. Run in a child
    process: PyAV 18 holds the GIL during the RTMP connect (avio_open in the first mux), which would
    stall an event loop in the same process."""
    with av.open(url, "w", format="flv") as out:
        video = out.add_stream("libx264", rate=30, options={"preset": "veryfast", "tune": "zerolatency"})
        video.width, video.height, video.pix_fmt = 1280, 720, "yuv420p"
        video.codec_context.gop_size = 60
        audio = out.add_stream("aac", rate=48000, layout="stereo")
        samples_per_frame = 1024
        next_audio = 0
        for i in range(int(seconds * 30)):
            image = np.full((720, 1280, 3), (i * 4) % 255, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 30)
            for packet in video.encode(frame):
                out.mux(packet)
            while next_audio < (i + 1) * 1600:  # 48000 / 30 samples per video frame, in AAC-sized frames
                t = np.arange(next_audio, next_audio + samples_per_frame) / 48000.0
                tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
                frame = av.AudioFrame.from_ndarray(np.vstack([tone, tone]), format="fltp", layout="stereo")
                frame.sample_rate, frame.pts, frame.time_base = 48000, next_audio, Fraction(1, 48000)
                for packet in audio.encode(frame):
                    out.mux(packet)
                next_audio += samples_per_frame
        for stream in (video, audio):
            for packet in stream.encode(None):
                out.mux(packet)


async def publish_pyav(url: str, seconds: float) -> tuple[int, str]:
    code = f"from tests.test_hls_ingest import pyav_publish; pyav_publish({url!r}, {seconds})"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), seconds + 60)
    return proc.returncode, err.decode(errors="replace")


async def test_pyav_publisher_and_debian_ffmpeg_publish_at_once(server, tmp_path):
    jobs = [publish_pyav(f"rtmp://127.0.0.1:{server.port}/live/pyav-key", 6)]
    debian = shutil.which("ffmpeg") if os.path.exists("/usr/bin/ffmpeg") else None
    if debian:
        jobs.append(publish_ffmpeg(server.port, "deb-key", 6, exe="/usr/bin/ffmpeg"))
    results = await asyncio.gather(*jobs)
    assert results[0][0] == 0, results[0][1]
    if debian:
        assert results[1][0] == 0, results[1][1]
    await asyncio.sleep(0.5)
    folder = tmp_path / "hls" / "class-3" / "session-1"
    vod = load(folder, "vod.m3u8")
    assert vod.is_endlist and len(vod.segments) == 3
    assert_segment_durations(folder, vod)
    check_media(folder / vod.segments[0].uri, width=1280, height=720)
    if debian:
        folder = tmp_path / "hls" / "class-4" / "session-1"
        vod = load(folder, "vod.m3u8")
        assert_segment_durations(folder, vod)
        check_media(folder / vod.segments[-1].uri)


async def test_close_ends_every_publisher_and_writes_the_vod_playlist(tmp_path):
    events = Recorder()
    srv = IngestServer(PackagerConfig(port=0, output_dir=tmp_path / "hls"), resolve_key=resolve_key, events=events)
    await srv.start()
    publisher = asyncio.create_task(publish_ffmpeg(srv.port, "long-key", 30))
    await asyncio.wait_for(events.segment_seen.wait(), 30)
    await srv.close()
    assert events.of("end") == [("class-6/session-1", "server_closed")]
    assert srv.stats()["publishers"] == []
    rc, _ = await asyncio.wait_for(publisher, 30)  # ffmpeg notices the closed connection and gives up
    assert rc != 0
    folder = tmp_path / "hls" / "class-6" / "session-1"
    vod, live = load(folder, "vod.m3u8"), load(folder, "live.m3u8")
    assert vod.is_endlist and live.is_endlist and len(vod.segments) >= 1
    for segment in vod.segments[:-1]:
        check_media(folder / segment.uri)
    with av.open(str(folder / vod.segments[-1].uri)) as c:  # cut short by the close: maybe no audio yet
        assert sum(1 for _ in c.decode(video=0)) > 0
