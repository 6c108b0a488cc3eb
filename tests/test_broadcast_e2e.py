"""The broadcast end to end, every part real: Chromium publishers on stage -> the compositor task in
a real Celery worker (media queue) -> RTMP -> the packager process -> HLS -> a viewer's hls.js."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import av
import m3u8
import numpy as np
import pytest

from .conftest import (
    HLS_SEGMENT_S as SEGMENT_S,
    Stack,
    bring_on_stage,
    free_port,
    login_page,
    spawn,
    stage_start,
    stop_processes,
    wait_for_port,
    wait_until,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def media_folder(folder: Path) -> Path:
    """The program's own segments: the top rung's folder under a ladder's master playlist."""
    from classroom.services.ingest import program_media_folder

    return program_media_folder(folder) or folder / "no-rung-yet"


def playlist(folder: Path) -> m3u8.M3U8 | None:
    path = media_folder(folder) / "live.m3u8"
    return m3u8.loads(path.read_text()) if path.exists() else None


def segments_after(stack: Stack, class_id: int, count: int, *, after: int = -1) -> list[Any]:
    """Wait for `count` segments whose media sequence number is above `after`."""

    def ready():
        folder = stack.folder(class_id)
        pl = playlist(folder) if folder else None
        if pl is None:
            return None
        # (the open segment of a low-latency playlist, parts only, has no URI yet)
        numbered = [(pl.media_sequence + i, s) for i, s in enumerate(pl.segments) if s.uri]
        fresh = [(n, s) for n, s in numbered if n > after]
        return fresh if len(fresh) >= count else None

    return wait_until(ready, timeout=120, what=f"{count} new HLS segments", logs=stack.logs)


def probe_segment(path: Path) -> dict[str, Any]:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        info = {
            "vcodec": video.codec_context.name, "size": (video.codec_context.width, video.codec_context.height),
            "acodec": audio.codec_context.name, "rate": audio.codec_context.sample_rate,
        }
        frames, samples, last = 0, [], None
        for frame in container.decode(video=0, audio=0):
            if isinstance(frame, av.VideoFrame):
                frames += 1
                last = frame
            else:
                samples.append(frame.to_ndarray().astype(np.float32).ravel())
        info["frames"] = frames
        info["last_frame"] = last.to_ndarray(format="gray")  # luma, enough to see tiles
        pcm = np.concatenate(samples) if samples else np.zeros(1)
        info["audio_rms"] = float(np.sqrt(np.mean(np.square(pcm))))
    return info


def tiles_with_content(gray: np.ndarray, count: int) -> list[float]:
    """The luma spread inside each grid tile the layout puts on screen for `count` participants."""
    from compositor.config import Participant
    from compositor.layout import layout_compute

    people = [Participant(i + 1, f"P{i}", "student") for i in range(count)]
    tiles = layout_compute("grid", people, width=gray.shape[1], height=gray.shape[0])
    return [float(gray[t.y + 8 : t.y + t.h - 8, t.x + 8 : t.x + t.w - 8].std()) for t in tiles]


