"""Forwarding without transcoding, with real aiortc clients around the media node's Room: the payload a
publisher sends is the payload a subscriber receives, keyframe requests reach the publisher (coalesced),
a late joiner gets a picture, REMB from subscribers caps what the publisher is told, and the same
holds for H.264. Plus the ForwardTrack's own rules (keyframe gating, clock continuity, overflow)."""
from __future__ import annotations

import asyncio
import time
from fractions import Fraction

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci

from sfu.forwarding import REMB_FLOOR_BPS, STALE_AFTER_S, ForwardTrack, Frame, Lateness, PublishedTrack, is_keyframe
from classroom.media_node.node import ice_host_addresses_pin, rtc_configuration
from sfu.room import Room
from rtc.encoded_tap import receiver_tap

from .test_sfu import join, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.once]  # pure media: the deployment mode does not matter


def vp8_packets(count: int = 300, gop: int = 30) -> list[bytes]:
    """A real VP8 stream (320x240, moving), keyframe every `gop` frames: what a publisher would send."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = 320, 240, "yuv420p"
    codec.time_base = Fraction(1, 30)
    codec.options = {"deadline": "realtime", "cpu-used": "8", "g": str(gop), "keyint_min": str(gop)}
    out = []
    for i in range(count):
        picture = np.zeros((240, 320, 3), np.uint8)
        picture[:, (i * 3) % 320:, 1] = 180
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        out += [bytes(p) for p in codec.encode(frame)]
    return out


class PacketTrack(MediaStreamTrack):
    """Sends pre-encoded packets at 30 fps, round and round (aiortc's sender only packetizes them)."""

    kind = "video"

    def __init__(self, payloads: list[bytes]) -> None:
        super().__init__()
        self.payloads = payloads
        self.n = 0
        self.started = time.monotonic()

    async def recv(self) -> av.Packet:
        await asyncio.sleep(max(0.0, self.started + self.n / 30 - time.monotonic()))
        packet = av.Packet(self.payloads[self.n % len(self.payloads)])
        packet.pts, packet.time_base = self.n * 3000, Fraction(1, 90000)
        self.n += 1
        return packet


def tap_collector(store: dict[int, list[bytes]]):
    """Tap every subscribe receiver of a client (by publisher user id): encoded frames as received."""

    def on_offer(pc) -> None:
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "video":
                frames = store.setdefault(id(transceiver), [])
                receiver_tap(transceiver.receiver, on_frame=lambda c, d, t, r, f=frames: f.append(d), decode=True)

    return on_offer


@pytest.fixture
def room_h264():
    ice_host_addresses_pin(["127.0.0.1"])
    clients = {}

    async def send(channel, message):
        await clients[channel].deliver(message)

    return Room(session_id=1, rtc_config=rtc_configuration(), send=send, video_codec="h264"), clients


async def close_all(room, clients):
    for client in clients.values():
        await client.close()
    async with room.lock:
        await room.close(reason="test_over")


async def test_forwarded_payloads_are_bit_exact_and_nothing_is_decoded(room_and_clients):
    room, clients = room_and_clients
    payloads = vp8_packets()
    received: dict[int, list[bytes]] = {}
    try:
        await join(room, clients, "pub", 1, make_track=lambda kind: PacketTrack(payloads) if kind == "video" else None)
        await join(room, clients, "sub", 2, publish=False, on_subscribe_offer=tap_collector(received))
        await wait_for(lambda: any(len(v) >= 90 for v in received.values()), timeout=30)
        got = max(received.values(), key=len)
        # The subscriber starts at a keyframe, then gets exactly the publisher's frames, in order.
        assert is_keyframe("vp8", got[0])
        start = payloads.index(got[0])
        expected = (payloads * 3)[start:start + len(got)]
        assert got == expected
        # The node decoded nothing: its publish receivers' tracks never yield a frame.
        source = room.peers["pub"].published["video"].tracks[0]
        assert source.frames >= 90 and source.codec == "vp8"
        forward = next(iter(source.outputs))
        assert forward.forwarded >= 90
    finally:
        await close_all(room, clients)


async def publisher_and_subscriber(room, clients):
    """A publisher and one subscriber that has had its first picture."""
    pub = await join(room, clients, "pub", 1)
    sub = await join(room, clients, "sub", 2, publish=False)
    await wait_for(lambda: sub.receiver_track(1, "video") is not None)
    await asyncio.wait_for(sub.receiver_track(1, "video").recv(), timeout=20)
    return pub, sub


async def test_keyframe_requests_reach_the_publisher_coalesced(room_and_clients):
    room, clients = room_and_clients
    try:
        pub, sub = await publisher_and_subscriber(room, clients)
        await wait_for(lambda: "publish" in pub.pcs)
        sender = next(t.sender for t in pub.pcs["publish"].getTransceivers() if t.kind == "video")
        asked = []
        original = sender._send_keyframe
        sender._send_keyframe = lambda: (asked.append(time.monotonic()), original())
        await asyncio.sleep(1.0)  # past the node's own keyframe request for this new subscriber
        asked.clear()
        receiver = next(t.receiver for t in sub.pcs["subscribe"].getTransceivers() if t.kind == "video")
        from rtc.encoded_tap import receiver_request_keyframe

        for _ in range(5):  # a burst of PLIs from the subscriber...
            assert await receiver_request_keyframe(receiver)
        await wait_for(lambda: len(asked) >= 1, timeout=10)
        await asyncio.sleep(1.0)
        assert 1 <= len(asked) <= 2, asked  # ...costs the publisher one keyframe (two at most)
    finally:
        await close_all(room, clients)


async def test_a_late_joiner_gets_a_picture_at_once(room_and_clients):
    room, clients = room_and_clients
    try:
        pub = await join(room, clients, "pub", 1)  # aiortc's encoder: a keyframe only when asked
        await join(room, clients, "early", 2, publish=False)
        await asyncio.sleep(3)
        late = await join(room, clients, "late", 3, publish=False)
        await wait_for(lambda: late.receiver_track(1, "video") is not None)
        started = time.monotonic()
        frame = await asyncio.wait_for(late.receiver_track(1, "video").recv(), timeout=20)
        print(f"late joiner: first picture {1000 * (time.monotonic() - started):.0f} ms after its track was offered")
        assert frame.width == 640
        # Its picture came from a keyframe the node asked the publisher for when the late joiner came.
        assert room.peers["pub"].published["video"].tracks[0]._last_pli >= started - 5  # noqa: SLF001
        assert pub is not None
    finally:
        await close_all(room, clients)


async def test_subscriber_remb_caps_what_the_publisher_hears(room_and_clients):
    room, clients = room_and_clients
    try:
        pub, sub = await publisher_and_subscriber(room, clients)
        sender = next(t.sender for t in pub.pcs["publish"].getTransceivers() if t.kind == "video")
        heard = []
        original = sender._handle_rtcp_packet

        async def spy(packet):
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                from aiortc.rtp import unpack_remb_fci

                heard.append(unpack_remb_fci(packet.fci)[0])
            await original(packet)

        sender._handle_rtcp_packet = spy
        receiver = next(t.receiver for t in sub.pcs["subscribe"].getTransceivers() if t.kind == "video")
        ssrc = receiver.getSynchronizationSources()[0].source

        async def weak_link():  # this subscriber says it can take 300 kbit/s
            while True:
                await receiver._send_rtcp(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=receiver._RTCRtpReceiver__rtcp_ssrc,
                                                         media_ssrc=0, fci=pack_remb_fci(300_000, [ssrc])))
                await asyncio.sleep(0.2)

        task = asyncio.ensure_future(weak_link())
        source = room.peers["pub"].published["video"].tracks[0]
        await wait_for(lambda: source.remb_cap() == 300_000, timeout=10)
        await wait_for(lambda: any(b <= 300_000 for b in heard), timeout=20)
        task.cancel()
    finally:
        await close_all(room, clients)


