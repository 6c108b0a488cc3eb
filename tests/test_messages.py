"""Golden tests for the signaling protocol parser (pure: no network, no database) and the rate limiter."""
from __future__ import annotations

import json
from typing import Any

import pytest

from classroom.signaling.messages import (
    MAX_CANDIDATE_CHARS,
    MAX_CHAT_CHARS,
    MAX_MESSAGE_BYTES,
    MAX_REPORTED_TRACKS,
    MAX_SDP_CHARS,
    SCHEMAS,
    STATS_LIMITS,
    Message,
    MessageError,
    message_parse,
    text_problem,
)
from classroom.signaling.ratelimit import SocketBudgets, TokenBucket

SDP = (
    "v=0\r\n"
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "t=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
    "c=IN IP4 0.0.0.0\r\n"
    "a=rtpmap:111 opus/48000/2\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    "a=rtpmap:96 VP8/90000\r\n"
)
CANDIDATE = "candidate:842163049 1 udp 1677729535 127.0.0.1 50000 typ host generation 0"


def raw(**data: Any) -> str:
    return json.dumps(data)


def parse_error(text: str | bytes, **kwargs: Any) -> MessageError:
    with pytest.raises(MessageError) as info:
        message_parse(text, **kwargs)
    return info.value


# --- every valid type parses to exactly this Message --------------------------------------------------

