"""Recording end to end, every part real: two Chromium publishers on stage and the broadcast -> the
recorder job in a real Celery worker (media queue) writing each track -> post-processing on the default
queue -> published files in storage, opened here with PyAV. Then the recorder's worker is killed
mid-session: what was written plays, the recording resumes in new files, and it says it is incomplete."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import av
import pytest

from recorder.manifest import manifest_loads

from .conftest import Stack, bring_on_stage, stage_start, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def store_path(recording, name: str) -> Path:
    from django.core.files.storage import storages

    return Path(storages["recordings"].path(f"{recording.folder}/{name}"))


def open_media(path: Path) -> dict:
    """Codec, container duration and decoded frame count, as a player would see the file."""
    with av.open(str(path)) as container:
        stream = (container.streams.video or container.streams.audio)[0]
        frames = sum(1 for _ in container.decode(stream))
        return {
            "codec": stream.codec_context.name,
            "duration_s": (container.duration or 0) / 1_000_000,
            "frames": frames,
            "kind": stream.type,
        }


def event_offset(recording, kind: str, user_id: int, nth: int = 0) -> int:
    from classroom.models import SessionEvent

    events = list(SessionEvent.objects.filter(session=recording.session, kind=kind, subject_id=user_id).order_by("created_at"))
    return round((events[nth].created_at - recording.started_at).total_seconds() * 1000)


def wait_published(stack: Stack, recording_id: int, timeout: float = 240):
    from classroom.models import Recording

    def done():
        r = Recording.objects.get(pk=recording_id)
        if r.status == "failed":
            pytest.fail(f"post-processing failed: {r.error} {r.progress}\n{stack.logs()}")
        return r if r.status == "published" else None

    return wait_until(done, timeout=timeout, every=1, what="the recording to be published", logs=stack.logs)


def test_recording_of_two_on_stage_with_the_broadcast(stack, browser):
    from django.contrib.auth import get_user_model

    from classroom.models import Recording
    from classroom.services.demo import demo_seed

    demo = demo_seed()
    users = {u.username: u for u in get_user_model().objects.filter(username__in=["ada", "ben"])}
    ada, (ben,) = stage_start(browser, stack.server, demo, "ben")
    ada.click("#go-live")
    ada.wait_for_selector("#bc-status.live", timeout=90_000)

    # Record: everyone on stage sees the indicator; the recorder reports a file per person and kind.
    ada.click("#record-start")
    ben.wait_for_selector("#rec-indicator:not([hidden])")
    recording = wait_until(lambda: Recording.objects.filter(status="recording").first(), timeout=60,
                           what="the recorder to join", logs=stack.logs)

    def tracks_with_frames(count):
        rows = [f for f in recording.files.filter(role="track") if (f.frames or 0) > 0]
        return rows if len(rows) >= count else None

    wait_until(lambda: tracks_with_frames(4), timeout=60, what="4 tracks receiving media", logs=stack.logs)
    time.sleep(4)
    ben.fill("#chat-input", "a question for the recording")
    ben.press("#chat-input", "Enter")
    time.sleep(1)
    ben.click("#leave-stage")  # his first stay ends: his files close
    time.sleep(3)
    bring_on_stage(ada, ben)  # ... and he comes back: new files, not a gap
    wait_until(lambda: tracks_with_frames(6), timeout=60, what="ben's second files", logs=stack.logs)
    time.sleep(4)
    ada.click("#record-stop")
    ada.wait_for_selector("#rec-indicator", state="hidden")
    recording = wait_published(stack, recording.pk)

    # The manifest: versioned, 2 x (audio, video) for ada, 2 stays x 2 kinds for ben, the program.
    manifest = manifest_loads(store_path(recording, "manifest.json").read_text())
    assert manifest.complete, manifest.incomplete_reasons
    by_user = {}
    for track in manifest.tracks:
        by_user.setdefault(track.participant.id, []).append(track)
    ada_id, ben_id = users["ada"].pk, users["ben"].pk
    assert sorted((t.kind, t.codec) for t in by_user[ada_id]) == [("audio", "opus"), ("video", "vp8")]
    assert sorted((t.kind, t.codec) for t in by_user[ben_id]) == [("audio", "opus")] * 2 + [("video", "vp8")] * 2

    stop_ms = round((recording.stopped_at - recording.started_at).total_seconds() * 1000)
    ben_left = event_offset(recording, "stage.left", ben_id)
    ben_back = event_offset(recording, "stage.joined", ben_id, nth=1)
    stays = {ada_id: [(0, stop_ms)], ben_id: [(0, ben_left), (ben_back, stop_ms)]}
    for user_id, tracks in by_user.items():
        for track in tracks:
            stay = min(stays[user_id], key=lambda s: abs(s[0] - track.start_ms))
            # Offsets agree with the event log (the file's t=0 is the moment its person came on stage).
            assert abs(track.start_ms - stay[0]) <= 100, (track, stay)
            assert track.first_media_ms is not None and track.first_media_ms - track.start_ms < 5000, track
            info = open_media(store_path(recording, track.file))
            assert info["codec"] == track.codec and info["frames"] > 0, (track.file, info)
            assert abs(info["duration_s"] * 1000 - (stay[1] - stay[0])) <= 500, (track.file, info, stay)
            assert abs(track.end_ms - stay[1]) <= 500, (track, stay)
    kinds = [e.kind for e in manifest.events]
    assert "stage.left" in kinds and "stage.joined" in kinds and "chat.message" in kinds, kinds
    left_event = next(e for e in manifest.events if e.kind == "stage.left")
    assert left_event.offset_ms == ben_left

    # The program: the broadcast's segments, remuxed into one MP4 that plays start to end.
    assert manifest.program is not None and manifest.program.mp4
    program = store_path(recording, manifest.program.mp4)
    with av.open(str(program)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"
        frames = sum(1 for _ in container.decode(video=0))
        duration_s = container.duration / 1_000_000
    assert frames >= duration_s * 30 * 0.5, (frames, duration_s)
    assert abs(duration_s * 1000 - (manifest.program.end_ms - manifest.program.start_ms)) <= 1000
    assert abs(duration_s * 1000 - stop_ms) <= 3 * 2000 + 1000  # whole segments around the recording
    assert recording.qc == [] or all(w["severity"] != "error" for w in recording.qc), recording.qc
    assert recording.files.filter(role="poster").exists()


def test_recorder_worker_killed_mid_session(stack, browser):
    from classroom.models import Recording
    from classroom.services.demo import demo_seed

    demo = demo_seed()
    ada, _ = stage_start(browser, stack.server, demo)
    ada.click("#record-start")  # recording works without a broadcast too
    recording = wait_until(lambda: Recording.objects.filter(status="recording").first(), timeout=60,
                           what="the recorder to join", logs=stack.logs)
    first = wait_until(
        lambda: [f for f in recording.files.filter(role="track") if (f.frames or 0) > 60] or None,
        timeout=60, what="the first files to fill", logs=stack.logs,
    )
    time.sleep(3)
    recording.refresh_from_db()
    pid = int(recording.worker.rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()

    # What was written so far plays, before anything repairs it.
    for row in first:
        raw = stack.spool / recording.folder / row.name
        info = open_media(raw)
        assert info["frames"] > 0 and info["codec"] in ("vp8", "opus"), (row.name, info)

    # The watchdog queues the job again; the recording carries on in new files.
    wait_until(lambda: Recording.objects.filter(pk=recording.pk, attempts__gte=2, status="recording").exists(),
               timeout=120, what="the recording to resume", logs=stack.logs)
    names_before = {f.name for f in first}
    wait_until(lambda: [f for f in recording.files.filter(role="track", frames__gt=30) if f.name not in names_before] or None,
               timeout=60, what="new files after the restart", logs=stack.logs)
    assert time.time() - killed_at < 120
    time.sleep(2)
    ada.click("#record-stop")
    recording = wait_published(stack, recording.pk)

    assert not recording.complete and any("interrupted" in p for p in recording.problems), recording.problems
    assert recording.gaps and recording.gaps[0]["end_ms"] > recording.gaps[0]["start_ms"]
    manifest = manifest_loads(store_path(recording, "manifest.json").read_text())
    assert not manifest.complete and manifest.gaps
    # Nothing recorded before the kill is lost: those files are published and play.
    for name in names_before:
        info = open_media(store_path(recording, name))
        assert info["frames"] > 0 and info["duration_s"] >= 3, (name, info)
    assert len([t for t in manifest.tracks if t.kind == "video"]) >= 2
