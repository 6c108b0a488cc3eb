"""The quality ladder with real parts: the compositor's program with a 360p and an audio rung (real PyAV
encodes, in a child process, as the job runs it) publishes one RTMP stream per rung into the real
packager on loopback; the master playlist, every rung's LL-HLS playlist and its segments are checked by
parsing (m3u8) and opening them (PyAV): codec, size, durations, keyframes on the same ticks."""
from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import av
import m3u8
import pytest

from classroom.services.ladder import ladder_parse, ladder_program_renditions, ladder_renditions, ladder_stream_key
from hls_packager.config import PackagerConfig
from hls_packager.server import IngestServer

from .test_hls_ingest import Recorder, RawClient

pytestmark = pytest.mark.once  # pure media end to end: the deployment mode does not matter

ROOT = Path(__file__).resolve().parent.parent
KEY, FOLDER = "ladder-key", "class-9/session-3"
PROGRAM = dict(width=1280, height=720, fps=30, video_bitrate=2_500_000, audio_bitrate=128_000)
RUNGS = ladder_parse("720p,360p,180p:120k:48k,audio", **PROGRAM)  # 180p: a weak link's rung, its own AAC
SEGMENT_S = 2.0


def ladder_publish(port: int, seconds: float) -> None:
    """The compositor job's way (classroom.egress.packager_destinations): one program, one destination
    per rung. In a child process: PyAV holds the GIL while it connects to RTMP."""
    from compositor.config import Destination, ProgramConfig
    from compositor.program import Program
    from tests.test_compositor_program import STAGE, Feeder

    config = ProgramConfig(keyint_s=SEGMENT_S, h264_level=RUNGS[0].h264_level, renditions=ladder_program_renditions(RUNGS))
    destinations = [
        Destination(id=r.name, url=f"rtmp://127.0.0.1:{port}/live/{ladder_stream_key(KEY, r.name)}",
                    rendition="" if i == 0 else r.name)
        for i, r in enumerate(RUNGS)
    ]
    program = Program(config, destinations)
    program.set_participants(STAGE)
    feeder = Feeder(program, freeze_s=60)
    program.start()
    feeder.start()
    time.sleep(seconds)
    feeder.stop.set()
    stats = program.stats()
    program.stop()
    print(json.dumps({"keyframes": stats["keyframes_by_rendition"],
                      "states": {k: v["state"] for k, v in stats["destinations"].items()}}))


async def resolve_key(app: str, key: str) -> str | None:
    return FOLDER if (app, key) == ("live", KEY) else None


def rung_playlist(folder: Path, name: str) -> m3u8.M3U8 | None:
    path = folder / name / "live.m3u8"
    return m3u8.loads(path.read_text()) if path.exists() else None


def first_packets(path: Path) -> dict:
    """Per kind: the first packet's time and whether it is a keyframe; the video size and codecs."""
    with av.open(str(path)) as c:
        out = {"streams": sorted(s.type for s in c.streams)}
        if c.streams.video:
            v = c.streams.video[0]
            out["video"] = (v.codec_context.name, v.codec_context.width, v.codec_context.height)
            packets = [p for p in c.demux(v) if p.pts is not None]
            out["first"] = (round(float(packets[0].pts * v.time_base), 3), packets[0].is_keyframe)
            out["keyframes"] = sum(p.is_keyframe for p in packets)
            out["frames"] = len(packets)
        a = c.streams.audio[0]
        out["audio"] = (a.codec_context.name, a.codec_context.sample_rate)
        c.seek(0)
        out["audio_bytes"] = sum(p.size for p in c.demux(a))
    return out


def sps_profile_level(annex_b: bytes) -> str:
    """profile_idc, constraint flags and level_idc of the SPS in Annex B extradata, as CODECS writes them."""
    start = annex_b.index(b"\x00\x00\x01") + 3
    assert annex_b[start] & 0x1F == 7, "the first NAL unit is the SPS"
    return annex_b[start + 1 : start + 4].hex()