VALID = [
    ({"type": "session.start"}, Message("session.start", {}, None)),
    ({"type": "session.end"}, Message("session.end", {}, None)),
    ({"type": "hand.raise"}, Message("hand.raise", {}, None)),
    ({"type": "hand.lower"}, Message("hand.lower", {}, None)),
    ({"type": "hand.lower", "user_id": 7}, Message("hand.lower", {"user_id": 7}, None)),
    ({"type": "stage.invite", "user_id": 3}, Message("stage.invite", {"user_id": 3}, None)),
    ({"type": "stage.remove", "user_id": 2**63 - 1}, Message("stage.remove", {"user_id": 2**63 - 1}, None)),
    ({"type": "stage.accept"}, Message("stage.accept", {}, None)),
    ({"type": "stage.decline"}, Message("stage.decline", {}, None)),
    ({"type": "stage.leave"}, Message("stage.leave", {}, None)),
    (
        {"type": "stage.mute", "kind": "audio", "muted": True},
        Message("stage.mute", {"kind": "audio", "muted": True}, None),
    ),
    (
        {"type": "stage.mute", "kind": "video", "muted": False, "user_id": 5},
        Message("stage.mute", {"kind": "video", "muted": False, "user_id": 5}, None),
    ),
    # chat text is passed on as sent (the service strips it)
    ({"type": "chat.send", "text": "  hello  "}, Message("chat.send", {"text": "  hello  "}, None)),
    ({"type": "chat.send", "text": "x" * MAX_CHAT_CHARS}, Message("chat.send", {"text": "x" * MAX_CHAT_CHARS}, None)),
    ({"type": "chat.send", "text": "héllo ✓ 👋"}, Message("chat.send", {"text": "héllo ✓ 👋"}, None)),
    ({"type": "rtc.join"}, Message("rtc.join", {}, None)),
    ({"type": "rtc.join", "max_height": 180}, Message("rtc.join", {"max_height": 180}, None)),
    ({"type": "rtc.answer", "pc": "publish", "sdp": SDP}, Message("rtc.answer", {"pc": "publish", "sdp": SDP}, None)),
    (
        {"type": "rtc.answer", "pc": "subscribe", "sdp": "v=0\nm=audio 9 UDP/TLS/RTP/SAVPF 111\n"},
        Message("rtc.answer", {"pc": "subscribe", "sdp": "v=0\nm=audio 9 UDP/TLS/RTP/SAVPF 111\n"}, None),
    ),
    (
        {"type": "rtc.candidate", "pc": "publish", "candidate": CANDIDATE, "sdpMid": "0", "sdpMLineIndex": 0},
        Message("rtc.candidate", {"pc": "publish", "candidate": CANDIDATE, "sdpMid": "0", "sdpMLineIndex": 0}, None),
    ),
    (
        {"type": "rtc.candidate", "pc": "subscribe", "candidate": "a=" + CANDIDATE},
        Message("rtc.candidate", {"pc": "subscribe", "candidate": "a=" + CANDIDATE}, None),
    ),
    (  # end of candidates
        {"type": "rtc.candidate", "pc": "publish", "candidate": "", "sdpMid": None, "sdpMLineIndex": None},
        Message("rtc.candidate", {"pc": "publish", "candidate": "", "sdpMid": None, "sdpMLineIndex": None}, None),
    ),
    (
        {"type": "rtc.candidate", "pc": "publish", "candidate": CANDIDATE, "sdpMLineIndex": 63},
        Message("rtc.candidate", {"pc": "publish", "candidate": CANDIDATE, "sdpMLineIndex": 63}, None),
    ),
    ({"type": "rtc.leave"}, Message("rtc.leave", {}, None)),
    ({"type": "stats.report"}, Message("stats.report", {}, None)),
    ({"type": "stats.report", "tracks": []}, Message("stats.report", {"tracks": []}, None)),
    (
        {
            "type": "stats.report",
            "join_ms": 1234,
            "rtt_ms": 12.5,
            "available_out_bps": 2_500_000,
            "tracks": [
                {"kind": "video", "direction": "outbound", "bitrate_bps": 800_000, "fps": 20},
                {
                    "kind": "audio",
                    "direction": "inbound",
                    "user_id": 4,
                    "bitrate_bps": 32000.5,
                    "packet_loss": 0.01,
                    "jitter_ms": 3,
                },
            ],
        },
        Message(
            "stats.report",
            {
                "join_ms": 1234.0,
                "rtt_ms": 12.5,
                "available_out_bps": 2_500_000.0,
                "tracks": [
                    {"kind": "video", "direction": "outbound", "bitrate_bps": 800_000.0, "fps": 20.0},
                    {
                        "kind": "audio",
                        "direction": "inbound",
                        "user_id": 4,
                        "bitrate_bps": 32000.5,
                        "packet_loss": 0.01,
                        "jitter_ms": 3.0,
                    },
                ],
            },
            None,
        ),
    ),
    ({"type": "ping"}, Message("ping", {}, None)),
    ({"type": "broadcast.start"}, Message("broadcast.start", {}, None)),
    ({"type": "broadcast.stop", "id": 9}, Message("broadcast.stop", {}, "9")),
    ({"type": "broadcast.layout", "layout": "speaker"}, Message("broadcast.layout", {"layout": "speaker"}, None)),
    (
        {"type": "broadcast.layout", "layout": "single", "user_id": 4},
        Message("broadcast.layout", {"layout": "single", "user_id": 4}, None),
    ),
    (
        {"type": "destination.add", "name": "YouTube", "url": "rtmp://a.rtmp.youtube.com/live2/k"},
        Message("destination.add", {"name": "YouTube", "url": "rtmp://a.rtmp.youtube.com/live2/k"}, None),
    ),
    ({"type": "destination.remove", "destination_id": 3}, Message("destination.remove", {"destination_id": 3}, None)),
    ({"type": "stream_key.rotate"}, Message("stream_key.rotate", {}, None)),
    ({"type": "recording.start"}, Message("recording.start", {}, None)),
    ({"type": "recording.stop", "id": "r1"}, Message("recording.stop", {}, "r1")),
]


@pytest.mark.parametrize("data, expected", VALID, ids=[f"{i}-{d['type']}" for i, (d, _) in enumerate(VALID)])
def test_valid_message_parses_to_exact_message(data, expected):
    assert message_parse(json.dumps(data)) == expected


def test_every_type_of_the_protocol_has_a_golden_case():
    assert {data["type"] for data, _ in VALID} == set(SCHEMAS)


def test_numbers_in_stats_become_floats():
    message = message_parse(raw(type="stats.report", join_ms=5, tracks=[{"kind": "audio", "direction": "inbound", "fps": 0}]))
    assert type(message.fields["join_ms"]) is float
    assert type(message.fields["tracks"][0]["fps"]) is float


def test_bytes_are_accepted_like_text():
    assert message_parse(b'{"type": "ping", "id": "b1"}') == Message("ping", {}, "b1")
    assert message_parse('{"type":"chat.send","text":"é"}'.encode()) == Message("chat.send", {"text": "é"}, None)


# --- id / ref -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "ident, ref",
    [
        ("abc", "abc"),
        ("", ""),
        (7, "7"),
        (0, "0"),
        (-3, "-3"),
        ("x" * 64, "x" * 64),
        (None, None),
    ],
)
def test_id_becomes_string_ref(ident, ref):
    assert message_parse(json.dumps({"type": "ping", "id": ident})) == Message("ping", {}, ref)


