"""The signaling protocol's client-to-server messages: pure parsing and validation.

Every frame on `/ws/classes/<id>/` is one JSON object `{"type": ..., "id": optional, ...fields}`.
`message_parse` turns raw text into a `Message` or raises `MessageError` with a stable `code`
the browser shows; nothing here touches the network or the database (golden-tested).

Client -> server types and their fields:

    session.start / session.end                      instructor
    hand.raise / hand.lower {user_id?}               student (instructor may lower anyone's)
    stage.invite {user_id} / stage.remove {user_id}  instructor
    stage.accept / stage.decline / stage.leave       the invited / on-stage student
    stage.mute {kind, muted, user_id?}               self, or the instructor for anyone
    chat.send {text}
    rtc.join {max_height?}                           on-stage member (or service token): ask for an offer;
                                                     an egress service may ask for the video layer that
                                                     fits its tile (the highest otherwise)
    rtc.answer {pc, sdp}                             answer to the media node's offer for connection `pc`
    rtc.candidate {pc, candidate, sdpMid?, sdpMLineIndex?}   trickle ICE ("" = end of candidates)

`pc` is "publish" (our camera and microphone to the media node) or "subscribe" (the stage to us).
    rtc.leave
    stats.report {join_ms?, tracks: [...], rtt_ms?, available_out_bps?}   only with a media connection;
                                                     every number bounded (see STATS_LIMITS)
    broadcast.start / broadcast.stop                 instructor: go live / stop
    broadcast.layout {layout, user_id?}              grid | speaker | single (user_id: who, for single)
    destination.add {name, url} / destination.remove {destination_id}
    stream_key.rotate
    recording.start / recording.stop                 instructor: record the session / stop
    ping
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

MAX_MESSAGE_BYTES = 64 * 1024
MAX_SDP_CHARS = 60_000
MAX_CANDIDATE_CHARS = 1_000
MAX_CHAT_CHARS = 1_000
MAX_REPORTED_TRACKS = 32
MAX_DESTINATION_NAME_CHARS = 80
MAX_DESTINATION_URL_CHARS = 500

# What a browser can honestly measure: anything outside is refused, so /metrics holds no made-up numbers.
STATS_LIMITS = {
    "join_ms": 120_000.0,  # page load to first remote frame
    "rtt_ms": 60_000.0,
    "jitter_ms": 60_000.0,
    "packet_loss": 1.0,
    "bitrate_bps": 50e6,
    "available_out_bps": 50e6,
    "fps": 240.0,
}

# Text that reaches the database or other people: a lone UTF-16 surrogate cannot be encoded (SQLite,
# the socket, msgpack on the Redis layer), NUL cannot be stored by PostgreSQL, and other control
# characters are invisible tricks. Line breaks (\n, \r) and tabs stay where text may span lines.
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_CONTROL_ONE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class MessageError(ValueError):
    """A client message that cannot be accepted; `code` is stable, `detail` is for people."""

    def __init__(self, code: str, detail: str, ref: str | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.ref = ref


@dataclass(frozen=True)
class Message:
    type: str
    fields: dict[str, Any] = field(default_factory=dict)
    ref: str | None = None


# --- field validators: each returns the cleaned value or raises ValueError(reason) ------------------

def _int_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (0 < value < 2**63):
        raise ValueError("must be a positive integer")
    return value


def _max_height(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (0 < value <= 4320):
        raise ValueError("must be a height in pixels (1-4320)")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _kind(value: Any) -> str:
    if value not in ("audio", "video"):
        raise ValueError('must be "audio" or "video"')
    return value


def text_problem(value: str, *, multiline: bool = False) -> str | None:
    """Why this text cannot be stored or shown to people (None: it can). Used for every free-text field."""
    found = _SURROGATE.search(value)
    if found:
        return f"contains a character that is not valid text (a lone surrogate, U+{ord(found.group()):04X})"
    found = (_CONTROL_MULTILINE if multiline else _CONTROL_ONE_LINE).search(value)
    if found:
        allowed = "only line breaks and tabs are allowed" if multiline else "it must be a single line"
        return f"contains a control character (U+{ord(found.group()):04X}); {allowed}"
    return None


def _text(max_chars: int, *, allow_empty: bool = False, multiline: bool = False) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError("must be a string")
        if len(value) > max_chars:
            raise ValueError(f"must be at most {max_chars} characters")
        if not allow_empty and not value.strip():
            raise ValueError("must not be empty")
        problem = text_problem(value, multiline=multiline)
        if problem:
            raise ValueError(problem)
        return value

    return check


def _sdp(value: Any) -> str:
    text = _text(MAX_SDP_CHARS, multiline=True)(value)
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line]
    if not lines or lines[0] != "v=0" or not any(line.startswith("m=") for line in lines):
        raise ValueError("is not a session description (needs v=0 and at least one m= line)")
    if any(len(line) < 2 or line[1] != "=" for line in lines):
        raise ValueError("has a line that is not <letter>=<value>")
    return text


def _candidate(value: Any) -> str:
    text = _text(MAX_CANDIDATE_CHARS, allow_empty=True)(value)
    if text and not text.startswith(("candidate:", "a=candidate:")):
        raise ValueError('must start with "candidate:"')
    return text


def _pc_name(value: Any) -> str:
    if value not in ("publish", "subscribe"):
        raise ValueError('must be "publish" or "subscribe"')
    return value


def _optional_mid(value: Any) -> str | None:
    if value is None:
        return None
    return _text(32)(value)


def _optional_index(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not (0 <= value < 64):
        raise ValueError("must be an integer from 0 to 63")
    return value


def _layout(value: Any) -> str:
    if value not in ("grid", "speaker", "single"):
        raise ValueError('must be "grid", "speaker" or "single"')
    return value


def _number(lo: float, hi: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        # NaN fails both comparisons, infinities the bound: neither gets through.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo <= value <= hi):
            raise ValueError(f"must be a number from {lo:g} to {hi:g}")
        return float(value)

    return check


def _stat(name: str) -> Callable[[Any], float]:
    return _number(0, STATS_LIMITS[name])


_TRACK_REPORT = {
    "kind": _kind,
    "direction": lambda v: v if v in ("inbound", "outbound") else _raise("must be inbound or outbound"),
    "user_id": _int_id,
    "bitrate_bps": _stat("bitrate_bps"),
    "packet_loss": _stat("packet_loss"),
    "jitter_ms": _stat("jitter_ms"),
    "fps": _stat("fps"),
}


def _raise(reason: str) -> Any:
    raise ValueError(reason)


def _track_reports(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) > MAX_REPORTED_TRACKS:
        raise ValueError(f"must be a list of at most {MAX_REPORTED_TRACKS} track reports")
    cleaned = []
    for item in value:
        if not isinstance(item, dict):
            raise ValueError("each track report must be an object")
        unknown = set(item) - set(_TRACK_REPORT)
        if unknown:
            raise ValueError(f"unknown track report field {sorted(unknown)[0]!r}")
        if "kind" not in item or "direction" not in item:
            raise ValueError("each track report needs kind and direction")
        report = {}
        for key, val in item.items():
            try:
                report[key] = _TRACK_REPORT[key](val)
            except ValueError as exc:
                raise ValueError(f"[{len(cleaned)}].{key} {exc}") from None
        cleaned.append(report)
    return cleaned


# type -> {field: (validator, required)}
SCHEMAS: dict[str, dict[str, tuple[Callable[[Any], Any], bool]]] = {
    "session.start": {},
    "session.end": {},
    "hand.raise": {},
    "hand.lower": {"user_id": (_int_id, False)},
    "stage.invite": {"user_id": (_int_id, True)},
    "stage.remove": {"user_id": (_int_id, True)},
    "stage.accept": {},
    "stage.decline": {},
    "stage.leave": {},
    "stage.mute": {"kind": (_kind, True), "muted": (_bool, True), "user_id": (_int_id, False)},
    "chat.send": {"text": (_text(MAX_CHAT_CHARS, multiline=True), True)},
    "rtc.join": {"max_height": (_max_height, False)},
    "rtc.answer": {"pc": (_pc_name, True), "sdp": (_sdp, True)},
    "rtc.candidate": {
        "pc": (_pc_name, True),
        "candidate": (_candidate, True),
        "sdpMid": (_optional_mid, False),
        "sdpMLineIndex": (_optional_index, False),
    },
    "rtc.leave": {},
    "stats.report": {
        "join_ms": (_stat("join_ms"), False),
        "rtt_ms": (_stat("rtt_ms"), False),
        "available_out_bps": (_stat("available_out_bps"), False),
        "tracks": (_track_reports, False),
    },
    "broadcast.start": {},
    "broadcast.stop": {},
    "broadcast.layout": {"layout": (_layout, True), "user_id": (_int_id, False)},
    "destination.add": {
        "name": (_text(MAX_DESTINATION_NAME_CHARS, allow_empty=True), True),
        "url": (_text(MAX_DESTINATION_URL_CHARS), True),
    },
    "destination.remove": {"destination_id": (_int_id, True)},
    "stream_key.rotate": {},
    "recording.start": {},
    "recording.stop": {},
    "ping": {},
}


def message_parse(raw: str | bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Validate one client frame. Raises MessageError(code) for anything not exactly as specified."""
    size = len(raw.encode("utf-8") if isinstance(raw, str) else raw)
    if size > max_bytes:
        raise MessageError("too_large", f"message is {size} bytes; the limit is {max_bytes}")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MessageError("malformed", f"not valid JSON ({exc.__class__.__name__})") from None
    except RecursionError:
        raise MessageError("malformed", "JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise MessageError("malformed", "a message must be a JSON object")
    ref = data.get("id")
    if ref is not None and (
        not isinstance(ref, (str, int)) or isinstance(ref, bool) or len(str(ref)) > 64
        or (isinstance(ref, str) and text_problem(ref))
    ):
        raise MessageError("invalid_field", "id must be a string (one line of text) or number of at most 64 characters")
    ref = None if ref is None else str(ref)
    kind = data.get("type")
    if not isinstance(kind, str):
        raise MessageError("malformed", 'a message needs a string "type"', ref)
    schema = SCHEMAS.get(kind)
    if schema is None:
        raise MessageError("unknown_type", f"unknown message type {kind[:40]!r}", ref)
    extra = set(data) - set(schema) - {"type", "id"}
    if extra:
        raise MessageError("invalid_field", f"{kind}: unexpected field {sorted(extra)[0][:40]!r}", ref)
    fields: dict[str, Any] = {}
    for name, (check, required) in schema.items():
        if name not in data:
            if required:
                raise MessageError("invalid_field", f"{kind}: missing field {name!r}", ref)
            continue
        try:
            fields[name] = check(data[name])
        except ValueError as exc:
            raise MessageError("invalid_field", f"{kind}: {name} {exc}", ref) from None
    return Message(type=kind, fields=fields, ref=ref)
