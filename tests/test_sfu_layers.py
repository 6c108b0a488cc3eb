"""Stage video layers with real aiortc clients around the media node's Room: a publisher sends its camera
three times (640x360, 320x180, 160x90); a subscriber whose link says 200 kbit/s gets a low layer while
another keeps the top one, and moves between layers only on a keyframe; egress gets the layer it asks
for (or the top); a publisher sending one video still works."""
from __future__ import annotations

import asyncio
import itertools
from fractions import Fraction
from typing import Any

import av
import numpy as np
import pytest
from aiortc.mediastreams import VideoStreamTrack
from aiortc.rtp import RtcpRrPacket

from rtc.encoded_tap import receiver_remb_rewrite, receiver_tap
from rtc.keyframes import is_keyframe
from sfu.layers import DEFAULT_LAYERS
from sfu.observer import RoomObserver
from sfu.room import PeerSpec, Room

from .test_forwarding import PacketTrack
from .test_sfu import Client, join, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.once]  # pure media: the deployment mode does not matter

SIZES = [(640, 360, 1_200_000), (320, 180, 250_000), (160, 90, 100_000)]  # as DEFAULT_LAYERS


def noisy_vp8(width: int, height: int, bitrate: int, count: int = 60, gop: int = 30) -> list[bytes]:
    """A VP8 stream near `bitrate` (moving noise: something to spend bits on), a keyframe every `gop`;
    the same bytes every run (libvpx's realtime deadline adapts to the CPU)."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base = Fraction(1, 30)
    codec.bit_rate = bitrate
    codec.options = {"deadline": "good", "cpu-used": "5", "threads": "1", "g": str(gop), "keyint_min": str(gop),
                     "qmax": "63", "minrate": str(bitrate), "maxrate": str(bitrate), "bufsize": str(bitrate)}
    noise = np.random.default_rng(width).integers(0, 255, (height, width, 3), np.uint8)
    out: list[bytes] = []
    for i in range(count):
        frame = av.VideoFrame.from_ndarray(np.roll(noise, 4 * i, axis=1), format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        out += [bytes(p) for p in codec.encode(frame)]
    return out


class RecordingObserver(RoomObserver):
    def __init__(self) -> None:
        self.layers: list[dict[str, Any]] = []

    def layer(self, **kw: Any) -> None:
        self.layers.append(kw)


@pytest.fixture
def layered_room():
    from classroom.media_node.node import ice_host_addresses_pin, rtc_configuration

    ice_host_addresses_pin(["127.0.0.1"])
    clients: dict[str, Client] = {}
    observer = RecordingObserver()

    async def send(channel: str, message: dict[str, Any]) -> None:
        await clients[channel].deliver(message)

    room = Room(session_id=1, rtc_config=rtc_configuration(), send=send, observer=observer, layers=DEFAULT_LAYERS)
    return room, clients, observer


def layered_publisher(streams: list[list[bytes]]):
    """make_track for a Client: audio none, then one PacketTrack per video m-line, in offer order."""
    videos = iter(streams)
    return lambda kind: PacketTrack(next(videos)) if kind == "video" else None


def encoded_log(store: list[bytes], *, remb: int):
    """on_subscribe_offer: record the video frames this client receives; the REMB it sends says `remb`
    (what a browser on such a link would say; aiortc's own estimate climbs too slowly for a test)."""

    def on_offer(pc) -> None:
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "video":
                receiver_tap(transceiver.receiver, on_frame=lambda c, d, t, r: store.append(d), decode=True)
                receiver_remb_rewrite(transceiver.receiver, rewrite=lambda bps: remb)

    return on_offer


async def decoded_sizes(client: Client, user_id: int, want, *, timeout: float = 60.0) -> list[tuple[int, int]]:
    """Decode this client's video from `user_id` until `want(sizes)` holds."""
    await wait_for(lambda: client.receiver_track(user_id, "video") is not None)
    track = client.receiver_track(user_id, "video")
    sizes: list[tuple[int, int]] = []

    async def run() -> None:
        while not want(sizes):
            frame = await track.recv()
            sizes.append((frame.width, frame.height))

    await asyncio.wait_for(run(), timeout)
    return sizes


def runs(sizes: list[tuple[int, int]]) -> list[tuple[tuple[int, int], int]]:
    return [(size, len(list(group))) for size, group in itertools.groupby(sizes)]


async def close_all(room: Room, clients: dict[str, Client]) -> None:
    async with room.lock:
        await room.close(reason="test_over")
    for client in clients.values():
        await client.close()


async def test_each_subscriber_gets_the_layer_its_link_carries_switching_on_keyframes(layered_room):
    room, clients, observer = layered_room
    streams = [noisy_vp8(w, h, bps) for w, h, bps in SIZES]
    layer_of = {data: (i, is_keyframe("vp8", data)) for i, stream in enumerate(streams) for data in stream}
    received: dict[str, list[bytes]] = {"strong": [], "weak": []}
    try:
        await join(room, clients, "pub", 1, make_track=layered_publisher(streams))
        strong = await join(room, clients, "strong", 2, publish=False, on_subscribe_offer=encoded_log(received["strong"], remb=5_000_000))
        weak = await join(room, clients, "weak", 3, publish=False,
                          on_subscribe_offer=encoded_log(received["weak"], remb=200_000))
        for peer_id, max_height in (("compositor", 100), ("recorder", None)):
            clients[peer_id] = Client(room, peer_id, publish=False)
            async with room.lock:
                await room.join(PeerSpec(peer_id=peer_id, session_id=1, user_id=None, name=peer_id, role="service",
                                         publish=False, hidden=True, max_height=max_height))

        # The strong one climbs to the top layer and keeps it; the weak one never gets it.
        strong_sizes = await decoded_sizes(strong, 1, lambda s: s[-30:] == [(640, 360)] * 30)
        weak_sizes = await decoded_sizes(weak, 1, lambda s: (160, 90) in s and len(s) >= 60)
        print("layers seen: strong", runs(strong_sizes), "weak", runs(weak_sizes))
        assert set(weak_sizes) <= {(320, 180), (160, 90)}  # it may try 320x180 again now and then
        # Egress: the layer that fits the compositor's tile; the recorder the top one.
        assert set(await decoded_sizes(clients["compositor"], 1, lambda s: len(s) >= 10)) == {(160, 90)}
        assert set(await decoded_sizes(clients["recorder"], 1, lambda s: len(s) >= 10)) == {(640, 360)}

        # Every change of layer a subscriber saw began with a keyframe of the new layer.
        changes = []
        for frames in received.values():
            seen = [layer_of[data] for data in frames]
            assert seen[0][1], "the first frame is a keyframe"
            changes += [(prev[0], cur) for prev, cur in zip(seen, seen[1:]) if cur[0] != prev[0]]
        assert changes and all(key for _, (_, key) in changes), changes
        # What each subscriber gets is observed (and cleared when they go).
        got = {(kw["subscriber"], kw["layer"]) for kw in observer.layers}
        assert {("2", "f"), ("3", "q"), ("compositor", "q"), ("recorder", "f")} <= got
        assert not {("3", "f"), ("compositor", "f"), ("compositor", "h")} & got
        # A weak subscriber does not cap the layer others get: the top layer hears only those on it.
        top = room.peers["pub"].published["video"].tracks[0]
        assert top.outputs <= {room.peers[p].switches[t] for p in ("strong", "recorder") for t in room.peers[p].switches}
    finally:
        await close_all(room, clients)
    assert all(kw["layer"] is None for kw in observer.layers[-4:])


def lossy_link(fraction_lost: float, remb: int):
    """on_subscribe_offer: this client's receiver reports say it lost `fraction_lost` of our packets."""

    def on_offer(pc) -> None:
        for transceiver in pc.getTransceivers():
            if transceiver.kind != "video" or getattr(transceiver.receiver, "_lossy", False):
                continue
            receiver = transceiver.receiver
            receiver_remb_rewrite(receiver, rewrite=lambda bps: remb)
            original = receiver._send_rtcp  # noqa: SLF001 - the RTCP this receiver sends

            async def send(packet, original=original):
                if isinstance(packet, RtcpRrPacket):
                    for report in packet.reports:
                        report.fraction_lost = int(fraction_lost * 256)
                await original(packet)

            receiver._send_rtcp = send  # noqa: SLF001
            receiver._lossy = True  # noqa: SLF001

    return on_offer


async def test_heavy_loss_brings_a_subscriber_down_whatever_its_remb_says(layered_room):
    room, clients, _ = layered_room
    streams = [noisy_vp8(w, h, bps) for w, h, bps in SIZES]
    try:
        await join(room, clients, "pub", 1, make_track=layered_publisher(streams))
        lossy = await join(room, clients, "lossy", 2, publish=False, on_subscribe_offer=lossy_link(0.3, 5_000_000))
        sizes = await decoded_sizes(lossy, 1, lambda s: (160, 90) in s)
        assert (640, 360) not in sizes
    finally:
        await close_all(room, clients)


async def test_a_publisher_sending_one_video_still_reaches_everyone(layered_room):
    room, clients, _ = layered_room
    videos = iter([VideoStreamTrack()])  # an older page: the camera on the first video m-line only
    try:
        await join(room, clients, "pub", 1, make_track=lambda kind: next(videos, None) if kind == "video" else None)
        sub = await join(room, clients, "sub", 2, publish=False)
        sizes = await decoded_sizes(sub, 1, lambda s: len(s) >= 5, timeout=30)
        assert set(sizes) == {(640, 480)}
    finally:
        await close_all(room, clients)


def test_the_media_node_gauges_the_layer_each_subscriber_gets_until_it_goes(db):  # db: /metrics collectors read it
    from prometheus_client import REGISTRY

    from classroom.media_node.node import MetricsObserver

    labels = {"session_id": "9", "subscriber": "2", "publisher": "1"}
    observer = MetricsObserver()
    observer.layer(session_id=9, subscriber="2", publisher="1", layer="h", height=180)
    assert REGISTRY.get_sample_value("classcast_stage_layer_height", labels) == 180
    observer.layer(session_id=9, subscriber="2", publisher="1", layer=None, height=0)
    assert REGISTRY.get_sample_value("classcast_stage_layer_height", labels) is None
    observer.layer(session_id=9, subscriber="2", publisher="1", layer=None, height=0)  # twice is fine
