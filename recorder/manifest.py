"""The manifest of one recording: a versioned JSON document that keeps its files in sync. Pure (no I/O).

Every time in it is an offset in milliseconds from `recording.started_at`:

* a track is one file of one participant's audio or video for one stay on stage; its file's t=0 is
  `start_ms` (when they came on stage) and it ends at `end_ms`; `first_media_ms` is when media first
  arrived (the file's leading gap is first_media_ms - start_ms). A participant who leaves and comes
  back has one file per stay. `duration_ms`, `frames`, `size`, `sha256` describe the finished file.
* the program is the broadcast mix (HLS playlist and one MP4) over [start_ms, end_ms]; it is cut on
  whole segments, so start_ms may be negative (the first segment began before the recording did).
* events are the session's timeline (stage, hands, chat, layout...), gaps are spans nothing recorded.

`manifest_dumps` is canonical (sorted keys, fixed order of tracks and events), so the same recording
always gives the same bytes; `manifest_loads` validates and names the field it refuses."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping

from . import RecorderError

SCHEMA = "classcast.recording"
VERSION = 1
KINDS = ("audio", "video")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


class ManifestError(RecorderError):
    """A manifest that cannot be read or built: names the offending field."""


@dataclass(frozen=True)
class ManifestParticipant:
    id: int
    name: str
    role: str


@dataclass(frozen=True)
class ManifestTrack:
    id: str
    participant: ManifestParticipant
    kind: str
    codec: str
    file: str
    start_ms: int
    end_ms: int
    first_media_ms: int | None
    duration_ms: int | None
    frames: int | None
    size: int | None
    sha256: str | None
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class ManifestProgram:
    playlist: str
    mp4: str | None
    start_ms: int
    end_ms: int
    segments: int
    size: int | None
    sha256: str | None


@dataclass(frozen=True)
class ManifestEvent:
    offset_ms: int
    kind: str
    actor: ManifestParticipant | None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ManifestGap:
    start_ms: int
    end_ms: int
    reason: str


@dataclass(frozen=True)
class Manifest:
    """Times are kept to the millisecond, in UTC; tracks, events and gaps are kept in canonical order,
    so a manifest equals its own round trip through JSON."""

    recording_id: int
    class_id: int
    class_title: str
    session_id: int
    started_at: datetime
    stopped_at: datetime | None
    complete: bool
    incomplete_reasons: tuple[str, ...]
    tracks: tuple[ManifestTrack, ...]
    program: ManifestProgram | None
    events: tuple[ManifestEvent, ...]
    gaps: tuple[ManifestGap, ...]

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: normalize once, here
        put(self, "started_at", _to_ms("started_at", self.started_at))
        if self.stopped_at is not None:
            put(self, "stopped_at", _to_ms("stopped_at", self.stopped_at))
        put(self, "incomplete_reasons", tuple(self.incomplete_reasons))
        put(self, "tracks", tuple(sorted(self.tracks, key=lambda t: (t.start_ms, t.participant.id, t.kind, t.id))))
        put(self, "events", tuple(sorted(self.events, key=lambda e: e.offset_ms)))  # stable: ties keep their order
        put(self, "gaps", tuple(sorted(self.gaps, key=lambda g: (g.start_ms, g.end_ms, g.reason))))

    @property
    def duration_ms(self) -> int | None:
        return None if self.stopped_at is None else offset_ms(start=self.started_at, moment=self.stopped_at)


def offset_ms(*, start: datetime, moment: datetime) -> int:
    """Milliseconds from `start` to `moment` (both timezone-aware), rounded to the nearest."""
    if start.tzinfo is None or moment.tzinfo is None:
        raise ManifestError("offset_ms needs timezone-aware datetimes")
    micro = (moment - start) // timedelta(microseconds=1)
    return (micro + 500) // 1000


def _to_ms(name: str, moment: datetime) -> datetime:
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise ManifestError(f"{name}: a timezone-aware datetime is required, got {moment!r}")
    moment = moment.astimezone(timezone.utc)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _time_text(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


# ---- to JSON ----

def _participant(p: ManifestParticipant | None) -> dict[str, Any] | None:
    return None if p is None else {"id": p.id, "name": p.name, "role": p.role}


def manifest_to_dict(manifest: Manifest) -> dict[str, Any]:
    m = manifest
    return {
        "schema": SCHEMA,
        "version": VERSION,
        "recording": {
            "id": m.recording_id,
            "class": {"id": m.class_id, "title": m.class_title},
            "session": {"id": m.session_id},
            "started_at": _time_text(m.started_at),
            "stopped_at": _time_text(m.stopped_at),
            "duration_ms": m.duration_ms,
            "complete": m.complete,
            "incomplete_reasons": list(m.incomplete_reasons),
        },
        "tracks": [
            {
                "id": t.id, "participant": _participant(t.participant), "kind": t.kind, "codec": t.codec,
                "file": t.file, "start_ms": t.start_ms, "end_ms": t.end_ms, "first_media_ms": t.first_media_ms,
                "duration_ms": t.duration_ms, "frames": t.frames, "size": t.size, "sha256": t.sha256,
                "width": t.width, "height": t.height,
            }
            for t in m.tracks
        ],
        "program": None if m.program is None else {
            "playlist": m.program.playlist, "mp4": m.program.mp4, "start_ms": m.program.start_ms,
            "end_ms": m.program.end_ms, "segments": m.program.segments, "size": m.program.size,
            "sha256": m.program.sha256,
        },
        "events": [
            {"offset_ms": e.offset_ms, "kind": e.kind, "actor": _participant(e.actor), "data": dict(e.data)}
            for e in m.events
        ],
        "gaps": [{"start_ms": g.start_ms, "end_ms": g.end_ms, "reason": g.reason} for g in m.gaps],
    }


def manifest_dumps(manifest: Manifest) -> str:
    """Canonical JSON text: the same manifest always gives the same bytes. Checked with the reader
    first, so a manifest that could not be read back (negative offset, end before start, an event's
    data that is not JSON) is refused here, naming the field, rather than published."""
    try:
        text = json.dumps(manifest_to_dict(manifest), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"manifest is not JSON-serializable: {exc}") from None
    manifest_loads(text)
    return text


# ---- from JSON, validated ----

class _Reader:
    """Typed access to one JSON object, naming fields by their path (e.g. tracks[2].end_ms)."""

    def __init__(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise ManifestError(f"manifest field {path or 'root'}: expected an object, got {_kind(value)}")
        self.value, self.path = value, path

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, check: Callable[[Any], bool], expected: str, *, nullable: bool = False) -> Any:
        if key not in self.value:
            raise ManifestError(f"manifest field {self.name(key)}: missing")
        value = self.value[key]
        if value is None and nullable:
            return None
        if not check(value):
            raise ManifestError(f"manifest field {self.name(key)}: expected {expected}, got {value!r}")
        return value

    def number(self, key: str, *, nullable: bool = False, minimum: int | None = 0) -> Any:
        expected = "an integer" if minimum is None else f"an integer >= {minimum}"
        return self.get(key, lambda v: _is_int(v) and (minimum is None or v >= minimum), expected, nullable=nullable)

    def text(self, key: str, *, nullable: bool = False, nonempty: bool = False) -> Any:
        expected = "a non-empty string" if nonempty else "a string"
        return self.get(key, lambda v: isinstance(v, str) and (v != "" or not nonempty), expected, nullable=nullable)

    def object(self, key: str) -> _Reader:
        return _Reader(self.get(key, lambda v: isinstance(v, dict), "an object"), self.name(key))

    def object_or_null(self, key: str) -> _Reader | None:
        value = self.get(key, lambda v: isinstance(v, dict), "an object or null", nullable=True)
        return None if value is None else _Reader(value, self.name(key))

    def array(self, key: str) -> list[Any]:
        return self.get(key, lambda v: isinstance(v, list), "a list")

    def time(self, key: str, *, nullable: bool = False) -> datetime | None:
        text = self.get(key, lambda v: isinstance(v, str) and _TIME.fullmatch(v) is not None,
                        "an ISO 8601 UTC time like 2024-01-31T09:00:00.000Z", nullable=nullable)
        if text is None:
            return None
        try:
            return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
        except ValueError:
            raise ManifestError(f"manifest field {self.name(key)}: not a valid time: {text!r}") from None

    def span(self, start_key: str = "start_ms", end_key: str = "end_ms", *, minimum: int | None = 0) -> tuple[int, int]:
        start, end = self.number(start_key, minimum=minimum), self.number(end_key, minimum=minimum)
        if end < start:
            raise ManifestError(f"manifest field {self.name(end_key)}: {end} is before {start_key} {start}")
        return start, end


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _read_participant(r: _Reader) -> ManifestParticipant:
    return ManifestParticipant(id=r.number("id"), name=r.text("name"), role=r.text("role"))


def _read_track(r: _Reader) -> ManifestTrack:
    start, end = r.span()
    kind = r.get("kind", lambda v: v in KINDS, " or ".join(KINDS))
    return ManifestTrack(
        id=r.text("id", nonempty=True), participant=_read_participant(r.object("participant")), kind=kind,
        codec=r.text("codec", nonempty=True), file=r.text("file", nonempty=True), start_ms=start, end_ms=end,
        first_media_ms=r.number("first_media_ms", nullable=True), duration_ms=r.number("duration_ms", nullable=True),
        frames=r.number("frames", nullable=True), size=r.number("size", nullable=True), sha256=_read_sha(r),
        width=r.number("width", nullable=True), height=r.number("height", nullable=True),
    )


def _read_sha(r: _Reader) -> str | None:
    return r.get("sha256", lambda v: isinstance(v, str) and _SHA256.fullmatch(v) is not None,
                 "64 lowercase hex digits", nullable=True)


def _read_program(r: _Reader | None) -> ManifestProgram | None:
    if r is None:
        return None
    # The program is cut on whole segments (no re-encoding), so it may begin before the recording's t=0.
    start, end = r.span(minimum=None)
    return ManifestProgram(
        playlist=r.text("playlist", nonempty=True), mp4=r.text("mp4", nullable=True), start_ms=start, end_ms=end,
        segments=r.number("segments"), size=r.number("size", nullable=True), sha256=_read_sha(r),
    )


def _read_event(r: _Reader) -> ManifestEvent:
    actor = r.object_or_null("actor")
    return ManifestEvent(
        offset_ms=r.number("offset_ms"), kind=r.text("kind", nonempty=True),
        actor=None if actor is None else _read_participant(actor), data=r.object("data").value,
    )


def _read_gap(r: _Reader) -> ManifestGap:
    start, end = r.span()
    return ManifestGap(start_ms=start, end_ms=end, reason=r.text("reason", nonempty=True))


def _items(root: _Reader, key: str, read: Callable[[_Reader], Any]) -> tuple[Any, ...]:
    return tuple(read(_Reader(item, f"{key}[{i}]")) for i, item in enumerate(root.array(key)))


def manifest_loads(text: str) -> Manifest:
    """Parse and validate a manifest; a ManifestError names the field at fault."""
    try:
        document = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from None
    root = _Reader(document, "")
    root.get("schema", lambda v: v == SCHEMA, repr(SCHEMA))
    version = root.number("version", minimum=1)
    if version > VERSION:
        raise ManifestError(f"manifest version {version} is newer than this reader ({VERSION})")
    rec = root.object("recording")
    klass, session = rec.object("class"), rec.object("session")
    started_at, stopped_at = rec.time("started_at"), rec.time("stopped_at", nullable=True)
    assert started_at is not None
    if stopped_at is not None and stopped_at < started_at:
        raise ManifestError(f"manifest field recording.stopped_at: {_time_text(stopped_at)} is before started_at")
    duration = rec.number("duration_ms", nullable=True)
    expected = None if stopped_at is None else offset_ms(start=started_at, moment=stopped_at)
    if duration != expected:
        raise ManifestError(
            f"manifest field recording.duration_ms: {duration!r} does not match started_at..stopped_at ({expected})"
        )
    complete = rec.get("complete", lambda v: isinstance(v, bool), "true or false")
    reasons = rec.array("incomplete_reasons")
    for i, reason in enumerate(reasons):
        if not isinstance(reason, str) or not reason:
            raise ManifestError(
                f"manifest field recording.incomplete_reasons[{i}]: expected a non-empty string, got {reason!r}"
            )
    if complete and reasons:
        raise ManifestError("manifest field recording.incomplete_reasons: a complete recording has none")
    tracks = _items(root, "tracks", _read_track)
    seen: set[str] = set()
    for i, track in enumerate(tracks):
        if track.id in seen:
            raise ManifestError(f"manifest field tracks[{i}].id: duplicate {track.id!r}")
        seen.add(track.id)
    return Manifest(
        recording_id=rec.number("id"), class_id=klass.number("id"), class_title=klass.text("title"),
        session_id=session.number("id"), started_at=started_at, stopped_at=stopped_at, complete=complete,
        incomplete_reasons=tuple(reasons), tracks=tracks, program=_read_program(root.object_or_null("program")),
        events=_items(root, "events", _read_event), gaps=_items(root, "gaps", _read_gap),
    )