async def test_a_program_with_the_ladder_makes_every_rung_aligned_under_one_master(tmp_path):
    ladder = ladder_renditions(RUNGS)
    events = Recorder()
    server = IngestServer(
        PackagerConfig(port=0, output_dir=tmp_path / "hls", segment_duration_s=SEGMENT_S, ladder=ladder),
        resolve_key=resolve_key, events=events,
    )
    await server.start()
    session = tmp_path / "hls" / FOLDER
    try:
        # A rung the ladder does not have is refused; a key that is not a class's too.
        refused = await (await RawClient(server.port).open()).publish(ladder_stream_key(KEY, "1080p"))
        assert refused == ["NetStream.Publish.BadName"]
        assert ("live", ladder_stream_key(KEY, "1080p"), "unknown_rendition") in events.of("refused")
        assert await (await RawClient(server.port).open()).publish("wrong~360p") == ["NetStream.Publish.BadName"]

        code = f"from tests.test_hls_ladder import ladder_publish; ladder_publish({server.port}, 7.5)"
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, cwd=ROOT, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        # While live, every rung is LL-HLS: parts, INDEPENDENT keyframe parts, a preload hint, blocking reloads.
        seen_parts: set[str] = set()
        while child.returncode is None and len(seen_parts) < len(RUNGS):
            for r in RUNGS:
                pl = rung_playlist(session, r.name)
                if pl is not None and pl.preload_hint is not None and any(s.parts for s in pl.segments):
                    assert pl.server_control.can_block_reload == "YES" and pl.part_inf.part_target
                    seen_parts.add(r.name)
            try:
                await asyncio.wait_for(child.wait(), 0.1)
            except asyncio.TimeoutError:
                pass
        out, err = await asyncio.wait_for(child.communicate(), 90)
        assert child.returncode == 0, err.decode(errors="replace")[-3000:]
        assert seen_parts == {r.name for r in RUNGS}
        await asyncio.sleep(0.5)  # the publishers' ends reach the segmenters
    finally:
        await server.close()

    stats = json.loads(out.decode().strip().splitlines()[-1])
    assert set(stats["states"].values()) == {"live"}  # every rung was on air when the program stopped
    assert stats["keyframes"][""] == stats["keyframes"]["360p"] == stats["keyframes"]["180p"] >= 4  # one per segment

    master = m3u8.loads((session / "live.m3u8").read_text())
    assert [p.uri for p in master.playlists] == [f"{r.name}/live.m3u8" for r in RUNGS]
    assert {e[0] for e in events.of("start")} == {f"{FOLDER}/{r.name}" for r in RUNGS}

    vods = {r.name: m3u8.loads((session / r.name / "vod.m3u8").read_text()) for r in RUNGS}
    for r, variant in zip(RUNGS, master.playlists):
        vod = vods[r.name]
        assert vod.is_endlist and len(vod.segments) >= 3, (r.name, [s.duration for s in vod.segments])
        for segment in vod.segments:
            path = session / r.name / segment.uri
            info = first_packets(path)
            assert info["audio"] == ("aac", 48_000)
            # what the master promised holds: no segment above BANDWIDTH
            assert path.stat().st_size * 8 / segment.duration <= variant.stream_info.bandwidth, (r.name, segment.uri)
            if r.audio_only:
                assert info["streams"] == ["audio"]
            else:
                assert info["video"] == ("h264", r.width, r.height)
                assert info["first"][1] and info["keyframes"] == 1  # starts on its keyframe, the only one
        with av.open(str(session / r.name / vod.segments[0].uri)) as c:
            if not r.audio_only:
                sps = sps_profile_level(c.streams.video[0].codec_context.extradata)
                assert f"avc1.{sps}" == variant.stream_info.codecs.split(",")[0]  # CODECS says what was encoded

    # Aligned: the same segments (count, durations, first keyframe times) in both video rungs, and the
    # audio rung cut within one AAC frame of them, so a player switches at any segment or part start.
    top, low, lowest, audio = (vods[r.name].segments for r in RUNGS)
    assert len(top) == len(low) == len(lowest) == len(audio)
    for a, b, c in zip(top, low, lowest):
        assert b.duration == pytest.approx(a.duration, abs=0.002) and c.duration == pytest.approx(a.duration, abs=0.002)
        first = first_packets(session / "720p" / a.uri)["first"]
        assert first == first_packets(session / "360p" / b.uri)["first"] == first_packets(session / "180p" / c.uri)["first"]
    # the 180p rung carries its own 48 kbit/s AAC of the same mix, the others the program's 128 kbit/s
    shared = first_packets(session / "360p" / low[1].uri)["audio_bytes"]
    own = first_packets(session / "180p" / lowest[1].uri)["audio_bytes"]
    assert own < 0.5 * shared, (own, shared)
    for a, c in zip(top[:-1], audio[:-1]):
        assert a.duration == pytest.approx(c.duration, abs=0.025)  # one AAC frame is 21 ms
