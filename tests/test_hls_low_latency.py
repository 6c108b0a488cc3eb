"""Low-latency HLS: the playlist (golden, parsed with m3u8 and checked against RFC 8216bis), parts cut
by the real packager from a real ffmpeg publisher (bytes, durations, keyframes), blocking playlist
reloads and preload-hinted parts held by the async origin view, and hls.js in Chromium playing it."""
from __future__ import annotations

import asyncio
import gzip
import io
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import av
import m3u8
import pytest
from django.test import AsyncClient

from hls_packager.config import PackagerConfig
from hls_packager.playlist import (
    BlockingRequestError,
    LiveEdge,
    PartInfo,
    SegmentInfo,
    blocking_request_check,
    blocking_request_ready,
    live_playlist,
    part_name,
    playlist_position,
)
from hls_packager.server import IngestServer
from hls_packager.storage import write_atomic

from .conftest import free_port, login_page, spawn, start_live_server, stop_processes, wait_for_port, wait_until
from .test_hls_ingest import FFMPEG, publish_ffmpeg

GOLDEN = Path(__file__).parent / "golden" / "hls"
T0 = datetime(2026, 11, 21, 9, 0, 0, tzinfo=timezone.utc)
PART_TARGET = 0.334


def _parts(index: int, count: int, last_s: float = 0.33) -> tuple[PartInfo, ...]:
    return tuple(PartInfo(part_name(index, k), PART_TARGET if k < count - 1 else last_s, k == 0) for k in range(count))


def sample_playlist(open_parts: int = 2, *, ended: bool = False) -> str:
    segments = [SegmentInfo(i, 10 + i, 2.0, T0 + timedelta(seconds=2 * i), False, _parts(i, 6)) for i in range(5)]
    edge = LiveEdge(
        part_target_s=PART_TARGET, parts=_parts(5, open_parts, PART_TARGET), hint=part_name(5, open_parts),
        program_date_time=T0 + timedelta(seconds=10),
    )
    return live_playlist(segments, window=4, configured_s=2.0, ended=ended, edge=edge)


def assert_ll_spec(pl: m3u8.M3U8) -> None:
    """What RFC 8216bis asks of a low-latency media playlist that we serve."""
    part_target = pl.part_inf.part_target
    assert pl.server_control.can_block_reload == "YES"
    assert pl.server_control.part_hold_back >= 3 * part_target - 1e-6  # SHOULD be >= 3 part targets
    assert pl.server_control.hold_back >= 3 * pl.target_duration
    parted = [s for s in pl.segments if s.parts]
    assert parted, "no parts listed"
    for segment in parted:
        assert segment.parts[0].independent == "YES", "every segment starts on a keyframe"
        for k, part in enumerate(segment.parts):
            assert part.duration <= part_target + 1e-6, (part.uri, part.duration)
            final = k == len(segment.parts) - 1 and segment.uri is not None
            if not part.independent and not final:
                assert part.duration >= 0.85 * part_target, (part.uri, part.duration)
        if segment.uri:
            assert abs(sum(p.duration for p in segment.parts) - segment.duration) < 0.01
    # Parts only near the live edge: no more than 3 target durations of completed segments keep theirs.
    complete_with_parts = [s for s in parted if s.uri]
    assert sum(s.duration for s in complete_with_parts) <= 3 * pl.target_duration + 0.01
    # The hint names the part after the last one listed.
    assert pl.preload_hint.hint_type == "PART" and pl.preload_hint.uri


# --- pure: the playlist text and the blocking rules ------------------------------------------------------

def test_low_latency_playlist_golden_and_spec():
    text = sample_playlist()
    assert text == (GOLDEN / "ll_live.m3u8").read_text()
    pl = m3u8.loads(text)
    assert pl.version == 6 and pl.part_inf.part_target == PART_TARGET
    assert_ll_spec(pl)
    assert [s.uri for s in pl.segments] == ["seg-1.ts", "seg-2.ts", "seg-3.ts", "seg-4.ts", None]
    assert [len(s.parts) for s in pl.segments] == [0, 6, 6, 6, 2]
    assert pl.preload_hint.uri == "seg-5.part2.ts"
    # A player that knows nothing of parts sees the same whole segments, and a finished stream has no parts.
    plain = [line for line in text.splitlines() if not line.startswith(("#EXT-X-PART", "#EXT-X-PRELOAD", "#EXT-X-SERVER"))]
    assert [s.uri for s in m3u8.loads("\n".join(plain)).segments][:4] == ["seg-1.ts", "seg-2.ts", "seg-3.ts", "seg-4.ts"]
    ended = sample_playlist(ended=True)
    assert "#EXT-X-PART" not in ended and "PRELOAD-HINT" not in ended and m3u8.loads(ended).is_endlist


