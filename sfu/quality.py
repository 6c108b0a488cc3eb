"""How each participant's two legs are doing, from the node's own view (not what a browser reports):

* `up`, the participant's uplink: what the node receives on their publish connection (loss and
  jitter it measures itself, the bitrate that arrives);
* `down`, their downlink: what the node sends on their subscribe connection, with the loss, jitter
  and round-trip time their browser's receiver reports (RTCP RR) say.

A teacher then sees which student's link is bad, whoever is looking at them; an operator gets the
same figures per participant. Pure: built from aiortc's stats objects and the previous counters.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

RR_FRACTION_SCALE = 256  # RTCP RR "fraction lost" is an 8-bit fixed-point number (RFC 3550 6.4.1)
CLOCKS = {"audio": 48_000, "video": 90_000}


@dataclass(frozen=True)
class LegQuality:
    loss: float | None = None  # 0..1 since the previous collection
    jitter_ms: float | None = None
    rtt_ms: float | None = None
    kbps: float | None = None


@dataclass(frozen=True)
class PeerQuality:
    peer_id: str
    user_id: int | None
    name: str
    hidden: bool
    up: LegQuality | None
    down: LegQuality | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id, "name": self.name,
            "up": asdict(self.up) if self.up else None, "down": asdict(self.down) if self.down else None,
        }


@dataclass
class LegCounters:
    """What a leg's figures are deltas of, kept between collections."""

    at: float | None = None
    bytes: int = 0
    streams: dict[int, tuple[int, int]] = field(default_factory=dict)  # ssrc -> (packets, lost) last seen


def uplink_quality(stats: Iterable[Any], counters: LegCounters, *, now: float) -> LegQuality:
    """The publish connection's inbound streams and transport: loss the node counted, jitter, kbps."""
    received = lost = 0
    jitter_ms: float | None = None
    total_bytes = 0
    for stat in stats:
        if stat.type == "transport":
            total_bytes += stat.bytesReceived
        elif stat.type == "inbound-rtp":
            prev = counters.streams.get(stat.ssrc)
            if prev is not None:
                received += max(0, stat.packetsReceived - prev[0])
                lost += max(0, stat.packetsLost - prev[1])
            counters.streams[stat.ssrc] = (stat.packetsReceived, stat.packetsLost)
            ms = stat.jitter * 1000 / CLOCKS.get(stat.kind, 90_000)
            jitter_ms = ms if jitter_ms is None else max(jitter_ms, ms)
    kbps = _kbps(counters, total_bytes, now)
    loss = round(lost / (received + lost), 4) if received + lost else None
    return LegQuality(loss=loss, jitter_ms=_round(jitter_ms), rtt_ms=None, kbps=kbps)


def downlink_quality(stats: Iterable[Any], counters: LegCounters, *, now: float) -> LegQuality:
    """The subscribe connection: what the participant's browser reports receiving from the node (its
    receiver reports: fraction lost, jitter, and the round trip the node measures from them)."""
    total_bytes = 0
    sent: dict[int, int] = {}
    reports = []
    for stat in stats:
        if stat.type == "transport":
            total_bytes += stat.bytesSent
        elif stat.type == "outbound-rtp":
            sent[stat.ssrc] = stat.packetsSent
        elif stat.type == "remote-inbound-rtp":
            reports.append(stat)
    weighted = weight = 0.0
    rtt_ms = jitter_ms = None
    for report in reports:
        prev = counters.streams.get(report.ssrc)
        packets = sent.get(report.ssrc, 0)
        delta = max(0, packets - prev[0]) if prev is not None else 0
        fraction = report.fractionLost / RR_FRACTION_SCALE
        weighted += fraction * max(delta, 1)
        weight += max(delta, 1)
        if report.roundTripTime is not None:
            rtt_ms = max(rtt_ms or 0.0, report.roundTripTime * 1000)
        ms = report.jitter * 1000 / CLOCKS.get(report.kind, 90_000)
        jitter_ms = ms if jitter_ms is None else max(jitter_ms, ms)
    for ssrc, packets in sent.items():  # what the next reports are weighed against
        counters.streams[ssrc] = (packets, 0)
    kbps = _kbps(counters, total_bytes, now)
    return LegQuality(
        loss=round(weighted / weight, 4) if weight else None, jitter_ms=_round(jitter_ms),
        rtt_ms=_round(rtt_ms), kbps=kbps,
    )


def _kbps(counters: LegCounters, total_bytes: int, now: float) -> float | None:
    kbps = None
    if counters.at is not None and now > counters.at:
        kbps = round(max(0, total_bytes - counters.bytes) * 8 / (now - counters.at) / 1000, 1)
    counters.at, counters.bytes = now, total_bytes
    return kbps


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
