"""Transport-wide congestion control feedback (rtc/transport_cc.py), golden cases: the packets the node
sends a publisher's browser, parsed back by an independent reader of the draft's format, and the SDP the
publish offer carries."""
from __future__ import annotations

import struct

import pytest

from rtc.transport_cc import (
    URI,
    TransportFeedback,
    answer_transport_cc_id,
    offer_with_transport_cc,
    parse_feedback,
    transport_sequence,
)

pytestmark = pytest.mark.once  # pure: the deployment mode does not matter


def test_arrivals_round_trip_in_quarter_milliseconds() -> None:
    fb = TransportFeedback(sender_ssrc=0x11223344)
    arrivals = {100: 10.0003, 101: 10.0051, 103: 10.0420, 104: 10.0419}  # 102 lost, 104 before 103
    for seq, t in arrivals.items():
        fb.on_packet(seq, t)
    (packet,) = fb.build()
    assert packet[0] & 0x1F == 15 and packet[1] == 205
    assert len(packet) % 4 == 0 and (struct.unpack_from("!H", packet, 2)[0] + 1) * 4 == len(packet)
    assert struct.unpack_from("!I", packet, 4)[0] == 0x11223344
    base, count, got = parse_feedback(packet)
    assert (base, count) == (100, 0)
    assert got[2] is None
    for seq, t in arrivals.items():
        assert got[seq - 100] == pytest.approx(t, abs=0.000125)  # 250 us steps, rounded
    assert fb.stats.reported == 4 and fb.stats.lost == 1


def test_each_packet_is_reported_once_and_a_late_one_stays_lost() -> None:
    fb = TransportFeedback(sender_ssrc=1)
    fb.on_packet(1, 1.0)
    fb.on_packet(3, 1.01)
    first = fb.build()
    assert fb.build() == []  # nothing new
    fb.on_packet(2, 1.02)  # reported lost already
    fb.on_packet(4, 1.03)
    (second,) = fb.build()
    base, count, got = parse_feedback(second)
    assert (base, count, len(got)) == (4, 1, 1)
    assert parse_feedback(first[0])[2][1] is None
    assert fb.stats.late == 1


def test_a_long_silence_and_reordering_before_the_first_report() -> None:
    fb = TransportFeedback(sender_ssrc=1)
    fb.on_packet(11, 5.0)
    fb.on_packet(10, 5.001)  # reordered before anything was reported: reported, not lost
    fb.on_packet(12, 9.5)  # 4.5 s later: a two-byte delta (negative ones too) still fits up to 8 s
    fb.on_packet(13, 25.0)  # 15.5 s: does not fit, a second feedback starts from its own reference
    packets = fb.build()
    assert len(packets) == 2
    base, _, got = parse_feedback(packets[0])
    assert base == 10 and got == [pytest.approx(5.001, abs=1e-4), pytest.approx(5.0, abs=1e-4),
                                  pytest.approx(9.5, abs=1e-4)]
    base, _, got = parse_feedback(packets[1])
    assert base == 13 and got == [pytest.approx(25.0, abs=1e-4)]


def test_sequence_numbers_wrap_and_long_runs_split() -> None:
    fb = TransportFeedback(sender_ssrc=1)
    for i in range(1000):
        fb.on_packet((65000 + i) & 0xFFFF, 1.0 + i * 0.001)
    packets = fb.build()
    assert len(packets) == 3  # at most 400 statuses each
    statuses = [s for p in packets for s in parse_feedback(p)[2]]
    assert len(statuses) == 1000 and None not in statuses
    assert [parse_feedback(p)[1] for p in packets] == [0, 1, 2]
    assert parse_feedback(packets[2])[0] == (65000 + 800) & 0xFFFF


def test_the_offer_asks_for_transport_cc_on_audio_and_video_but_not_rtx() -> None:
    sdp = (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=rtpmap:96 opus/48000/2\r\n"
        "a=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n"
        "m=video 9 UDP/TLS/RTP/SAVPF 97 98\r\na=mid:1\r\na=rtpmap:97 VP8/90000\r\na=rtpmap:98 rtx/90000\r\n"
        "a=fmtp:98 apt=97\r\na=rtcp-fb:97 nack\r\na=extmap:3 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n"
    )
    offer = offer_with_transport_cc(sdp, ext_id=5)
    assert offer.count(f"a=extmap:5 {URI}\r\n") == 2
    assert "a=rtcp-fb:96 transport-cc\r\n" in offer and "a=rtcp-fb:97 transport-cc\r\n" in offer
    assert "a=rtcp-fb:98 transport-cc" not in offer
    assert offer_with_transport_cc(offer, ext_id=5) == offer  # once
    assert answer_transport_cc_id(offer) == 5
    assert answer_transport_cc_id(sdp) is None


def test_the_sequence_number_is_read_from_a_one_byte_extension() -> None:
    header = bytes([0x90, 96]) + struct.pack("!HII", 7, 1234, 42)
    ext = bytes([0x10 | 0x01, 0xAB, 0xCD]) + bytes([0x52, 0x01, 0x02, 0x03])  # id 1 (2 bytes), id 5 (3 bytes)
    ext += bytes(-len(ext) % 4)
    packet = header + struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext + b"payload"
    assert transport_sequence(packet, 1) == 0xABCD
    assert transport_sequence(packet, 5) is None  # three bytes: not a transport-wide number
    assert transport_sequence(packet, 2) is None


def test_a_first_arrival_just_under_a_reference_boundary_still_fits_one_byte() -> None:
    fb = TransportFeedback(sender_ssrc=1)
    fb.on_packet(1, 0.064 * 1000 - 1e-9)  # float rounding once made this delta 256 ticks
    fb.on_packet(2, 0.064 * 1000 + 0.001)
    (packet,) = fb.build()
    _, _, got = parse_feedback(packet)
    assert got == [pytest.approx(64.0, abs=1e-4), pytest.approx(64.001, abs=1e-4)]