def test_playlist_position_is_read_back_from_the_text():
    position = playlist_position(sample_playlist())
    assert (position.last_msn, position.last_part, position.open_msn) == (14, (15, 1), 15)
    assert (position.hint, position.part_target_s, position.target_s, position.ended) == ("seg-5.part2.ts", PART_TARGET, 2, False)
    fresh = playlist_position(sample_playlist(open_parts=0))
    assert fresh.last_part == (14, 5) and fresh.hint == "seg-5.part0.ts"
    assert playlist_position(sample_playlist(ended=True)).ended


@pytest.mark.parametrize(
    "msn, part, ready",
    [
        (14, None, True),  # a complete segment
        (15, None, False),  # the open segment is not complete
        (15, 1, True), (15, 0, True), (14, 5, True),  # parts listed
        (15, 2, False), (15, 5, False), (16, 0, False),  # not yet
        (14, 9, True),  # past the last part of a complete segment: the next part (15, 0) exists
    ],
)
def test_blocking_reload_is_ready_once_the_part_or_a_later_one_is_listed(msn, part, ready):
    assert blocking_request_ready(playlist_position(sample_playlist()), msn=msn, part=part) is ready


def test_an_ended_playlist_answers_every_blocking_reload():
    assert blocking_request_ready(playlist_position(sample_playlist(ended=True)), msn=99, part=3)


@pytest.mark.parametrize("msn, part", [(18, None), (18, 0), (15, 11), (16, 9), (-1, None), (15, -1)])
def test_blocking_reloads_too_far_ahead_are_bad_requests(msn, part):
    with pytest.raises(BlockingRequestError):
        blocking_request_check(playlist_position(sample_playlist()), msn=msn, part=part)


@pytest.mark.parametrize("msn, part", [(17, None), (17, 0), (15, 2), (15, 9), (16, 7), (3, 0)])
def test_blocking_reloads_within_the_limits_are_accepted(msn, part):
    blocking_request_check(playlist_position(sample_playlist()), msn=msn, part=part)


# --- the packager cutting parts from a real publisher -----------------------------------------------------

