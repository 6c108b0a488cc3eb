"""The recording manifest: canonical JSON checked byte for byte against a golden file, round trips,
and a named refusal for each kind of bad field. Regenerate the golden file with UPDATE_GOLDEN=1."""
from __future__ import annotations

import difflib
import json
import os
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pytest

from recorder import RecorderError
from recorder.manifest import (
    SCHEMA,
    VERSION,
    Manifest,
    ManifestError,
    ManifestEvent,
    ManifestGap,
    ManifestParticipant,
    ManifestProgram,
    ManifestTrack,
    manifest_dumps,
    manifest_loads,
    manifest_to_dict,
    offset_ms,
)

pytestmark = pytest.mark.once  # pure media: the deployment mode does not matter

GOLDEN = Path(__file__).parent / "golden" / "recorder" / "manifest_v1.json"
START = datetime(2025, 3, 14, 9, 0, 0, 250_400, tzinfo=timezone.utc)
TEACHER = ManifestParticipant(id=3, name="Ada Lovelace", role="instructor")
STUDENT = ManifestParticipant(id=7, name="Zoë Müller", role="student")
SHA = "ab" * 32


def track(tid: str, who: ManifestParticipant, kind: str, start: int, end: int, **extra: Any) -> ManifestTrack:
    video = kind == "video"
    fields: dict[str, Any] = dict(
        id=tid, participant=who, kind=kind, codec="vp8" if video else "opus", file=f"tracks/{tid}.webm",
        start_ms=start, end_ms=end, first_media_ms=start + 180, duration_ms=end - start,
        frames=(end - start) // (33 if video else 20), size=(end - start) * (100 if video else 8), sha256=SHA,
        width=640 if video else None, height=360 if video else None,
    )
    fields.update(extra)
    return ManifestTrack(**fields)


def example() -> Manifest:
    """A 20-minute class: the teacher on stage throughout, a student who comes up, leaves and returns
    (two files per kind), a broadcast program, the timeline and one gap where the recorder restarted."""
    tracks = (
        # given out of order on purpose: the manifest sorts them
        track("u7-video-2", STUDENT, "video", 900_000, 1_150_000),
        track("u3-audio-1", TEACHER, "audio", 0, 1_200_000),
        track("u3-video-1", TEACHER, "video", 0, 1_200_000),
        track("u7-audio-1", STUDENT, "audio", 300_000, 600_000),
        track("u7-video-1", STUDENT, "video", 300_000, 600_000, first_media_ms=300_950),
        track("u7-audio-2", STUDENT, "audio", 900_000, 1_150_000, sha256=None, size=None),
    )
    events = (
        ManifestEvent(offset_ms=0, kind="stage.joined", actor=TEACHER, data={}),
        ManifestEvent(offset_ms=240_000, kind="hand.raised", actor=STUDENT, data={}),
        ManifestEvent(offset_ms=300_000, kind="stage.joined", actor=STUDENT,
                      data={"by": {"id": 3, "name": "Ada Lovelace"}}),
        ManifestEvent(offset_ms=300_000, kind="broadcast.layout", actor=TEACHER, data={"layout": "speaker"}),
        ManifestEvent(offset_ms=450_125, kind="chat.message", actor=STUDENT,
                      data={"text": "Is x² always ≥ 0? \"yes\""}),
        ManifestEvent(offset_ms=600_000, kind="stage.left", actor=STUDENT, data={}),
        ManifestEvent(offset_ms=900_000, kind="stage.joined", actor=STUDENT, data={}),
        ManifestEvent(offset_ms=1_150_000, kind="stage.left", actor=None, data={"reason": "removed"}),
    )
    return Manifest(
        recording_id=42, class_id=5, class_title="Algebra — Year 9", session_id=17,
        started_at=START, stopped_at=START + timedelta(minutes=20, milliseconds=1),
        complete=False, incomplete_reasons=("The recorder restarted: 2.5 s are missing.",),
        tracks=tracks,
        program=ManifestProgram(playlist="program/program.m3u8", mp4="program.mp4", start_ms=1_850, end_ms=1_199_000,
                                segments=300, size=250_000_000, sha256="cd" * 32),
        events=events,
        gaps=(ManifestGap(start_ms=700_000, end_ms=702_500, reason="recorder restarted"),),
    )


def test_dumps_matches_golden_file() -> None:
    text = manifest_dumps(example())
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    golden = GOLDEN.read_text(encoding="utf-8")
    if text != golden:
        diff = "".join(difflib.unified_diff(golden.splitlines(True), text.splitlines(True), "golden", "now"))
        pytest.fail(f"manifest differs from {GOLDEN.name} (UPDATE_GOLDEN=1 to accept):\n{diff}")


def test_dumps_is_canonical_json() -> None:
    text = manifest_dumps(example())
    assert text.endswith("}\n") and "Zoë" in text  # not \u-escaped
    document = json.loads(text)
    assert document["schema"] == SCHEMA and document["version"] == VERSION
    assert text == json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    recording = document["recording"]
    assert recording["started_at"] == "2025-03-14T09:00:00.250Z"
    assert recording["stopped_at"] == "2025-03-14T09:20:00.251Z"
    assert recording["duration_ms"] == 1_200_001
    assert [t["id"] for t in document["tracks"]] == [
        "u3-audio-1", "u3-video-1", "u7-audio-1", "u7-video-1", "u7-audio-2", "u7-video-2",
    ]
    # ties keep the order they were given in
    ties = [(e["offset_ms"], e["kind"]) for e in document["events"]][2:4]
    assert ties == [(300_000, "stage.joined"), (300_000, "broadcast.layout")]