@pytest.mark.parametrize("height", [0, -1, 4321, 1.5, True, "180", None])
def test_a_join_asks_for_a_layer_by_a_plausible_height_only(height):
    assert parse_error(json.dumps({"type": "rtc.join", "max_height": height})).code == "invalid_field"


@pytest.mark.parametrize("ident", [True, False, 1.5, [1], {"a": 1}, "x" * 65, 10**65])
def test_bad_id_is_invalid_field_without_ref(ident):
    error = parse_error(json.dumps({"type": "ping", "id": ident}))
    assert error.code == "invalid_field"
    assert error.ref is None


def test_ref_is_kept_on_errors_after_the_id_is_read():
    assert parse_error(raw(type="nope", id="r1")).ref == "r1"
    assert parse_error(raw(type="chat.send", id=9)).ref == "9"
    assert parse_error(raw(type="ping", id="r2", extra=1)).ref == "r2"
    assert parse_error(raw(id="r3")).ref == "r3"  # missing type
    assert parse_error(raw(type="stage.invite", user_id="x", id="r4")).ref == "r4"


def test_ref_is_none_when_the_frame_is_not_an_object():
    assert parse_error('{"type": "ping", "id": "r1"').ref is None
    assert parse_error('[{"type": "ping", "id": "r1"}]').ref is None


# --- framing: JSON, object, type ------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text",
    ["", " ", "{", '{"type": "ping"', "{'type': 'ping'}", "ping", '{"type": "ping"}}', "\x00", "{\"type\": \"ping\",}"],
)
def test_malformed_json(text):
    error = parse_error(text)
    assert error.code == "malformed"
    assert error.ref is None


def test_invalid_utf8_bytes_are_malformed():
    assert parse_error(b'{"type": "chat.send", "text": "\xff\xfe"}').code == "malformed"


@pytest.mark.parametrize("text", ["[]", '["ping"]', "1", '"ping"', "null", "true", "3.5"])
def test_non_object_is_malformed(text):
    assert parse_error(text).code == "malformed"


@pytest.mark.parametrize("data", [{}, {"id": "1"}, {"type": None}, {"type": 1}, {"type": ["ping"]}, {"Type": "ping"}])
def test_missing_or_non_string_type_is_malformed(data):
    assert parse_error(json.dumps(data)).code == "malformed"


@pytest.mark.parametrize("kind", ["", "PING", "session", "session.start ", "rtc.offer", "error", "x" * 500])
def test_unknown_type(kind):
    error = parse_error(raw(type=kind, id="u"))
    assert error.code == "unknown_type"
    assert error.ref == "u"
    assert len(error.detail) < 200  # the echoed type is cut short


def test_deeply_nested_json_is_malformed_not_a_crash():
    # Within the size limit but deeper than the JSON decoder's recursion limit.
    text = '{"type": "ping", "x": ' + "[" * 20_000 + "]" * 20_000 + "}"
    assert len(text.encode()) <= MAX_MESSAGE_BYTES
    assert parse_error(text).code == "malformed"


# --- size -----------------------------------------------------------------------------------------------

def test_oversized_message_is_too_large():
    text = raw(type="chat.send", text="x" * (MAX_MESSAGE_BYTES + 1))
    error = parse_error(text)
    assert error.code == "too_large"
    assert str(MAX_MESSAGE_BYTES) in error.detail


def test_oversized_garbage_is_too_large_before_json_is_read():
    assert parse_error("{" * (MAX_MESSAGE_BYTES + 1)).code == "too_large"
    assert parse_error(b"\xff" * (MAX_MESSAGE_BYTES + 1)).code == "too_large"


def test_size_limit_is_inclusive_and_counts_bytes_not_characters():
    prefix = '{"type":"ping","id":"'
    exact = prefix + "x" * (MAX_MESSAGE_BYTES - len(prefix) - 2) + '"}'
    assert len(exact.encode()) == MAX_MESSAGE_BYTES
    # fails on the id length (too long), not on the size
    assert parse_error(exact).code == "invalid_field"
    assert parse_error(exact + " ").code == "too_large"
    # 40,000 two-byte characters are 80,000 bytes
    assert parse_error(raw(type="chat.send", text="é" * 40_000), max_bytes=MAX_MESSAGE_BYTES).code == "too_large"


