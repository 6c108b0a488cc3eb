"""A publisher's lost video packets at the node, golden cases with a fake clock and aiortc's own RtpPacket:
the jitter buffer's deadline on holes (rtc.encoded_tap.receiver_video_deadline) - what aiortc's buffer
would hold for 512 packets is released after the deadline, from the next whole frame, and the caller
hears of the gap once - and the NACK budget (receiver_nack_budget): each lost packet asked for a few
times, a round trip apart, while still useful."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiortc import RTCRtpReceiver
from aiortc.rtp import RtpPacket

from rtc.encoded_tap import (
    BudgetedNackGenerator,
    DeadlineJitterBuffer,
    TapError,
    loss_timing,
    receiver_nack_budget,
    receiver_video_deadline,
)

pytestmark = pytest.mark.once  # pure: the deployment mode does not matter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def packet(seq: int, timestamp: int) -> RtpPacket:
    p = RtpPacket(payload_type=96, sequence_number=seq & 0xFFFF, timestamp=timestamp)
    p._data = bytes([seq & 0xFF])  # noqa: SLF001 - what aiortc's receiver sets after depayloading
    return p


def frames_of(buffer: DeadlineJitterBuffer, packets: list[RtpPacket]) -> list[int]:
    out = []
    for p in packets:
        _, frame = buffer.add(p)
        if frame is not None:
            out.append(frame.timestamp)
    return out


def make(clock: Clock, gaps: list[int]) -> DeadlineJitterBuffer:
    return DeadlineJitterBuffer(capacity=512, give_up_s=0.5, on_gap=lambda: gaps.append(1), clock=clock)


def test_in_order_frames_flow_as_in_aiortc() -> None:
    clock, gaps = Clock(), []
    buffer = make(clock, gaps)
    # frames of two packets each: a frame is out once the next frame's first packet arrived
    got = frames_of(buffer, [packet(s, 3000 * (s // 2)) for s in range(10)])
    assert got == [0, 3000, 6000, 9000]
    assert gaps == []


def test_a_hole_is_waited_for_then_given_up_on() -> None:
    clock, gaps = Clock(), []
    buffer = make(clock, gaps)
    assert frames_of(buffer, [packet(0, 0), packet(1, 0), packet(2, 3000)]) == [0]
    # packet 3 (second half of frame 3000) is lost; later frames queue behind it
    assert frames_of(buffer, [packet(4, 6000), packet(5, 6000), packet(6, 9000)]) == []
    clock.now += 0.3  # a retransmission could still come
    assert frames_of(buffer, [packet(7, 9000), packet(8, 12000)]) == []
    assert gaps == []
    clock.now += 0.3  # past the deadline: frame 3000 goes, and 6000 (whose start might have been in
    # the hole: the caller waits for a keyframe anyway); 9000 comes out at once
    assert frames_of(buffer, [packet(9, 12000)]) == [9000]
    assert gaps == [1] and buffer.gaps == 1
    assert frames_of(buffer, [packet(10, 15000)]) == [12000]


def test_a_retransmission_in_time_loses_nothing() -> None:
    clock, gaps = Clock(), []
    buffer = make(clock, gaps)
    frames_of(buffer, [packet(0, 0), packet(1, 0), packet(2, 3000), packet(4, 6000)])
    clock.now += 0.4
    assert frames_of(buffer, [packet(3, 3000)]) == [3000]
    clock.now += 1.0
    assert frames_of(buffer, [packet(5, 9000)]) == [6000]
    assert gaps == []


def test_a_frame_whose_start_was_lost_is_dropped_with_it() -> None:
    clock, gaps = Clock(), []
    buffer = make(clock, gaps)
    frames_of(buffer, [packet(0, 0), packet(1, 3000)])  # frame 0 out
    # 1 (start of frame 3000) arrived, 2 lost, 3 is frame 3000's end: 3000 is incomplete
    frames_of(buffer, [packet(3, 3000), packet(4, 6000), packet(5, 6000)])
    clock.now += 0.6
    # 3000 (with a hole in it) never comes out; 6000 is whole
    assert frames_of(buffer, [packet(6, 9000), packet(7, 12000)]) == [6000, 9000]
    assert gaps == [1]


def test_everything_lost_up_to_the_newest_then_flow_resumes() -> None:
    clock, gaps = Clock(), []
    buffer = make(clock, gaps)
    frames_of(buffer, [packet(0, 0), packet(1, 3000)])
    frames_of(buffer, [packet(3, 3000)])  # 2 lost; 3 is the newest and is frame 3000's
    clock.now += 0.6
    assert frames_of(buffer, [packet(4, 3000)]) == []  # given up: frame 3000 goes, nothing newer yet
    assert gaps == [1]
    assert frames_of(buffer, [packet(5, 6000), packet(6, 9000)]) == [6000]
    assert gaps == [1]  # no hole left: nothing more is given up


def test_sequence_numbers_wrap() -> None:
    clock, gaps = Clock(), []
    buffer = make(clock, gaps)
    start = 0xFFFE
    frames_of(buffer, [packet(start, 0), packet(start + 1, 3000)])
    frames_of(buffer, [packet(start + 3, 6000), packet(start + 4, 9000)])  # start+2 (0x0000) lost
    clock.now += 0.6
    # 6000 (right after the hole) goes too: its start might have been the lost packet
    assert frames_of(buffer, [packet(start + 5, 12000), packet(start + 6, 15000)]) == [9000, 12000]
    assert gaps == [1]


def test_the_seam_replaces_only_a_video_receivers_buffer() -> None:
    transport = SimpleNamespace(state="new")
    video, audio = RTCRtpReceiver("video", transport), RTCRtpReceiver("audio", transport)
    buffer = receiver_video_deadline(video, on_gap=lambda: None)
    assert receiver_video_deadline(video, on_gap=lambda: None) is buffer  # idempotent
    assert isinstance(video._RTCRtpReceiver__jitter_buffer, DeadlineJitterBuffer)  # noqa: SLF001
    with pytest.raises(TapError):
        receiver_video_deadline(audio, on_gap=lambda: None)


def nacks(generator: BudgetedNackGenerator, seqs: list[int]) -> list[list[int]]:
    """What aiortc's receiver would send: one NACK of sorted(missing) per add() that returns True."""
    sent = []
    for seq in seqs:
        if generator.add(packet(seq, 0)):
            sent.append(sorted(generator.missing))
    return sent