async def test_packager_cuts_parts_that_are_slices_of_their_segment(tmp_path):
    async def resolve_key(app: str, key: str) -> str | None:
        return "class-1/session-1" if key == "k" else None

    server = IngestServer(PackagerConfig(port=0, output_dir=tmp_path, part_target_s=PART_TARGET), resolve_key=resolve_key)
    await server.start()
    folder = tmp_path / "class-1" / "session-1"
    publish = asyncio.create_task(publish_ffmpeg(server.port, "k", 7))
    captured: dict[str, bytes] = {}
    seen_lists: list[m3u8.M3U8] = []
    plain_client: subprocess.CompletedProcess | None = None
    try:
        while not publish.done():
            await asyncio.sleep(0.03)
            path = folder / "live.m3u8"
            if not path.exists():
                continue
            pl = m3u8.loads(path.read_text())
            if pl.is_endlist:
                break
            seen_lists.append(pl)
            for segment in pl.segments:
                for part in segment.parts:
                    if part.uri not in captured:
                        # A listed part exists at the moment it is listed (it is written first).
                        captured[part.uri] = (folder / part.uri).read_bytes()
            if plain_client is None and len(pl.segments) >= 2:
                # A player that knows nothing of LL-HLS (FFmpeg's HLS demuxer) plays the same playlist.
                plain_client = await asyncio.to_thread(
                    subprocess.run, [FFMPEG, "-hide_banner", "-loglevel", "error", "-i", str(path), "-frames:v", "30", "-f", "null", "-"],
                    capture_output=True, timeout=60,
                )
        code, err = await publish
        assert code == 0, err
    finally:
        await server.close()
    assert plain_client is not None and plain_client.returncode == 0, plain_client and plain_client.stderr[-2000:]
    for pl in seen_lists:
        assert_ll_spec(pl)
    final = m3u8.loads((folder / "live.m3u8").read_text())
    assert final.is_endlist and not any(s.parts for s in final.segments)
    assert not list(folder.glob("*.part*.ts")), "part files outlive the stream"
    # Every part seen was a slice of its segment: the segment is exactly its parts, in order.
    by_segment: dict[str, list[Any]] = {}
    for pl in seen_lists:
        for segment in pl.segments:
            if segment.uri and segment.parts:
                by_segment[segment.uri] = segment.parts
    assert len(by_segment) >= 2
    for uri, parts in by_segment.items():
        assert b"".join(captured[p.uri] for p in parts) == (folder / uri).read_bytes(), uri
        assert len(parts) >= 5  # ~2 s in ~1/3 s parts
    # An independent part decodes on its own: a keyframe first.
    independent = [p for parts in by_segment.values() for p in parts if p.independent == "YES"]
    for part in independent:
        with av.open(io.BytesIO(captured[part.uri]), format="mpegts") as container:
            first = next(p for p in container.demux(video=0) if p.dts is not None)
            assert first.is_keyframe, part.uri
        with av.open(io.BytesIO(captured[part.uri]), format="mpegts") as container:
            assert sum(1 for _ in container.decode(video=0)) == 10  # 1/3 s of 30 fps, all decodable
    # Little MPEG-TS overhead (a weak link's rung, issue 12), and still every part has the tables a demuxer
    # starts from: PAT+PMT about once per part, not ten times a second; AAC frames grouped, ~0.1 s a PES.
    for uri, parts in by_segment.items():
        assert all(ts_tables(captured[p.uri]) >= 1 for p in parts), uri
        assert ts_tables((folder / uri).read_bytes()) <= len(parts) + 2, uri
        audio_pes, audio_frames = ts_audio_pes((folder / uri).read_bytes())
        assert audio_frames >= 4 * audio_pes, (uri, audio_pes, audio_frames)


def ts_packets(data: bytes) -> Iterator[tuple[int, bool, bytes]]:
    """(PID, payload unit start, payload) of each 188-byte packet."""
    for at in range(0, len(data) - 187, 188):
        packet = data[at : at + 188]
        assert packet[0] == 0x47, at
        control = packet[3] >> 4 & 3
        start = 5 + packet[4] if control & 2 else 4
        yield (packet[1] & 0x1F) << 8 | packet[2], bool(packet[1] & 0x40), packet[start:] if control & 1 else b""


def ts_tables(data: bytes) -> int:
    """How many PATs the bytes carry (ffmpeg writes the PMT right after each)."""
    return sum(1 for pid, unit_start, _ in ts_packets(data) if pid == 0 and unit_start)


def ts_audio_pes(data: bytes) -> tuple[int, int]:
    """(PES packets, ADTS frames) of the audio stream (the PES with stream id 0xC0)."""
    audio = next(pid for pid, unit_start, payload in ts_packets(data) if unit_start and payload[:4] == b"\0\0\1\xc0")
    pes, es = 0, bytearray()
    for pid, unit_start, payload in ts_packets(data):
        if pid == audio:
            pes += unit_start
            es += payload[9 + payload[8] :] if unit_start else payload  # past the PES header
    frames, at = 0, 0
    while at + 7 <= len(es) and es[at] == 0xFF and es[at + 1] & 0xF0 == 0xF0:  # ADTS sync word
        frames += 1
        at += (es[at + 3] & 3) << 11 | es[at + 4] << 3 | es[at + 5] >> 5  # frame length, header included
    return pes, frames


# --- the origin view: blocking reloads and held parts -------------------------------------------------------