def test_max_bytes_argument():
    text = raw(type="ping")
    assert message_parse(text, max_bytes=len(text)) == Message("ping", {}, None)
    assert parse_error(text, max_bytes=len(text) - 1).code == "too_large"


# --- fields: unexpected, missing, wrong type ----------------------------------------------------------------

@pytest.mark.parametrize(
    "data",
    [
        {"type": "ping", "extra": 1},
        {"type": "session.start", "user_id": 3},
        {"type": "hand.raise", "user_id": 3},
        {"type": "chat.send", "text": "hi", "to": 3},
        {"type": "rtc.answer", "pc": "publish", "sdp": SDP, "type2": "answer"},
        {"type": "stage.mute", "kind": "audio", "muted": True, "all": True},
        {"type": "rtc.candidate", "pc": "publish", "candidate": CANDIDATE, "usernameFragment": "abc"},
        {"type": "stats.report", "fields": {}},
    ],
)
def test_unexpected_field_is_invalid(data):
    error = parse_error(json.dumps(data))
    assert error.code == "invalid_field"
    assert "unexpected field" in error.detail


@pytest.mark.parametrize(
    "data, field",
    [
        ({"type": "stage.invite"}, "user_id"),
        ({"type": "stage.remove"}, "user_id"),
        ({"type": "stage.mute", "muted": True}, "kind"),
        ({"type": "stage.mute", "kind": "audio"}, "muted"),
        ({"type": "chat.send"}, "text"),
        ({"type": "rtc.answer", "pc": "publish"}, "sdp"),
        ({"type": "rtc.answer", "sdp": SDP}, "pc"),
        ({"type": "rtc.candidate", "pc": "publish", "sdpMid": "0"}, "candidate"),
        ({"type": "rtc.candidate", "candidate": CANDIDATE}, "pc"),
    ],
)
def test_missing_field_is_invalid(data, field):
    error = parse_error(json.dumps(data))
    assert error.code == "invalid_field"
    assert f"missing field {field!r}" in error.detail


BAD_FIELDS = [
    # ids must be positive ints below 2**63, never bools or strings
    ({"type": "stage.invite", "user_id": "3"}),
    ({"type": "stage.invite", "user_id": 0}),
    ({"type": "stage.invite", "user_id": -1}),
    ({"type": "stage.invite", "user_id": 1.0}),
    ({"type": "stage.invite", "user_id": 2**63}),
    ({"type": "stage.invite", "user_id": True}),
    ({"type": "stage.invite", "user_id": None}),
    ({"type": "stage.remove", "user_id": [1]}),
    ({"type": "hand.lower", "user_id": "me"}),
    ({"type": "hand.lower", "user_id": None}),
    ({"type": "stage.mute", "kind": "screen", "muted": True}),
    ({"type": "stage.mute", "kind": "Audio", "muted": True}),
    ({"type": "stage.mute", "kind": ["audio"], "muted": True}),
    ({"type": "stage.mute", "kind": "audio", "muted": 1}),
    ({"type": "stage.mute", "kind": "audio", "muted": "true"}),
    ({"type": "stage.mute", "kind": "audio", "muted": None}),
    ({"type": "stage.mute", "kind": "audio", "muted": True, "user_id": False}),
    ({"type": "chat.send", "text": 5}),
    ({"type": "chat.send", "text": None}),
    ({"type": "chat.send", "text": ["hi"]}),
    ({"type": "chat.send", "text": ""}),
    ({"type": "chat.send", "text": " \n\t "}),
    ({"type": "rtc.answer", "pc": "publish", "sdp": None}),
    ({"type": "rtc.answer", "pc": "publish", "sdp": {"type": "answer", "sdp": SDP}}),
    ({"type": "rtc.answer", "pc": "both", "sdp": SDP}),
    ({"type": "rtc.answer", "pc": "Publish", "sdp": SDP}),
    ({"type": "rtc.answer", "pc": None, "sdp": SDP}),
    ({"type": "rtc.answer", "pc": ["publish"], "sdp": SDP}),
    ({"type": "rtc.candidate", "pc": "send", "candidate": CANDIDATE}),
    ({"type": "rtc.candidate", "pc": "publish", "candidate": None}),
    ({"type": "rtc.candidate", "pc": "publish", "candidate": 1}),
    ({"type": "rtc.candidate", "pc": "publish", "candidate": CANDIDATE, "sdpMid": 0}),
    ({"type": "rtc.candidate", "pc": "publish", "candidate": CANDIDATE, "sdpMid": ""}),
    ({"type": "rtc.candidate", "pc": "publish", "candidate": CANDIDATE, "sdpMid": "m" * 33}),
    ({"type": "rtc.candidate", "pc": "publish", "candidate": CANDIDATE, "sdpMLineIndex": 64}),
    ({"type": "rtc.candidate", "pc": "publish", "candidate": CANDIDATE, "sdpMLineIndex": -1}),
    ({"type": "rtc.candidate", "pc": "publish", "candidate": CANDIDATE, "sdpMLineIndex": "0"}),
    ({"type": "rtc.candidate", "pc": "publish", "candidate": CANDIDATE, "sdpMLineIndex": True}),
    ({"type": "rtc.candidate", "pc": "publish", "candidate": CANDIDATE, "sdpMLineIndex": 0.5}),
    ({"type": "stats.report", "join_ms": -1}),
    ({"type": "stats.report", "join_ms": 600_001}),
    ({"type": "stats.report", "join_ms": 120_001}),
    ({"type": "stats.report", "available_out_bps": 50e6 + 1}),
    ({"type": "stats.report", "join_ms": "100"}),
    ({"type": "stats.report", "join_ms": True}),
    ({"type": "stats.report", "rtt_ms": 60_001}),
    ({"type": "stats.report", "rtt_ms": None}),
    ({"type": "stats.report", "available_out_bps": -0.5}),
]