def test_broadcast_from_stage_to_viewers(stack, browser):
    from classroom.models import Broadcast
    from classroom.services.demo import demo_seed

    demo = demo_seed()
    cid = demo["class_id"]
    ada, (ben,) = stage_start(browser, stack.server, demo, "ben")
    cleo = login_page(browser, stack.server, "cleo", "classcast-demo")

    # Go live from the console; the panel says when the program is on air.
    ada.click("#go-live")
    ada.wait_for_selector("#bc-status.live", timeout=90_000)
    fresh = segments_after(stack, cid, 3)

    # The master playlist names the ladder (the default 720p, 360p, 180p, audio), and the 360p rung is there.
    session = stack.folder(cid)
    master = m3u8.loads((session / "live.m3u8").read_text())
    assert [p.uri for p in master.playlists] == ["720p/live.m3u8", "360p/live.m3u8", "180p/live.m3u8", "audio/live.m3u8"]

    def low_segments():
        path = session / "360p" / "live.m3u8"
        return [s for s in m3u8.loads(path.read_text()).segments if s.uri] or None if path.exists() else None

    low = wait_until(low_segments, timeout=30, what="a 360p segment", logs=stack.logs)
    assert probe_segment(session / "360p" / low[-1].uri)["size"] == (640, 360)

    # The program's playlist parses; segments are ~2 s; the stream is H.264 1280x720 + AAC 48 kHz.
    folder = media_folder(session)
    pl = playlist(folder)
    assert pl.target_duration and pl.target_duration <= 3, [s.duration for s in pl.segments]
    assert pl.program_date_time is not None or any(s.program_date_time for s in pl.segments)
    for _, segment in fresh[:-1]:
        assert abs(segment.duration - SEGMENT_S) <= 0.1 * SEGMENT_S, [s.duration for _, s in fresh]
    info = probe_segment(folder / fresh[-1][1].uri)
    assert info["vcodec"] == "h264" and info["size"] == (1280, 720)
    assert info["acodec"] == "aac" and info["rate"] == 48000
    assert info["frames"] >= 0.9 * 30 * fresh[-1][1].duration * 0.5  # a loaded 2-core box may drop some
    assert info["audio_rms"] > 1e-3, "the program's audio is silent"
    spreads = tiles_with_content(info["last_frame"], 2)
    assert all(s > 3 for s in spreads), f"expected 2 tiles with camera content, luma spread {spreads}"

    # A viewer's page plays it with hls.js.
    cleo.goto(demo["urls"]["watch"])
    cleo.wait_for_selector("#player-status.live", timeout=30_000)
    start = wait_until(lambda: cleo.evaluate("window.classcast.player && window.classcast.player.video.currentTime") or None,
                       timeout=60, what="the viewer's player to start", logs=stack.logs)
    wait_until(lambda: cleo.evaluate("window.classcast.player.video.currentTime") >= start + 5,
               timeout=60, what="5 s of playback")
    # hls.js has the video rungs as its levels (it leaves the audio-only variant out), plays one of them
    # in low-latency mode (its playlist lists parts) and the player bar says which.
    assert sorted(cleo.evaluate("window.classcast.player.hls.levels.map((l) => l.height)")) == [180, 360, 720]
    assert cleo.evaluate("(() => { const h = window.classcast.player.hls;"
                         " const d = h.levels[h.currentLevel].details; return !!(d && d.partList && d.partList.length); })()")
    quality = wait_until(lambda: cleo.evaluate("document.getElementById('player-quality').textContent") or None,
                         timeout=10, what="the quality label")
    assert quality in ("180p", "360p", "720p")

    # The stage changes mid-broadcast: ben leaves (one tile), comes back (two); output never stops.
    last_seq = fresh[-1][0]
    ben.click("#leave-stage")
    ada.wait_for_selector('#stage-grid .tile:not(.me)', state="detached")
    after_leave = segments_after(stack, cid, 2, after=last_seq)
    gray = probe_segment(folder / after_leave[-1][1].uri)["last_frame"]
    assert tiles_with_content(gray, 1)[0] > 3
    bring_on_stage(ada, ben)
    after_rejoin = segments_after(stack, cid, 3, after=after_leave[-1][0])
    gray = probe_segment(folder / after_rejoin[-1][1].uri)["last_frame"]
    assert all(s > 3 for s in tiles_with_content(gray, 2))
    assert "#EXT-X-ENDLIST" not in (folder / "live.m3u8").read_text()

    # Kill the compositor's worker process: the broadcast comes back by itself, the playlist stays valid.
    broadcast = Broadcast.objects.get()
    pid = int(broadcast.worker.rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: Broadcast.objects.filter(pk=broadcast.pk, attempts__gte=2, status="live").exists(),
               timeout=120, what="the broadcast to come back", logs=stack.logs)
    resumed = segments_after(stack, cid, 2, after=after_rejoin[-1][0])
    text = (folder / "live.m3u8").read_text()
    assert "#EXT-X-DISCONTINUITY" in text
    assert m3u8.loads(text).segments  # still parses
    assert probe_segment(folder / resumed[-1][1].uri)["size"] == (1280, 720)

    # Stop: the job ends on its flag; the playlist is finished and a VOD playlist is kept.
    ada.click("#stop-live")
    wait_until(lambda: Broadcast.objects.filter(pk=broadcast.pk, status="stopped").exists(),
               timeout=60, what="the job to stop", logs=stack.logs)
    wait_until(lambda: (folder / "vod.m3u8").exists(), timeout=30, what="the VOD playlist", logs=stack.logs)
    vod = m3u8.loads((folder / "vod.m3u8").read_text())
    assert vod.is_endlist and len(vod.segments) >= 10
    for ctx in (ada.context, ben.context, cleo.context):
        ctx.close()


@pytest.fixture
def packager(transactional_db, tmp_path, settings) -> Iterator[dict[str, Any]]:
    """The packager as `make run` starts it (`manage.py hls_packager`), keys resolved from the database."""
    from .conftest import server_env

    port = free_port()
    settings.CLASSCAST_HLS_ROOT = tmp_path / "hls"
    env = server_env(CLASSCAST_RTMP_PORT=str(port), CLASSCAST_HLS_ROOT=str(tmp_path / "hls"))
    proc = spawn("packager", [sys.executable, "manage.py", "hls_packager"], env, tmp_path)
    try:
        wait_for_port(port, proc=proc)
        yield {"port": port, "log": tmp_path / "packager.log"}
    finally:
        stop_processes([proc])


def ffmpeg_publish(url: str, seconds: float) -> subprocess.CompletedProcess:
    import imageio_ffmpeg

    return subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re",
         "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
         "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", "60",
         "-c:a", "aac", "-ar", "48000", "-f", "flv", url],
        capture_output=True, timeout=seconds + 60,
    )


def test_obs_style_publisher_with_the_class_key(packager, fast_passwords):
    from django.test import Client

    from classroom.models import Classroom
    from classroom.services.demo import demo_seed
    from classroom.services.sessions import session_start
    from classroom.selectors import actor_get
    from django.contrib.auth import get_user_model

    demo = demo_seed()
    cid = demo["class_id"]
    ada = get_user_model().objects.get(username="ada")
    classroom = Classroom.objects.get(pk=cid)
    base = f"rtmp://127.0.0.1:{packager['port']}/live"

    # Not live yet: nothing to publish into.
    assert ffmpeg_publish(f"{base}/{classroom.stream_key}", 2).returncode != 0
    session_start(classroom_id=cid, actor=actor_get(user=ada, classroom_id=cid))
    assert ffmpeg_publish(f"{base}/not-the-key", 2).returncode != 0

    done = ffmpeg_publish(f"{base}/{classroom.stream_key}", 7)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    client = Client()
    client.force_login(get_user_model().objects.get(username="ben"))
    response = client.get(f"/hls/classes/{cid}/live.m3u8")
    assert response.status_code == 200
    pl = m3u8.loads(response.content.decode())
    assert len(pl.segments) >= 3 and pl.is_endlist
    segment = client.get(f"/hls/classes/{cid}/{pl.segments[0].uri}")
    assert segment.status_code == 200 and segment["Content-Type"] == "video/mp2t"
    log = packager["log"].read_text()
    assert "unknown_key" in log or "refused" in log