def test_round_trip() -> None:
    manifest = example()
    again = manifest_loads(manifest_dumps(manifest))
    assert again == manifest
    assert manifest_dumps(again) == manifest_dumps(manifest)
    assert manifest_loads(GOLDEN.read_text(encoding="utf-8")) == manifest


def test_round_trip_of_an_open_recording_without_program() -> None:
    manifest = replace(
        example(), stopped_at=None, program=None, events=(), gaps=(), complete=True, incomplete_reasons=()
    )
    assert manifest_to_dict(manifest)["recording"]["duration_ms"] is None
    assert manifest_loads(manifest_dumps(manifest)) == manifest


def test_times_are_utc_to_the_millisecond() -> None:
    paris = timezone(timedelta(hours=1))
    manifest = replace(example(), started_at=datetime(2025, 3, 14, 10, 0, 0, 250_999, tzinfo=paris), stopped_at=None)
    assert manifest.started_at == START.replace(microsecond=250_000)
    assert manifest.started_at.tzinfo == timezone.utc
    with pytest.raises(ManifestError, match="started_at"):
        replace(example(), started_at=datetime(2025, 3, 14, 9, 0))


def test_offset_ms_rounds_to_nearest() -> None:
    assert offset_ms(start=START, moment=START + timedelta(microseconds=1_499)) == 1
    assert offset_ms(start=START, moment=START + timedelta(microseconds=1_500)) == 2
    assert offset_ms(start=START, moment=START + timedelta(minutes=1)) == 60_000
    assert offset_ms(start=START, moment=START - timedelta(milliseconds=3)) == -3
    with pytest.raises(ManifestError):
        offset_ms(start=START, moment=datetime(2025, 3, 14))


def edit(change: Callable[[dict[str, Any]], None]) -> str:
    document = json.loads(manifest_dumps(example()))
    change(document)
    return json.dumps(document)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = document
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is KeyError:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return change


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("schema", "other.thing", r"schema: expected 'classcast.recording'"),
        ("version", "1", r"version: expected an integer >= 1"),
        ("version", 0, r"version: expected an integer >= 1"),
        ("recording.id", KeyError, r"recording.id: missing"),
        ("recording.class.title", 5, r"recording.class.title: expected a string"),
        ("recording.started_at", "2025-03-14 09:00:00", r"recording.started_at: expected an ISO 8601"),
        ("recording.stopped_at", "2025-03-14T08:00:00.000Z", r"recording.stopped_at: .* before started_at"),
        ("recording.duration_ms", 5, r"recording.duration_ms: 5 does not match"),
        ("recording.complete", "no", r"recording.complete: expected true or false"),
        ("recording.complete", True, r"incomplete_reasons: a complete recording has none"),
        ("recording.incomplete_reasons", [""], r"incomplete_reasons\[0\]"),
        ("tracks", {}, r"tracks: expected a list"),
        ("tracks.0", "x", r"tracks\[0\]: expected an object"),
        ("tracks.0.start_ms", -1, r"tracks\[0\].start_ms: expected an integer >= 0"),
        ("tracks.2.end_ms", 299_999, r"tracks\[2\].end_ms: 299999 is before start_ms 300000"),
        ("tracks.1.kind", "screen", r"tracks\[1\].kind: expected audio or video"),
        ("tracks.1.frames", True, r"tracks\[1\].frames: expected an integer"),
        ("tracks.1.sha256", "ABC", r"tracks\[1\].sha256: expected 64 lowercase hex digits"),
        ("tracks.1.participant", None, r"tracks\[1\].participant: expected an object"),
        ("tracks.1.participant.id", "3", r"tracks\[1\].participant.id: expected an integer"),
        ("tracks.1.id", "u3-audio-1", r"tracks\[1\].id: duplicate 'u3-audio-1'"),
        ("program.segments", -2, r"program.segments: expected an integer >= 0"),
        ("program.end_ms", 0, r"program.end_ms: 0 is before start_ms"),
        ("events.3.offset_ms", -5, r"events\[3\].offset_ms: expected an integer >= 0"),
        ("events.3.data", [], r"events\[3\].data: expected an object"),
        ("events.3.actor", "Ada", r"events\[3\].actor: expected an object or null"),
        ("gaps.0.reason", "", r"gaps\[0\].reason: expected a non-empty string"),
        ("gaps.0.end_ms", 1, r"gaps\[0\].end_ms: 1 is before start_ms"),
    ],
)
def test_loads_names_the_bad_field(path: str, value: Any, message: str) -> None:
    with pytest.raises(ManifestError, match=message) as caught:
        manifest_loads(edit(_set(path, value)))
    assert isinstance(caught.value, RecorderError)


def test_newer_version_is_refused_clearly() -> None:
    text = edit(lambda d: d.update(version=VERSION + 1, recording="reshaped"))
    with pytest.raises(ManifestError, match=r"^manifest version 2 is newer than this reader \(1\)$"):
        manifest_loads(text)


@pytest.mark.parametrize("text", ["", "{", "[]", "null", '"manifest"'])
def test_loads_refuses_what_is_not_a_manifest(text: str) -> None:
    with pytest.raises(ManifestError):
        manifest_loads(text)


def test_dumps_refuses_a_manifest_it_could_not_read_back() -> None:
    bad_track = replace(example().tracks[0], end_ms=-1)
    with pytest.raises(ManifestError, match=r"tracks\[0\].end_ms"):
        manifest_dumps(replace(example(), tracks=(bad_track,)))
    with pytest.raises(ManifestError, match="JSON"):
        event = ManifestEvent(offset_ms=1, kind="chat.message", actor=None, data={"at": START})
        manifest_dumps(replace(example(), events=(event,)))