@pytest.mark.parametrize("data", BAD_FIELDS, ids=[json.dumps(d)[:60] for d in BAD_FIELDS])
def test_wrong_field_type_or_value_is_invalid(data):
    error = parse_error(json.dumps(data))
    assert error.code == "invalid_field"


@pytest.mark.parametrize("text", ['{"type": "stats.report", "rtt_ms": NaN}', '{"type": "stats.report", "rtt_ms": Infinity}'])
def test_non_finite_numbers_are_invalid(text):
    assert parse_error(text).code == "invalid_field"


def test_error_detail_names_type_and_field():
    error = parse_error(raw(type="stage.invite", user_id="3"))
    assert error.detail.startswith("stage.invite: user_id ")
    assert str(error) == f"invalid_field: {error.detail}"


# --- chat length ----------------------------------------------------------------------------------------------

def test_too_long_chat_is_invalid():
    error = parse_error(raw(type="chat.send", text="x" * (MAX_CHAT_CHARS + 1)))
    assert error.code == "invalid_field"
    assert str(MAX_CHAT_CHARS) in error.detail


def test_chat_length_counts_characters_not_bytes():
    assert message_parse(raw(type="chat.send", text="é" * MAX_CHAT_CHARS)).fields["text"] == "é" * MAX_CHAT_CHARS


# --- SDP ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "sdp",
    [
        "",  # empty
        "\r\n\r\n",
        "hello",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",  # no v=0
        "o=- 1 2 IN IP4 127.0.0.1\r\nv=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",  # v=0 not first
        "v=1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
        "v=0\r\n",  # no m= line
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n",  # no m= line
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nnot a line\r\n",  # a line without <letter>=
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nx\r\n",
        "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n=foo\r\n",
        " v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
    ],
)
def test_bad_sdp_is_invalid(sdp):
    error = parse_error(raw(type="rtc.answer", pc="publish", sdp=sdp))
    assert error.code == "invalid_field"
    assert error.detail.startswith("rtc.answer: sdp ")


def test_sdp_length_limit():
    filler = "a=x-filler:" + "y" * (MAX_SDP_CHARS - len(SDP) - 20) + "\r\n"
    long_ok = SDP + filler
    assert len(long_ok) <= MAX_SDP_CHARS
    assert message_parse(raw(type="rtc.answer", pc="publish", sdp=long_ok)).fields["sdp"] == long_ok
    too_long = SDP + "a=x-filler:" + "y" * MAX_SDP_CHARS + "\r\n"
    assert len(too_long.encode()) < MAX_MESSAGE_BYTES  # refused for the SDP limit, not the frame size
    assert parse_error(raw(type="rtc.answer", pc="publish", sdp=too_long)).code == "invalid_field"


