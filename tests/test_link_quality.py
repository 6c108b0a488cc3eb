"""Each participant's two legs from the media node's own view (sfu/quality.py): golden figures from
aiortc's stats objects, the Room handing them to its observer, and the bounded per-participant gauges."""
from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest
from aiortc.stats import (
    RTCInboundRtpStreamStats,
    RTCOutboundRtpStreamStats,
    RTCRemoteInboundRtpStreamStats,
    RTCTransportStats,
)

from sfu.observer import RoomObserver
from sfu.quality import LegCounters, LegQuality, PeerQuality, downlink_quality, uplink_quality

from .test_sfu import join, wait_for

pytestmark = pytest.mark.once  # pure media and the node's metrics: the deployment mode does not matter
NOW = datetime.datetime(2026, 12, 7)


def transport(*, received: int = 0, sent: int = 0) -> RTCTransportStats:
    return RTCTransportStats(timestamp=NOW, type="transport", id="t", packetsSent=0, packetsReceived=0,
                             bytesSent=sent, bytesReceived=received, iceRole="controlling", dtlsState="connected")


def inbound(ssrc: int, kind: str, *, received: int, lost: int, jitter: int) -> RTCInboundRtpStreamStats:
    return RTCInboundRtpStreamStats(timestamp=NOW, type="inbound-rtp", id=f"in{ssrc}", ssrc=ssrc, kind=kind,
                                    transportId="t", packetsReceived=received, packetsLost=lost, jitter=jitter)


def outbound(ssrc: int, kind: str, *, sent: int) -> RTCOutboundRtpStreamStats:
    return RTCOutboundRtpStreamStats(timestamp=NOW, type="outbound-rtp", id=f"out{ssrc}", ssrc=ssrc, kind=kind,
                                     transportId="t", packetsSent=sent, bytesSent=sent * 1000, trackId="x")


def report(ssrc: int, kind: str, *, fraction: int, rtt: float, jitter: int) -> RTCRemoteInboundRtpStreamStats:
    return RTCRemoteInboundRtpStreamStats(
        timestamp=NOW, type="remote-inbound-rtp", id=f"rr{ssrc}", ssrc=ssrc, kind=kind, transportId="t",
        packetsReceived=0, packetsLost=0, jitter=jitter, roundTripTime=rtt, fractionLost=fraction,
    )


def test_uplink_loss_jitter_and_bitrate_are_deltas_of_the_nodes_own_counters():
    counters = LegCounters()
    first = uplink_quality([transport(received=0), inbound(1, "video", received=100, lost=0, jitter=900),
                            inbound(2, "audio", received=50, lost=0, jitter=480)], counters, now=10.0)
    assert first == LegQuality(loss=None, jitter_ms=10.0, rtt_ms=None, kbps=None)  # no interval yet
    second = uplink_quality([transport(received=250_000), inbound(1, "video", received=190, lost=8, jitter=4500),
                             inbound(2, "audio", received=100, lost=2, jitter=960)], counters, now=12.0)
    # 10 lost of 140 received + 10 lost; the worse stream's jitter (video 50 ms); 250 kB in 2 s
    assert second == LegQuality(loss=round(10 / 150, 4), jitter_ms=50.0, rtt_ms=None, kbps=1000.0)


def test_downlink_takes_the_browsers_receiver_reports_weighted_by_what_was_sent():
    counters = LegCounters()
    downlink_quality([transport(sent=0), outbound(5, "video", sent=1000), outbound(6, "audio", sent=500)],
                     counters, now=0.0)
    leg = downlink_quality(
        [transport(sent=1_000_000), outbound(5, "video", sent=1300), outbound(6, "audio", sent=600),
         report(5, "video", fraction=64, rtt=0.12, jitter=1800), report(6, "audio", fraction=0, rtt=0.1, jitter=480)],
        counters, now=4.0,
    )
    # 25 % of 300 video packets, 0 % of 100 audio ones; the longer round trip; 1 MB in 4 s
    assert leg == LegQuality(loss=0.1875, jitter_ms=20.0, rtt_ms=120.0, kbps=2000.0)


class Recorder(RoomObserver):
    def __init__(self) -> None:
        self.qualities: list[PeerQuality] = []
        self.left: list[str] = []

    def peer_quality(self, *, session_id: int, quality: PeerQuality) -> None:
        self.qualities.append(quality)

    def peer_left(self, *, session_id: int, peer_id: str) -> None:
        self.left.append(peer_id)


@pytest.mark.slow
async def test_a_room_reports_each_participants_legs_and_forgets_who_left(room_with):
    observer = Recorder()
    room, clients = room_with(observer=observer)
    a, b = await join(room, clients, "a", 1), await join(room, clients, "b", 2)
    await wait_for(lambda: a.receiver_track(2, "video") is not None and b.receiver_track(1, "video") is not None)
    latest: dict[str, PeerQuality] = {}
    for _ in range(20):  # both connections up, then one interval to measure over
        await room.stats_collect()
        latest = {q.peer_id: q for q in observer.qualities}
        if len(latest) == 2 and all(q.up and q.up.kbps and q.down and q.down.kbps for q in latest.values()):
            break
        await asyncio.sleep(0.5)
    assert set(latest) == {"a", "b"}
    for quality in latest.values():
        assert quality.up is not None and quality.up.kbps and quality.up.kbps > 0  # media arrives from each
        assert quality.down is not None and quality.down.kbps and quality.down.kbps > 0
        assert quality.up.loss in (0.0, None)  # loopback loses nothing
    snapshot = {p["user_id"]: p for p in room.quality_snapshot()}
    assert set(snapshot) == {1, 2} and snapshot[1]["up"]["kbps"] > 0
    async with room.lock:
        await room.leave("b", reason="left")
    assert observer.left == ["b"]


def test_per_participant_gauges_are_set_and_removed_when_they_leave(db):  # db: /metrics collectors read it
    from prometheus_client import REGISTRY

    from classroom.media_node.node import MetricsObserver

    observer = MetricsObserver()
    quality = PeerQuality(peer_id="p1", user_id=42, name="Ben", hidden=False,
                          up=LegQuality(loss=0.05, jitter_ms=30.0, kbps=800.0),
                          down=LegQuality(loss=0.0, jitter_ms=5.0, rtt_ms=150.0, kbps=1200.0))
    observer.peer_quality(session_id=9, quality=quality)
    labels = {"session": "9", "participant": "user-42"}

    def sample(name: str, **extra: str) -> float | None:
        return REGISTRY.get_sample_value(name, {**labels, **extra})

    assert sample("classcast_participant_loss_ratio", direction="up") == 0.05
    assert sample("classcast_participant_bitrate_bps", direction="down") == 1_200_000
    assert sample("classcast_participant_rtt_seconds") == 0.15
    observer.peer_left(session_id=9, peer_id="p1")
    assert sample("classcast_participant_loss_ratio", direction="up") is None
    assert sample("classcast_participant_rtt_seconds") is None
    observer.peer_left(session_id=9, peer_id="p1")  # twice is harmless
