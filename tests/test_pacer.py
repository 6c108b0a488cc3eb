"""The pacer in front of a subscriber's connection (rtc/pacer.py, rtc/pacing.py): video at the link's
pace, audio never held, retransmissions within a budget and only while useful, abs-send-time stamped
when a packet leaves; and the seam against the pinned aiortc."""
from __future__ import annotations

import asyncio
import struct
from fractions import Fraction

import av
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters

from rtc.pacer import Pacer, PacerConfig, abs_send_time_set, payload_offset
from rtc.pacing import connection_pace

pytestmark = pytest.mark.once  # pure media: the deployment mode does not matter

AUDIO_PT, VIDEO_PT, RTX_PT = 96, 97, 98


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def rtp(pt: int, seq: int, timestamp: int = 1000, size: int = 1200, *, abs_send_time: int | None = None) -> bytes:
    packet = RtpPacket(payload_type=pt, sequence_number=seq, timestamp=timestamp, ssrc=1234)
    packet.payload = bytes(size)
    extensions = HeaderExtensionsMap()
    if abs_send_time is not None:
        extensions.configure(RTCRtpParameters(headerExtensions=[
            RTCRtpHeaderExtensionParameters(id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time")]))
        packet.extensions.abs_send_time = abs_send_time
    return packet.serialize(extensions)


def rtx_of(original_seq: int, timestamp: int, size: int = 1200) -> bytes:
    packet = RtpPacket(payload_type=RTX_PT, sequence_number=7, timestamp=timestamp, ssrc=999)
    packet.payload = struct.pack("!H", original_seq) + bytes(size)
    return packet.serialize(HeaderExtensionsMap())


def pacer(time_: FakeTime, **config: float) -> tuple[Pacer, list[tuple[float, bytes]]]:
    sent: list[tuple[float, bytes]] = []
    p = Pacer(PacerConfig(abs_send_time_id=None, **config), audio_pts=frozenset({AUDIO_PT}),
              rtx_pts=frozenset({RTX_PT}), clock=time_.clock, sleep=time_.sleep)

    async def send(data: bytes) -> None:
        sent.append((time_.now, data))

    p._out = send  # type: ignore[attr-defined]
    return p, sent


async def test_without_an_estimate_nothing_waits():
    t = FakeTime()
    p, sent = pacer(t)
    for seq in range(50):
        await p.send(rtp(VIDEO_PT, seq), p._out)  # type: ignore[attr-defined]
    assert len(sent) == 50 and t.now == 0.0


async def test_video_leaves_at_the_pacing_rate():
    t = FakeTime()
    p, sent = pacer(t)
    p.set_estimate(300_000)  # paced at 1.5 x = 450 kbit/s
    for seq in range(100):
        await p.send(rtp(VIDEO_PT, seq), p._out)  # type: ignore[attr-defined]
    total_bits = sum(len(data) for _, data in sent) * 8
    elapsed = sent[-1][0] - sent[0][0]
    assert len(sent) == 100
    assert total_bits / elapsed == pytest.approx(450_000, rel=0.06)


async def test_audio_is_never_held_behind_video():
    t = FakeTime()
    p, sent = pacer(t)
    p.set_estimate(150_000)
    video = asyncio.ensure_future(asyncio.gather(*(p.send(rtp(VIDEO_PT, s), p._out) for s in range(40))))  # type: ignore[attr-defined]
    await asyncio.sleep(0)
    waited_before = t.now
    await p.send(rtp(AUDIO_PT, 500, size=120), p._out)  # type: ignore[attr-defined]
    assert t.now == waited_before  # audio went without waiting for the video backlog
    audio_position = next(i for i, (_, data) in enumerate(sent) if data[1] & 0x7F == AUDIO_PT)
    assert audio_position < 40
    await video
    assert len(sent) == 41


async def test_retransmissions_only_within_budget_and_while_useful():
    t = FakeTime()
    p, sent = pacer(t, nack_share=0.25, nack_max_age_s=1.0)
    p.set_estimate(400_000)  # 100 kbit/s of retransmissions: ~12.5 kB/s, a bucket of half a second
    for seq in range(10):
        await p.send(rtp(VIDEO_PT, seq, timestamp=9000), p._out)  # type: ignore[attr-defined]
    before = len(sent)
    for seq in range(10):  # a NACK for every packet at once: only what the budget holds goes
        await p.send(rtx_of(seq, 9000), p._out)  # type: ignore[attr-defined]
    resent = len(sent) - before
    assert 1 <= resent < 10 and p.stats.dropped_rtx_budget == 10 - resent
    await p.send(rtx_of(4242, 9000), p._out)  # type: ignore[attr-defined]  # never sent: nothing to resend
    t.now += 5.0  # long past: the receiver has moved on
    await p.send(rtx_of(0, 9000), p._out)  # type: ignore[attr-defined]
    assert p.stats.dropped_rtx_age == 2 and len(sent) == before + resent


def test_abs_send_time_is_rewritten_in_place_and_nothing_else_changes():
    original = rtp(VIDEO_PT, 1, abs_send_time=0x123456)
    stamped = abs_send_time_set(original, 3, 0xABCDEF)
    assert len(stamped) == len(original)
    diff = [i for i, (a, b) in enumerate(zip(original, stamped)) if a != b]
    assert bytes(stamped[diff[0]:diff[0] + 3]) == bytes.fromhex("abcdef") and len(diff) <= 3
    plain = rtp(VIDEO_PT, 1)
    assert abs_send_time_set(plain, 3, 1) == plain  # no extension: untouched
    assert payload_offset(original) == len(original) - 1200


class PacketTrack(MediaStreamTrack):
    """Pre-encoded VP8 at ~1 Mbit/s (noise compresses badly), 30 fps: far more than the estimate."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        codec = av.CodecContext.create("libvpx", "w")
        codec.width, codec.height, codec.pix_fmt = 320, 240, "yuv420p"
        codec.time_base, codec.bit_rate = Fraction(1, 30), 1_000_000
        codec.options = {"deadline": "realtime", "cpu-used": "8"}
        import numpy as np

        rng = np.random.default_rng(1)
        self.payloads = []
        for i in range(60):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = i
            self.payloads += [bytes(p) for p in codec.encode(frame)]

    async def recv(self) -> av.Packet:
        await asyncio.sleep(1 / 30)
        packet = av.Packet(self.payloads[self.n % len(self.payloads)])
        packet.pts, packet.time_base = self.n * 3000, Fraction(1, 90000)
        self.n += 1
        return packet


@pytest.mark.slow
async def test_a_paced_connection_sends_no_faster_than_its_pace(loopback_only_ice):
    sender, receiver = RTCPeerConnection(), RTCPeerConnection()
    try:
        sender.addTrack(PacketTrack())
        received = {"bytes": 0}

        @receiver.on("track")
        def on_track(track):
            async def read():
                while True:
                    frame = await track.recv()
                    received["bytes"] += 1  # frames decoded: the stream stays decodable
            asyncio.ensure_future(read())

        await sender.setLocalDescription(await sender.createOffer())
        await receiver.setRemoteDescription(sender.localDescription)
        await receiver.setLocalDescription(await receiver.createAnswer())
        await sender.setRemoteDescription(receiver.localDescription)
        pace = Pacer(PacerConfig(factor=1.0, floor_bps=50_000))
        pace.set_estimate(300_000)
        connection_pace(sender, pace)
        connection_pace(sender, pace)  # idempotent
        await asyncio.sleep(1.0)
        start_bytes = sender.getSenders()[0].transport._RTCDtlsTransport__tx_bytes
        await asyncio.sleep(3.0)
        sent_bits = (sender.getSenders()[0].transport._RTCDtlsTransport__tx_bytes - start_bytes) * 8
        assert sent_bits / 3.0 < 300_000 * 1.15  # paced, SRTP overhead included
        assert pace.stats.sent["video"] > 30 and pace.stats.waited_s > 0
        assert received["bytes"] > 0
    finally:
        await sender.close()
        await receiver.close()


@pytest.fixture
def loopback_only_ice():
    from classroom.media_node.node import ice_host_addresses_pin

    ice_host_addresses_pin(["127.0.0.1"])


@pytest.mark.slow
async def test_a_room_paces_each_subscriber_at_its_own_estimate(room_with):
    from .test_sfu import join, wait_for

    room, clients = room_with(pacing=PacerConfig())
    a, b = await join(room, clients, "a", 1), await join(room, clients, "b", 2)
    await wait_for(lambda: a.receiver_track(2, "video") is not None and b.receiver_track(1, "video") is not None)
    frame = await asyncio.wait_for(b.receiver_track(1, "video").recv(), timeout=20)
    assert frame.width == 640  # paced, the picture still arrives whole
    pacer = room.peers["b"].pacer
    assert pacer is not None and pacer.audio_pts and pacer.rtx_pts  # payload types from the negotiation
    # aiortc's receiver (standing in for the browser) sends REMB: the pacer follows it
    await wait_for(lambda: pacer.estimate_bps is not None, timeout=20)
    assert pacer.stats.sent["video"] > 0 and pacer.stats.sent["audio"] > 0
    assert room.peers["a"].pacer is not pacer  # one per subscriber