# --- ICE candidates ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "candidate",
    [
        "foo",
        "842163049 1 udp 1677729535 127.0.0.1 50000 typ host",  # no candidate: prefix
        " candidate:1 1 udp 1 127.0.0.1 1 typ host",
        "Candidate:1 1 udp 1 127.0.0.1 1 typ host",
        "candidate:" + "1" * MAX_CANDIDATE_CHARS,  # too long
    ],
)
def test_bad_candidate_is_invalid(candidate):
    error = parse_error(raw(type="rtc.candidate", pc="publish", candidate=candidate))
    assert error.code == "invalid_field"
    assert error.detail.startswith("rtc.candidate: candidate ")


# --- stats.report track reports ----------------------------------------------------------------------------------

def track(**extra: Any) -> dict[str, Any]:
    return {"kind": "video", "direction": "inbound", **extra}


@pytest.mark.parametrize(
    "tracks",
    [
        "video",
        {"kind": "video", "direction": "inbound"},  # an object, not a list
        None,
        [track()] * (MAX_REPORTED_TRACKS + 1),
        ["video"],
        [[track()]],
        [track(ssrc=1)],  # unknown field
        [{"kind": "video"}],  # no direction
        [{"direction": "inbound"}],  # no kind
        [track(kind="screen")],
        [track(direction="both")],
        [track(direction=None)],
        [track(user_id=0)],
        [track(user_id="4")],
        [track(bitrate_bps=-1)],
        [track(bitrate_bps=1e9 + 1)],
        [track(packet_loss=1.5)],
        [track(packet_loss=-0.1)],
        [track(jitter_ms="3")],
        [track(fps=1001)],
        [track(fps=True)],
        [track(), track(fps=-1)],  # the second one is wrong
    ],
)
def test_bad_track_reports_are_invalid(tracks):
    error = parse_error(raw(type="stats.report", tracks=tracks))
    assert error.code == "invalid_field"
    assert error.detail.startswith("stats.report: tracks ")


def test_track_report_limit_is_inclusive():
    tracks = [track(user_id=i + 1) for i in range(MAX_REPORTED_TRACKS)]
    assert len(message_parse(raw(type="stats.report", tracks=tracks)).fields["tracks"]) == MAX_REPORTED_TRACKS


def test_track_report_bounds_are_inclusive():
    report = track(bitrate_bps=50_000_000, packet_loss=1, jitter_ms=60_000, fps=240)
    (cleaned,) = message_parse(raw(type="stats.report", tracks=[report])).fields["tracks"]
    assert cleaned == {"kind": "video", "direction": "inbound", "bitrate_bps": 50e6, "packet_loss": 1.0,
                       "jitter_ms": 60_000.0, "fps": 240.0}


@pytest.mark.once
def test_stats_limits_are_what_a_browser_can_measure():
    # loss 0..1, rtt/jitter up to 60 s, bitrate up to 50 Mbit/s, join up to 2 min
    assert STATS_LIMITS == {"join_ms": 120_000, "rtt_ms": 60_000, "jitter_ms": 60_000, "packet_loss": 1,
                            "bitrate_bps": 50e6, "available_out_bps": 50e6, "fps": 240}
    top = {"join_ms": 120_000, "rtt_ms": 60_000, "available_out_bps": 50e6}
    assert message_parse(raw(type="stats.report", **top)).fields == {k: float(v) for k, v in top.items()}


@pytest.mark.once
@pytest.mark.parametrize(
    "data",
    [
        {"join_ms": 120_000.5},
        {"rtt_ms": 60_000.5},
        {"rtt_ms": -1},
        {"available_out_bps": 1e10},
        {"tracks": [track(bitrate_bps=50e6 + 1)]},
        {"tracks": [track(jitter_ms=60_001)]},
        {"tracks": [track(packet_loss=1.01)]},
        {"tracks": [track(fps=241)]},
        {"tracks": [track(kind="data")]},
        {"tracks": [track(direction="sendrecv")]},
    ],
    ids=lambda d: json.dumps(d)[:50],
)
def test_out_of_range_stats_are_refused_with_the_field_named(data):
    error = parse_error(raw(type="stats.report", **data))
    assert error.code == "invalid_field"
    field = next(iter(data))
    assert error.detail.startswith(f"stats.report: {field} ")
    if field == "tracks":
        assert f"[0].{next(iter(set(data['tracks'][0]) - {'kind', 'direction'}), None) or ''}" in error.detail


