"""The whole program with synthetic inputs: composed, encoded once, written to file sinks and pushed to
RTMP destinations that refuse, drop and come back; and the async glue from stage tracks to the program."""
from __future__ import annotations

import asyncio
import fractions
import math
import socket
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from compositor.config import Destination, Participant, ProgramConfig
from compositor.egress import StageCompositor, stage_participants
from compositor.layout import layout_compute
from compositor.nametag import card_color, rgb_to_yuv
from compositor.program import Program
from rtc.stage_client import StageConnectionError, StageSubscriber, StageTrack

pytestmark = pytest.mark.once  # pure media: the deployment mode does not matter

COLORS = {1: (220, 40, 40), 2: (40, 200, 60), 3: (40, 60, 220)}
STAGE = [Participant(1, "Ada Lovelace", "instructor"), Participant(2, "Ben Bitdiddle"), Participant(3, "Cleo")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def solid(rgb, w=640, h=360) -> av.VideoFrame:
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rgb
    return av.VideoFrame.from_ndarray(img, format="rgb24")


def tone(freq: float, start: int, n: int = 960, amp: float = 0.3) -> av.AudioFrame:
    x = (amp * 32767 * np.sin(2 * math.pi * freq * (np.arange(n) + start) / 48_000)).astype(np.int16)
    frame = av.AudioFrame.from_ndarray(np.repeat(x, 2).reshape(1, -1), format="s16", layout="stereo")
    frame.sample_rate = 48_000
    return frame


class Feeder(threading.Thread):
    """Pushes 30 fps video and 20 ms audio per participant, as the stage readers would; user 3's camera
    freezes (stops sending) after `freeze_s`."""

    def __init__(self, program: Program, *, freeze_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.program, self.freeze_s = program, freeze_s
        self.stop = threading.Event()
        self.frames = {uid: solid(rgb) for uid, rgb in COLORS.items()}

    def run(self) -> None:
        t0, i = time.monotonic(), 0
        while not self.stop.is_set():
            elapsed = time.monotonic() - t0
            for uid in COLORS:
                if not (uid == 3 and elapsed > self.freeze_s):
                    self.program.push_video(uid, self.frames[uid])
            while i * 0.02 <= elapsed + 0.04:
                for uid in (1, 2):
                    self.program.push_audio(uid, tone(300 * uid, i * 960))
                i += 1
            self.stop.wait(1 / 30)


def yuv_at(a: np.ndarray, w: int, h: int, x: int, y: int) -> tuple[int, int, int]:
    u = a[h : h + h // 4].reshape(h // 2, w // 2)
    v = a[h + h // 4 :].reshape(h // 2, w // 2)
    return int(a[y, x]), int(u[y // 2, x // 2]), int(v[y // 2, x // 2])


def near(actual, expected, tol=6) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected))


def wait_for(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def read_output(path: Path) -> dict:
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        info = {"video": (v.codec_context.name, v.codec_context.width, v.codec_context.height),
                "audio": (a.codec_context.name, a.codec_context.sample_rate, a.codec_context.channels)}
        frames, keyframe_ticks, first_tick = [], [], None
        for frame in c.decode(video=0):
            tick = round(frame.time * 30)
            first_tick = tick if first_tick is None else first_tick
            if frame.key_frame:
                keyframe_ticks.append(tick)
            frames.append((tick, frame.to_ndarray()))
        c.seek(0)
        samples = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    info.update(frames=frames, keyframe_ticks=keyframe_ticks, first_tick=first_tick, audio_samples=samples)
    return info


@pytest.mark.slow
def test_program_end_to_end_to_files(tmp_path):
    config = ProgramConfig(keyint_s=1.0)  # 1280x720 @ 30, keyframe every 30 frames
    mp4, flv = tmp_path / "program.mp4", tmp_path / "late.flv"
    program = Program(config, destinations=[Destination(id="file", url=str(mp4))])
    program.set_participants(STAGE)
    feeder = Feeder(program, freeze_s=1.0)
    program.start()
    feeder.start()
    try:
        time.sleep(1.5)
        program.add_destination(Destination(id="late", url=f"file://{flv}"))  # added while live
        time.sleep(2.5)
        stats = program.stats()
    finally:
        feeder.stop.set()
        program.stop()
        program.stop()  # idempotent
    assert stats["running"] and stats["error"] is None
    assert stats["destinations"]["file"]["state"] == "live" and stats["destinations"]["late"]["state"] == "live"
    assert stats["fps"] > 0 and stats["video_bitrate_bps"] > 0 and stats["audio_level_dbov"] > -40
    assert stats["active_speaker_id"] in (1, 2)
    final = program.stats()
    assert final["destinations"]["file"]["state"] == "stopped"

    out = read_output(mp4)
    assert out["video"] == ("h264", 1280, 720)
    assert out["audio"] == ("aac", 48_000, 2)
    ticks = [t for t, _ in out["frames"]]
    produced = final["frames_out"] + final["dropped_frames"]
    assert 100 <= produced <= 135  # ~4 s at 30 fps (start/stop overhead aside)
    assert len(ticks) == final["frames_out"] and ticks == sorted(ticks)
    # a keyframe on every keyint boundary (30 frames) that was reached, and none in between
    assert out["keyframe_ticks"][0] == 0
    boundaries = [k // 30 for k in out["keyframe_ticks"]]
    assert boundaries == list(range(len(boundaries))) and len(boundaries) == ticks[-1] // 30 + 1

    tiles = {t.user_id: t for t in layout_compute("grid", STAGE, width=1280, height=720)}
    def color_at(frame: np.ndarray, uid: int) -> tuple[int, int, int]:
        t = tiles[uid]
        return yuv_at(frame, 1280, 720, t.x + 24, t.y + 24)
    early = next(f for t, f in out["frames"] if t >= 15)
    for uid, rgb in COLORS.items():
        assert near(color_at(early, uid), rgb_to_yuv(*rgb)), uid
    last = out["frames"][-1][1]  # user 3 froze at 1 s: stale after 2 s more, shown as a name card
    assert near(color_at(last, 1), rgb_to_yuv(*COLORS[1])) and near(color_at(last, 2), rgb_to_yuv(*COLORS[2]))
    assert near(color_at(last, 3), card_color(3), tol=4)
    audio = out["audio_samples"]
    assert len(audio) / 2 / 48_000 == pytest.approx(len(ticks) / 30, abs=0.3)
    rms = float(np.sqrt(np.mean(audio[len(audio) // 4 :] ** 2)))
    assert 20 * math.log10(rms) > -30  # two tones mixed: not silent

    late = read_output(flv)  # joined mid-way: starts at a keyframe, decodable from its first frame
    assert late["video"] == ("h264", 1280, 720) and late["audio"][0] == "aac"
    assert late["keyframe_ticks"][0] == late["first_tick"] and late["first_tick"] % 30 == 0
    assert 30 <= len(late["frames"]) < len(out["frames"])


@pytest.mark.slow
def test_refused_rtmp_destination_retries_as_a_user_error_while_the_file_keeps_going(tmp_path):
    port = free_port()  # nothing listens there
    program = Program(ProgramConfig(keyint_s=1.0), destinations=[
        Destination(id="file", url=str(tmp_path / "program.mkv")),
        Destination(id="youtube", url=f"rtmp://127.0.0.1:{port}/live2/secret-stream-key"),
    ])
    program.set_participants(STAGE[:2])
    feeder = Feeder(program)
    program.start()
    feeder.start()
    try:
        assert wait_for(lambda: program.stats()["destinations"]["youtube"]["reconnects"] >= 1, 10)
        stats = program.stats()
        yt, file = stats["destinations"]["youtube"], stats["destinations"]["file"]
        assert yt["state"] in ("retrying", "connecting") and yt["user_error"] is True
        assert "refused" in yt["error"] and "secret-stream-key" not in yt["error"] + yt["url"]
        assert file["state"] == "live" and file["user_error"] is False and file["error"] is None
        before = file["bytes_out"]
        assert wait_for(lambda: program.stats()["destinations"]["file"]["bytes_out"] > before, 5)
        program.remove_destination("youtube")
        assert "youtube" not in program.stats()["destinations"]
    finally:
        feeder.stop.set()
        program.stop()
    assert program.stats()["frames_out"] > 10
    assert read_output(tmp_path / "program.mkv")["video"] == ("h264", 1280, 720)


def rtmp_listen(url: str, box: dict, ready: threading.Event) -> None:
    """A one-shot RTMP server (FFmpeg's listen mode): collects what one publisher sends."""
    try:
        ready.set()
        with av.open(url, "r", format="flv", options={"listen": "1", "timeout": "20"}) as c:
            box["codecs"] = [s.codec_context.name for s in c.streams]
            frames, keys = 0, []
            for frame in c.decode(video=0):
                keys.append(frame.key_frame)
                frames += 1
                if frames >= box.get("want", 20):
                    break
            box["frames"], box["first_is_key"] = frames, keys[0] if keys else None
    except Exception as exc:  # noqa: BLE001 - the test reads it
        box["error"] = repr(exc)


@pytest.mark.slow
def test_rtmp_destination_reconnects_after_the_server_drops(tmp_path):
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/key"
    first, second = {}, {}
    ready = threading.Event()
    server = threading.Thread(target=rtmp_listen, args=(url, first, ready), daemon=True)
    server.start()
    ready.wait(5)
    time.sleep(0.3)
    program = Program(ProgramConfig(keyint_s=1.0), destinations=[Destination(id="packager", url=url)])
    program.set_participants(STAGE[:2])
    feeder = Feeder(program)
    program.start()
    feeder.start()
    try:
        server.join(15)  # it read 20 frames and hung up
        assert first.get("frames") == 20 and first["first_is_key"] is True, first
        assert set(first["codecs"]) == {"h264", "aac"}
        assert wait_for(lambda: program.stats()["destinations"]["packager"]["state"] == "retrying", 10)
        ready.clear()
        server = threading.Thread(target=rtmp_listen, args=(url, second, ready), daemon=True)
        server.start()
        server.join(25)  # the sink comes back by itself (backoff) with a fresh, valid FLV
        assert second.get("frames") == 20 and second["first_is_key"] is True, second
        status = program.stats()["destinations"]["packager"]
        assert status["reconnects"] >= 1
    finally:
        feeder.stop.set()
        program.stop()


# --- egress glue ---------------------------------------------------------------------------------------------

class SolidTrack(MediaStreamTrack):
    def __init__(self, kind: str, rgb=(200, 50, 50), frames: int | None = None) -> None:
        super().__init__()
        self.kind, self.rgb, self.left, self.n = kind, rgb, frames, 0

    async def recv(self):
        if self.left is not None:
            if self.left <= 0:
                raise MediaStreamError
            self.left -= 1
        await asyncio.sleep(0.02)
        self.n += 1
        if self.kind == "audio":
            return tone(440, self.n * 960)
        frame = solid(self.rgb, 320, 180)
        frame.pts, frame.time_base = self.n, fractions.Fraction(1, 50)
        return frame


class FakeSubscriber:
    def __init__(self, *, fail: bool = False) -> None:
        self.tracks: dict[str, StageTrack] = {}
        self.state: dict = {"stage": []}
        self.closed = asyncio.Event()
        self.fail = fail

    async def run(self) -> None:
        if self.fail:
            await asyncio.sleep(0.1)
            raise StageConnectionError("the class socket refused the service token")
        await self.closed.wait()

    async def close(self) -> None:
        self.closed.set()

    async def leave(self, running: asyncio.Future) -> None:
        await StageSubscriber.leave(self, running)  # the real leaving logic over this socket-less double


def test_stage_participants_follow_the_class_state_and_tracks():
    track = StageTrack("0", 9, "Late", "student", "video", SolidTrack("video"))
    state = {"stage": [
        {"user_id": 1, "name": "Ada", "role": "instructor", "state": "on_stage", "video_muted": True},
        {"user_id": 2, "name": "Ben", "role": "student", "state": "invited"},
    ]}
    assert stage_participants(state, {"0": track}) == [
        Participant(1, "Ada", "instructor", video_muted=True), Participant(9, "Late", "student"),
    ]


async def test_stage_compositor_feeds_the_program_and_follows_the_stage():
    program = Program(ProgramConfig())  # not started: we look at what reaches it
    sub = FakeSubscriber()
    sub.state = {"stage": [{"user_id": 1, "name": "Ada", "role": "instructor", "state": "on_stage"}]}
    sub.tracks = {
        "0": StageTrack("0", 1, "Ada", "instructor", "video", SolidTrack("video")),
        "1": StageTrack("1", 1, "Ada", "instructor", "audio", SolidTrack("audio")),
        "2": StageTrack("2", 2, "Ben", "student", "video", SolidTrack("video", frames=5)),  # ends early
    }
    comp = StageCompositor(None, program, subscriber=sub, poll_s=0.1)
    runner = asyncio.ensure_future(comp.run())
    await asyncio.sleep(0.5)
    assert [p.user_id for p in program._participants] == [1, 2]
    assert {1, 2} <= set(program._latest) and program._audio_inbox[1]
    # Ben leaves the stage and his tracks go; Cleo comes on stage (no tracks yet): within 1 s
    sub.state = {"stage": [{"user_id": 1, "name": "Ada", "role": "instructor"},
                           {"user_id": 3, "name": "Cleo", "role": "student", "state": "on_stage"}]}
    sub.tracks = {k: v for k, v in sub.tracks.items() if v.user_id == 1}
    await asyncio.sleep(0.3)
    assert [(p.user_id, p.name) for p in program._participants] == [(1, "Ada"), (3, "Cleo")]
    assert set(comp._readers) == {"0", "1"}
    await comp.stop()
    await asyncio.wait_for(runner, 5)
    assert sub.closed.is_set() and comp._readers == {}
    program.stop()


async def test_stage_compositor_raises_when_the_class_connection_fails():
    program = Program(ProgramConfig())
    comp = StageCompositor(None, program, subscriber=FakeSubscriber(fail=True), poll_s=0.05)
    with pytest.raises(StageConnectionError):
        await asyncio.wait_for(comp.run(), 5)
    program.stop()