async def test_h264_is_forwarded_too(room_h264):
    room, clients = room_h264
    try:
        a = await join(room, clients, "a", 1)
        b = await join(room, clients, "b", 2)
        await wait_for(lambda: b.receiver_track(1, "video") is not None)
        frame = await asyncio.wait_for(b.receiver_track(1, "video").recv(), timeout=30)
        assert frame.width == 640
        assert room.peers["a"].published["video"].codec == "h264"
        transceiver = next(t for t in b.pcs["subscribe"].getTransceivers() if t.kind == "video")
        assert transceiver._codecs[0].mimeType == "video/H264"  # noqa: SLF001
        assert a is not None
    finally:
        await close_all(room, clients)


# --- the ForwardTrack's own rules (no network) -----------------------------------------------------

def frame(ts: int, key: bool) -> Frame:
    return Frame("vp8", b"\x00" if key else b"\x01", ts, 90000, key)


async def test_forward_track_gates_on_keyframes_and_keeps_its_clock_across_switches():
    asks = []
    a = PublishedTrack("video", request_keyframe=lambda: asks.append("a"))
    b = PublishedTrack("video", request_keyframe=lambda: asks.append("b"))
    out = ForwardTrack("video")
    out.switch(a)
    assert asks == ["a"]  # a new subscriber asks for a picture
    a.on_frame("vp8", b"\x01", 0, 90000)  # a delta frame: useless without its keyframe
    a.on_frame("vp8", b"\x00", 3000, 90000)
    a.on_frame("vp8", b"\x01", 6000, 90000)
    first, second = await out.recv(), await out.recv()
    assert (bytes(first), bytes(second)) == (b"\x00", b"\x01") and out.dropped == 1
    assert second.pts - first.pts == 3000
    out.switch(b)  # the transceiver now carries someone else, whose clock is elsewhere
    b.on_frame("vp8", b"\x00", 123_456_789, 90000)
    third = await out.recv()
    assert third.pts == second.pts + 3000  # one continuous stream for the receiver
    assert a.outputs == set() and b.outputs == {out}
    out.stop()