# --- text that cannot be stored: lone surrogates, NUL and other control characters ---------------------------------

# JSON escapes, as a client sends them: json.loads turns "\ud800" into a lone surrogate.
BAD_TEXT = [
    pytest.param('"\\ud800"', "U+D800", id="lone-high-surrogate"),
    pytest.param('"ok \\udfff"', "U+DFFF", id="lone-low-surrogate"),
    pytest.param('"a\\u0000b"', "U+0000", id="NUL"),
    pytest.param('"bell \\u0007"', "U+0007", id="BEL"),
    pytest.param('"esc \\u001b[31m"', "U+001B", id="ESC"),
    pytest.param('"del \\u007f"', "U+007F", id="DEL"),
    pytest.param('"c1 \\u0085"', "U+0085", id="C1-NEL"),
]


@pytest.mark.once
@pytest.mark.parametrize("text, named", BAD_TEXT)
@pytest.mark.parametrize(
    "frame, field",
    [
        ('{"type": "chat.send", "text": %s}', "chat.send: text"),
        ('{"type": "destination.add", "name": %s, "url": "rtmp://example.com/live/k"}', "destination.add: name"),
        ('{"type": "destination.add", "name": "YT", "url": %s}', "destination.add: url"),
        ('{"type": "rtc.candidate", "pc": "publish", "candidate": %s}', "rtc.candidate: candidate"),
        ('{"type": "rtc.candidate", "pc": "publish", "candidate": "", "sdpMid": %s}', "rtc.candidate: sdpMid"),
    ],
    ids=["chat", "destination-name", "destination-url", "candidate", "mid"],
)
def test_every_free_text_field_refuses_text_that_cannot_be_stored(frame, field, text, named):
    error = parse_error(frame % text)
    assert error.code == "invalid_field"
    assert error.detail.startswith(f"{field} contains ")
    assert named in error.detail


@pytest.mark.once
def test_sdp_refuses_a_lone_surrogate_and_nul_but_keeps_its_line_breaks():
    assert parse_error(raw(type="rtc.answer", pc="publish", sdp=SDP + "a=x:\ud800\r\n")).code == "invalid_field"
    assert parse_error(raw(type="rtc.answer", pc="publish", sdp=SDP + "a=x:\x00\r\n")).code == "invalid_field"
    assert message_parse(raw(type="rtc.answer", pc="publish", sdp=SDP)).fields["sdp"] == SDP


@pytest.mark.once
def test_chat_keeps_line_breaks_tabs_and_any_real_character():
    text = "line one\nline two\r\n\tindented: é ✓ 👋 \u200b"
    assert message_parse(raw(type="chat.send", text=text)).fields["text"] == text
    # a surrogate pair, escaped as JSON escapes it, is one real character
    assert message_parse('{"type": "chat.send", "text": "\\ud83d\\ude00"}').fields["text"] == "\U0001F600"


@pytest.mark.once
def test_names_and_urls_are_one_line():
    error = parse_error(raw(type="destination.add", name="You\nTube", url="rtmp://example.com/live/k"))
    assert "U+000A" in error.detail and "single line" in error.detail


@pytest.mark.once
@pytest.mark.parametrize("ident", ["\ud800", "a\x00", "two\nlines"])
def test_id_with_text_that_cannot_be_echoed_is_invalid(ident):
    text = json.dumps({"type": "ping", "id": ident})
    error = parse_error(text)
    assert (error.code, error.ref) == ("invalid_field", None)


@pytest.mark.once
def test_text_problem_names_the_character():
    assert text_problem("fine") is None
    assert text_problem("a\tb\nc", multiline=True) is None
    assert "surrogate" in text_problem("\udbff")
    assert "U+0000" in text_problem("\x00", multiline=True)


# --- SocketBudgets: one bucket per person, a cap on sockets per class ------------------------------------------

@pytest.mark.once
def test_a_persons_sockets_share_one_bucket():
    clock = FakeClock()
    budgets = SocketBudgets()
    make = lambda: TokenBucket(rate_per_s=1, burst=4, clock=clock)  # noqa: E731
    first = budgets.open(user=1, classroom=7, max_sockets=5, bucket=make)
    second = budgets.open(user=1, classroom=8, max_sockets=5, bucket=make)  # another class: same person
    other = budgets.open(user=2, classroom=7, max_sockets=5, bucket=make)
    assert first is second and first is not other
    assert takes(first, 2) + takes(second, 3) == [True] * 4 + [False]
    assert takes(other, 4) == [True] * 4