@pytest.fixture
def ll_folder(transactional_db, settings, tmp_path) -> dict[str, Any]:
    from django.contrib.auth import get_user_model

    from classroom.models import Classroom
    from classroom.selectors import actor_get
    from classroom.services.demo import demo_seed
    from classroom.services.ingest import session_folder
    from classroom.services.sessions import session_start

    settings.CLASSCAST_HLS_ROOT = tmp_path
    demo = demo_seed()
    cid = demo["class_id"]
    Classroom.objects.filter(pk=cid).update(is_public=True)
    ada = get_user_model().objects.get(username="ada")
    session = session_start(classroom_id=cid, actor=actor_get(user=ada, classroom_id=cid))
    folder = tmp_path / session_folder(classroom_id=cid, session_id=session.pk)
    folder.mkdir(parents=True)
    write_atomic(folder / "live.m3u8", sample_playlist())
    return {"url": f"/hls/classes/{cid}/", "folder": folder}


async def test_blocking_reload_is_held_until_the_part_is_listed_without_a_thread_per_viewer(ll_folder):
    client, url = AsyncClient(), ll_folder["url"] + "live.m3u8"
    ready = await client.get(url, {"_HLS_msn": "15", "_HLS_part": "1"})
    assert ready.status_code == 200 and ready["Cache-Control"].startswith("public, max-age=")
    threads_before = threading.active_count()
    waiting = [asyncio.create_task(client.get(url, {"_HLS_msn": "15", "_HLS_part": "2"})) for _ in range(50)]
    await asyncio.sleep(0.5)
    assert not any(task.done() for task in waiting), "a blocking reload answered before the part existed"
    # 50 held requests are 50 suspended coroutines; a handful of executor threads at most.
    assert threading.active_count() <= threads_before + 8
    write_atomic(ll_folder["folder"] / "live.m3u8", sample_playlist(open_parts=3))
    responses = await asyncio.wait_for(asyncio.gather(*waiting), timeout=3)  # far inside the 6 s hold
    for response in responses:
        assert response.status_code == 200
        pl = m3u8.loads(response.content.decode())
        assert pl.segments[-1].parts[-1].uri == "seg-5.part2.ts" and pl.preload_hint.uri == "seg-5.part3.ts"


async def test_blocking_reload_for_a_whole_segment_and_after_the_end(ll_folder):
    client, url = AsyncClient(), ll_folder["url"] + "live.m3u8"
    task = asyncio.create_task(client.get(url, {"_HLS_msn": "15"}))
    await asyncio.sleep(0.3)
    assert not task.done()
    write_atomic(ll_folder["folder"] / "live.m3u8", sample_playlist(ended=True))  # the publisher stopped
    response = await asyncio.wait_for(task, timeout=3)
    assert response.status_code == 200 and m3u8.loads(response.content.decode()).is_endlist


async def test_a_blocking_reload_that_is_never_satisfied_gets_503(ll_folder, settings):
    settings.CLASSCAST_HLS_SEGMENT_S = 0.2  # hold for 3 target durations: 0.6 s here
    response = await AsyncClient().get(ll_folder["url"] + "live.m3u8", {"_HLS_msn": "16", "_HLS_part": "0"})
    assert response.status_code == 503 and response["Retry-After"] == "1"


@pytest.mark.parametrize(
    "query",
    [{"_HLS_msn": "99"}, {"_HLS_part": "1"}, {"_HLS_msn": "x"}, {"_HLS_msn": "15", "_HLS_part": "-1"},
     {"_HLS_msn": "15", "_HLS_part": "40"}, {"_HLS_msn": "1" * 30}],
)
async def test_malformed_or_far_ahead_blocking_reloads_are_bad_requests(ll_folder, query):
    response = await AsyncClient().get(ll_folder["url"] + "live.m3u8", query)
    assert response.status_code == 400


async def test_the_hinted_part_is_held_until_written_and_others_are_404_at_once(ll_folder):
    client, folder = AsyncClient(), ll_folder["folder"]
    missing = await asyncio.wait_for(client.get(ll_folder["url"] + "seg-5.part7.ts"), timeout=2)
    assert missing.status_code == 404
    task = asyncio.create_task(client.get(ll_folder["url"] + "seg-5.part2.ts"))
    await asyncio.sleep(0.3)
    assert not task.done()
    write_atomic(folder / "seg-5.part2.ts", b"\x47" * 188)
    write_atomic(folder / "live.m3u8", sample_playlist(open_parts=3))
    response = await asyncio.wait_for(task, timeout=3)
    assert response.status_code == 200 and response.content == b"\x47" * 188
    assert response["Cache-Control"] == "public, max-age=31536000, immutable"