async def test_forward_track_overflow_restarts_at_a_keyframe_and_mute_drops_everything():
    asks = []
    src = PublishedTrack("video", request_keyframe=lambda: asks.append(1))
    out = ForwardTrack("video")
    out.switch(src)
    src.on_frame("vp8", b"\x00", 0, 90000)
    for i in range(1, 200):  # nobody reads: the subscriber's sender stalled
        src.on_frame("vp8", b"\x01", i * 3000, 90000)
    # It asked for a fresh start: within the PLI interval of the first ask, so it is coalesced (pending).
    assert out.dropped > 0 and (len(asks) >= 2 or src._pli_pending is not None)  # noqa: SLF001
    await asyncio.sleep(0.4)
    assert len(asks) == 2
    src.on_frame("vp8", b"\x00", 200 * 3000, 90000)
    packet = await out.recv()
    assert bytes(packet) == b"\x00"
    src.set_muted(True)
    src.on_frame("vp8", b"\x00", 201 * 3000, 90000)
    assert len(out._queue) == 0  # noqa: SLF001
    out.stop()


def test_remb_cap_is_the_weakest_fresh_subscriber_but_never_below_the_floor():
    src = PublishedTrack("video", request_keyframe=lambda: None)
    x, y = ForwardTrack("video"), ForwardTrack("video")
    assert src.remb_cap() is None
    src.remb_report(x, 2_000_000)
    src.remb_report(y, 800_000)
    assert src.remb_cap() == 800_000
    src.remb_report(y, 10_000)  # a hopeless link does not drag everyone down
    assert src.remb_cap() == REMB_FLOOR_BPS
    src.detach(y)
    assert src.remb_cap() == 2_000_000


def test_keyframe_detection():
    assert is_keyframe("vp8", b"\x10\x02\x00\x9d\x01\x2a") and not is_keyframe("vp8", b"\x11")
    assert is_keyframe("h264", b"\x00\x00\x00\x01\x67\x42\x00\x00\x00\x01\x65\x88")
    assert not is_keyframe("h264", b"\x00\x00\x00\x01\x41\x9a")
    assert is_keyframe("opus", b"\xfc")