@pytest.mark.once
def test_socket_cap_is_per_person_and_class_and_frees_on_close():
    budgets = SocketBudgets()
    make = lambda: TokenBucket(rate_per_s=1, burst=1)  # noqa: E731
    assert budgets.open(user=1, classroom=7, max_sockets=2, bucket=make) is not None
    assert budgets.open(user=1, classroom=7, max_sockets=2, bucket=make) is not None
    assert budgets.open(user=1, classroom=7, max_sockets=2, bucket=make) is None
    assert budgets.open(user=1, classroom=8, max_sockets=2, bucket=make) is not None
    assert budgets.open(user=2, classroom=7, max_sockets=2, bucket=make) is not None
    budgets.close(user=1, classroom=7)
    assert budgets.sockets(user=1, classroom=7) == 1
    assert budgets.open(user=1, classroom=7, max_sockets=2, bucket=make) is not None
    assert budgets.open(user=9, classroom=7, max_sockets=0, bucket=make) is not None  # 0: no cap


@pytest.mark.once
def test_reopening_does_not_refill_the_bucket():
    clock = FakeClock()
    budgets = SocketBudgets()
    make = lambda: TokenBucket(rate_per_s=1, burst=3, clock=clock)  # noqa: E731
    bucket = budgets.open(user=1, classroom=7, max_sockets=5, bucket=make)
    assert takes(bucket, 4) == [True] * 3 + [False]
    budgets.close(user=1, classroom=7)
    again = budgets.open(user=1, classroom=7, max_sockets=5, bucket=make)
    assert again is bucket and again.take() is False
    budgets.close(user=1, classroom=7)
    budgets._prune()  # not refilled yet: kept
    assert budgets.open(user=1, classroom=7, max_sockets=5, bucket=make) is bucket
    budgets.close(user=1, classroom=7)
    clock.advance(10)
    budgets._prune()  # refilled: a new bucket would be the same, so it is forgotten
    assert budgets.open(user=1, classroom=7, max_sockets=5, bucket=make) is not bucket


# --- TokenBucket ---------------------------------------------------------------------------------------------------

class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def takes(bucket: TokenBucket, n: int) -> list[bool]:
    return [bucket.take() for _ in range(n)]


def test_bucket_starts_full_and_allows_a_burst():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=10, burst=20, clock=clock)
    assert takes(bucket, 20) == [True] * 20
    assert takes(bucket, 5) == [False] * 5


def test_bucket_refills_at_its_rate():
    # times and rates are exact binary fractions, so no float rounding is involved
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=4, burst=8, clock=clock)
    takes(bucket, 8)
    clock.advance(0.25)  # one token
    assert takes(bucket, 2) == [True, False]
    clock.advance(1.375)  # five and a half tokens
    assert takes(bucket, 6) == [True] * 5 + [False]
    clock.advance(0.125)  # the half plus another half
    assert takes(bucket, 2) == [True, False]


def test_refused_takes_do_not_use_up_the_refill():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=2, burst=2, clock=clock)
    takes(bucket, 2)
    for _ in range(8):  # refused, while time passes slowly
        assert bucket.take() is False
        clock.advance(0.0625)
    # 0.5 s since the bucket was empty: one token, despite the refusals in between
    assert takes(bucket, 2) == [True, False]


def test_bucket_never_holds_more_than_the_burst():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=5, burst=3, clock=clock)
    clock.advance(3600)
    assert takes(bucket, 4) == [True, True, True, False]


def test_bucket_without_time_passing_refuses_after_burst_forever():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=1000, burst=1, clock=clock)
    assert takes(bucket, 100) == [True] + [False] * 99


def test_fractional_rate():
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=0.5, burst=1, clock=clock)
    assert takes(bucket, 2) == [True, False]
    clock.advance(1.0)
    assert bucket.take() is False
    clock.advance(1.0)
    assert takes(bucket, 2) == [True, False]


def test_bucket_reads_the_clock_it_was_given():
    calls = []

    def clock() -> float:
        calls.append(1)
        return 5.0

    bucket = TokenBucket(rate_per_s=1, burst=1, clock=clock)
    bucket.take()
    bucket.take()
    assert len(calls) == 3