def test_each_lost_packet_is_asked_for_a_few_times_a_round_trip_apart() -> None:
    clock = Clock()
    generator = BudgetedNackGenerator(tries=3, retry_s=0.15, max_age_s=0.5, clock=clock)
    assert nacks(generator, [10, 11, 13]) == [[12]]
    assert nacks(generator, [14, 16]) == [[15]]  # aiortc would ask for 12 again here
    clock.now += 0.16
    assert nacks(generator, [17]) == [[12, 15]]
    clock.now += 0.16
    assert nacks(generator, [18]) == [[12, 15]]
    clock.now += 0.16
    assert nacks(generator, [19]) == []  # asked three times: given up
    assert generator.asked == 6


def test_a_packet_that_arrives_is_no_longer_asked_for_nor_one_past_its_use() -> None:
    clock = Clock()
    generator = BudgetedNackGenerator(tries=10, retry_s=0.1, max_age_s=0.5, clock=clock)
    assert nacks(generator, [0, 2, 4]) == [[1], [3]]
    assert nacks(generator, [1]) == []  # the retransmission of 1
    clock.now += 0.2
    assert nacks(generator, [5]) == [[3]]
    clock.now += 0.4  # 3 is 0.6 s old: the jitter buffer has moved on
    assert nacks(generator, [6]) == []


def test_sequence_numbers_wrap_for_nacks() -> None:
    clock = Clock()
    generator = BudgetedNackGenerator(tries=3, retry_s=0.15, max_age_s=0.5, clock=clock)
    assert nacks(generator, [0xFFFE, 1]) == [[0, 0xFFFF]]


def test_the_nack_seam_is_installed_once() -> None:
    receiver = RTCRtpReceiver("video", SimpleNamespace(state="new"))
    generator = receiver_nack_budget(receiver)
    assert receiver_nack_budget(receiver) is generator
    assert receiver._RTCRtpReceiver__nack_generator is generator  # noqa: SLF001


def test_loss_timing_follows_the_round_trip_within_bounds() -> None:
    assert loss_timing(None) == (0.5, 0.15)  # nothing measured yet: the defaults
    assert loss_timing(0.02) == (0.5, 0.15)  # a short path: three asks fit easily
    give_up, retry = loss_timing(0.3)  # a queue on a capped link
    assert retry == pytest.approx(0.36) and give_up == 1.0  # never past what would be stale
    give_up, retry = loss_timing(0.2)
    assert retry == pytest.approx(0.24) and give_up == pytest.approx(0.77)
