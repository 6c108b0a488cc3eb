"""The review page in real Chromium: the program and a track play on one timeline; clicking a
timeline mark seeks them together, each to its own place in its file."""
from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model

from .conftest import login_page, start_live_server, stop_processes, wait_until
from .recording_fixtures import published_recording

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def review_server(transactional_db, tmp_path, settings, monkeypatch):
    from classroom.models import LiveSession, MediaNode
    from classroom.services.demo import demo_seed

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
    MediaNode.objects.all().delete()
    store = {"location": str(tmp_path / "store")}
    settings.STORAGES = {**settings.STORAGES, "recordings": {**settings.STORAGES["recordings"], "OPTIONS": store}}
    demo = demo_seed()
    ada = get_user_model().objects.get(username="ada")
    session = LiveSession.objects.create(classroom_id=demo["class_id"], status="ended")
    recording = published_recording(classroom_id=demo["class_id"], session_id=session.pk, user_id=ada.pk,
                                    work=tmp_path / "work")
    server = start_live_server(tmp_path, CLASSCAST_RECORDINGS_STORAGE_OPTIONS=json.dumps(store))
    try:
        yield server, recording
    finally:
        stop_processes(server.procs)


def test_timeline_marks_seek_program_and_tracks_together(review_server, browser):
    from classroom.models import AuditEntry

    server, recording = review_server
    page = login_page(browser, server, "ada", "classcast-demo", permissions=[])
    page.goto(f"/recordings/{recording.pk}/")
    page.wait_for_selector("#program-player")
    wait_until(lambda: all(p["readyState"] >= 1 for p in page.evaluate("window.classcast.review.players()")),
               what="the players to load their media")
    marks = page.query_selector_all("#timeline-marks .mark")
    assert len(marks) == 2

    # The chat message at 3.5 s: the program (starts at 0) goes to 3.5 s, the track (starts at 1 s) to 2.5 s.
    page.click("#timeline-marks .mark[data-offset='3500']")
    players = wait_until(
        lambda: (ps := page.evaluate("window.classcast.review.players()"))
        and all(abs(p["time"] - (3.5 - p["start"] / 1000)) < 0.1 for p in ps) and ps,
        what="both players at the mark",
    )
    assert {p["label"] for p in players} == {"program", f"tracks/u{recording.files.get(role='track').user_id}-video-1.webm"}
    assert page.evaluate("window.classcast.review.position()") == 3500

    # Playing moves them together; a later seek (the hand raise at 2 s) lines them up again.
    page.click("#review-play")
    wait_until(lambda: page.evaluate("window.classcast.review.position()") > 4000, what="playback")
    page.click("#review-play")
    ps = page.evaluate("window.classcast.review.players()")
    program = next(p for p in ps if p["label"] == "program")
    track = next(p for p in ps if p["label"] != "program")
    assert abs((program["time"] - 0) - (track["time"] + 1.0)) < 0.3, ps  # one timeline, within a few frames
    page.click("#event-list button[data-offset='2000']")
    wait_until(lambda: all(abs(p["time"] - (2.0 - p["start"] / 1000)) < 0.1
                           for p in page.evaluate("window.classcast.review.players()")), what="seek by the event list")
    assert AuditEntry.objects.filter(recording_id=recording.pk, action="recording.view").exists()
    page.context.close()