def test_tokens_reach_part_and_hint_uris():
    from classroom.hls_views import playlist_with_token

    pl = m3u8.loads(playlist_with_token(sample_playlist(), "T"))
    assert pl.segments[-1].parts[0].uri == "seg-5.part0.ts?token=T"
    assert pl.preload_hint.uri == "seg-5.part2.ts?token=T"
    assert pl.segments[1].uri == "seg-2.ts?token=T"


# --- hls.js in Chromium, low-latency mode, on the viewer page ---------------------------------------------

@pytest.fixture
def origin_and_packager(transactional_db, tmp_path) -> Iterator[dict[str, Any]]:
    """The web process and the packager as `make run` starts them, sharing one HLS folder."""
    from .conftest import server_env

    hls_root = tmp_path / "hls"
    rtmp_port = free_port()
    env = server_env(CLASSCAST_RTMP_PORT=str(rtmp_port), CLASSCAST_HLS_ROOT=str(hls_root))
    packager = spawn("packager", [sys.executable, "manage.py", "hls_packager"], env, tmp_path)
    server = start_live_server(tmp_path, CLASSCAST_HLS_ROOT=str(hls_root))
    try:
        wait_for_port(rtmp_port, proc=packager)
        yield {"server": server, "rtmp_port": rtmp_port, "hls_root": hls_root}
    finally:
        stop_processes(server.procs + [packager])


@pytest.fixture
def live_class(origin_and_packager) -> dict[str, Any]:
    """The demo class, live (set up before Playwright starts its event loop in this thread)."""
    from django.contrib.auth import get_user_model

    from classroom.models import Classroom
    from classroom.selectors import actor_get
    from classroom.services.demo import demo_seed
    from classroom.services.sessions import session_start

    demo = demo_seed()
    cid = demo["class_id"]
    ada = get_user_model().objects.get(username="ada")
    session_start(classroom_id=cid, actor=actor_get(user=ada, classroom_id=cid))
    return {**demo, "stream_key": Classroom.objects.get(pk=cid).stream_key}


@pytest.mark.browser
def test_hls_js_plays_the_low_latency_stream_in_the_viewer_page(origin_and_packager, live_class, browser):
    demo, key = live_class, live_class["stream_key"]
    publisher = subprocess.Popen(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-re",
         "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
         "-t", "120", "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", "60",
         "-c:a", "aac", "-ar", "48000", "-f", "flv", f"rtmp://127.0.0.1:{origin_and_packager['rtmp_port']}/live/{key}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    server = origin_and_packager["server"]
    try:
        viewer = login_page(browser, server, "cleo", "classcast-demo", permissions=[])
        viewer.goto(demo["urls"]["watch"])
        viewer.wait_for_selector("#player-status.live", timeout=60_000)
        wait_until(lambda: viewer.evaluate("!!(window.classcast.player && window.classcast.player.hls)"),
                   timeout=30, what="hls.js to start", logs=server.logs)
        viewer.evaluate("""() => {
            const hls = window.classcast.player.hls;
            window.partsLoaded = 0;
            hls.on(window.Hls.Events.FRAG_LOADED, (_, data) => { if (data.part) window.partsLoaded += 1; });
        }""")
        wait_until(lambda: viewer.evaluate("window.partsLoaded") >= 6, timeout=60, what="hls.js to load parts",
                   logs=server.logs)
        details = viewer.evaluate("""() => {
            const hls = window.classcast.player.hls, d = hls.levels[hls.currentLevel >= 0 ? hls.currentLevel : 0].details;
            return {lowLatency: hls.config.lowLatencyMode, canBlock: d.canBlockReload, partTarget: d.partTarget,
                    partList: d.partList ? d.partList.length : 0, time: window.classcast.player.video.currentTime};
        }""")
        assert details["lowLatency"] and details["canBlock"] and details["partList"] > 0, details
        assert abs(details["partTarget"] - PART_TARGET) < 1e-6
        start = details["time"]
        wait_until(lambda: viewer.evaluate("window.classcast.player.video.currentTime") >= start + 3,
                   timeout=60, what="3 s of low-latency playback", logs=server.logs)
        frames = viewer.evaluate("window.classcast.player.video.getVideoPlaybackQuality().totalVideoFrames")
        assert frames > 30
        viewer.context.close()
    finally:
        publisher.kill()
        publisher.wait()


# --- the fast path in front of Django ------------------------------------------------------------------------

class CountingApp:
    """Django's ASGI app, counting the requests that reach it."""

    def __init__(self) -> None:
        from django.core.asgi import get_asgi_application

        self.app, self.calls = get_asgi_application(), 0

    async def __call__(self, scope, receive, send):
        self.calls += 1
        await self.app(scope, receive, send)


async def asgi_get(app, path: str, query: str = "", *, host: str = "testserver", method: str = "GET",
                   cookie: str = "", accept_encoding: str = "") -> tuple[int, dict[str, str], bytes]:
    from asgiref.testing import ApplicationCommunicator

    headers = [(b"host", host.encode())] + ([(b"cookie", cookie.encode())] if cookie else [])
    headers += [(b"accept-encoding", accept_encoding.encode())] if accept_encoding else []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await communicator.receive_output(10)
    body = b""
    while True:
        message = await communicator.receive_output(10)
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}, body