def test_lateness_is_judged_against_the_least_late_frame_of_the_window():
    late = Lateness(window_s=10.0)
    assert late.late_s(timestamp=0, clock_rate=90000, arrival_s=100.0) == 0.0
    assert late.late_s(timestamp=3000, clock_rate=90000, arrival_s=100.05) == pytest.approx(0.05 - 1 / 30)
    # a burst of frames sent long after their time (a browser emptying its queue after an outage)
    assert late.late_s(timestamp=6000, clock_rate=90000, arrival_s=103.0) == pytest.approx(3.0 - 2 / 30)
    # early frames (jitter the other way) become the new reference at once
    assert late.late_s(timestamp=90000 * 4, clock_rate=90000, arrival_s=103.1) == 0.0
    # a lasting change of path delay is learnt once the window has passed
    for i in range(1, 12):
        result = late.late_s(timestamp=90000 * (4 + i), clock_rate=90000, arrival_s=103.6 + i)
    assert result == pytest.approx(0.0, abs=1e-9)


async def test_stale_frames_are_dropped_and_video_resumes_at_a_fresh_keyframe_on_the_same_clock():
    asks = []
    src = PublishedTrack("video", request_keyframe=lambda: asks.append(1))
    out = ForwardTrack("video")
    out.switch(src)
    now = 90000 * 5  # RTP ticks "now": the first frame sets the reference
    src.on_frame("vp8", b"\x00", now, 90000)
    first = await out.recv()
    # what the publisher queued during an outage arrives seconds after its time: not replayed
    for i in range(30):
        src.on_frame("vp8", b"\x01", 90000 + i * 3000, 90000)
    assert src.stale == 30 and len(out._queue) == 0  # noqa: SLF001
    assert STALE_AFTER_S < 3.0
    # fresh again: a delta frame cannot be shown without what was dropped, so a keyframe is asked for
    src.on_frame("vp8", b"\x01", now + 3000, 90000)
    assert len(out._queue) == 0 and (asks or src._pli_pending is not None)  # noqa: SLF001
    src.on_frame("vp8", b"\x00", now + 6000, 90000)
    resumed = await out.recv()
    assert bytes(resumed) == b"\x00" and resumed.pts == first.pts + 3000  # one continuous stream
    out.stop()
    src.end()


async def test_stale_audio_is_dropped_and_fresh_audio_flows_on():
    src = PublishedTrack("audio", request_keyframe=lambda: None)
    out = ForwardTrack("audio")
    out.switch(src)
    src.on_frame("opus", b"a", 48000 * 10, 48000)
    src.on_frame("opus", b"b", 48000 * 2, 48000)  # 8 s late
    src.on_frame("opus", b"c", 48000 * 10 + 960, 48000)
    assert [bytes(await out.recv()) for _ in range(2)] == [b"a", b"c"] and src.stale == 1
    out.stop()


async def test_a_gap_the_receiver_gave_up_on_holds_video_until_the_next_keyframe():
    asks = []
    src = PublishedTrack("video", request_keyframe=lambda: asks.append(1))
    out = ForwardTrack("video")
    out.switch(src)
    src.on_frame("vp8", b"\x00", 0, 90000)
    src.on_frame("vp8", b"\x01", 3000, 90000)
    first, second = await out.recv(), await out.recv()
    asks.clear()
    await asyncio.sleep(0.35)  # past the keyframe request interval of the join
    src.on_gap()  # rtc.encoded_tap: a lost packet was given up on
    assert src.gaps == 1 and asks == [1]
    src.on_frame("vp8", b"\x01", 9000, 90000)  # refers to the frame nobody got
    assert len(out._queue) == 0 and out.dropped == 1  # noqa: SLF001
    src.on_frame("vp8", b"\x00", 12000, 90000)
    resumed = await out.recv()
    assert bytes(resumed) == b"\x00" and resumed.pts == second.pts + 9000  # the clock went on as it was
    assert src.keyframe_wait_s is not None and 0 <= src.keyframe_wait_s < 1  # the layer trace reports it
    out.stop()
    src.end()