async def test_remembered_viewers_are_answered_in_front_of_django_with_the_same_answers(ll_folder):
    from classroom.hls_views import hls_fast_path

    django_app = CountingApp()
    app = hls_fast_path(django_app)
    url = ll_folder["url"] + "live.m3u8"
    first = await asgi_get(app, url)
    assert first[0] == 200 and django_app.calls == 1  # decided by Django, and remembered
    second = await asgi_get(app, url)
    assert second[0] == 200 and django_app.calls == 1 and second[2] == first[2]
    for header in ("content-type", "cache-control", "access-control-allow-origin"):
        assert second[1][header] == first[1][header]
    # gzip when the player accepts it, as Django's path answers (hls_encoding), with the right length.
    packed = await asgi_get(app, url, accept_encoding="gzip, deflate")
    assert packed[0] == 200 and packed[1]["content-encoding"] == "gzip" and packed[1]["vary"] == "Accept-Encoding"
    assert gzip.decompress(packed[2]) == first[2] and int(packed[1]["content-length"]) == len(packed[2])
    assert django_app.calls == 1
    # Blocking reloads, held parts and bad requests behave the same on the fast path.
    held = asyncio.create_task(asgi_get(app, url, "_HLS_msn=15&_HLS_part=2"))
    await asyncio.sleep(0.3)
    assert not held.done()
    write_atomic(ll_folder["folder"] / "live.m3u8", sample_playlist(open_parts=3))
    status, headers, body = await asyncio.wait_for(held, timeout=3)
    assert status == 200 and m3u8.loads(body.decode()).preload_hint.uri == "seg-5.part3.ts"
    assert (await asgi_get(app, url, "_HLS_msn=99"))[0] == 400
    assert (await asgi_get(app, ll_folder["url"] + "..%2Flive.m3u8"))[0] == 404
    assert django_app.calls == 1
    # What the fast path does not know goes to Django: other hosts, other methods.
    assert (await asgi_get(app, url, host="evil.example"))[0] == 400
    assert (await asgi_get(app, url, method="POST"))[0] in (403, 405)  # CSRF, or GET only
    assert django_app.calls == 3


async def test_refused_viewers_are_never_remembered(ll_folder):
    from asgiref.sync import sync_to_async

    from classroom.hls_views import hls_fast_path
    from classroom.models import Classroom

    await sync_to_async(Classroom.objects.update)(is_public=False)
    django_app = CountingApp()
    app = hls_fast_path(django_app)
    url = ll_folder["url"] + "live.m3u8"
    for _ in range(2):
        assert (await asgi_get(app, url))[0] == 404  # a non-member learns nothing, not even that it exists
        assert (await asgi_get(app, url, "token=forged"))[0] == 404
    assert django_app.calls == 4
