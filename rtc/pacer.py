"""A pacer for what the node sends one subscriber: what aiortc lacks and a forwarding SFU needs.

aiortc hands every packet of a frame to the socket at once and answers every NACK from its history at
once. Into a capped link that is a burst the bottleneck's queue drops (a keyframe of a few dozen
packets into a 300 kbit/s link with a 200 ms queue) and then a storm of retransmissions - measured: 15
times the link's capacity - that the queue drops again. The pacer sits in front of the connection's
socket (see `rtc/pacing.py` for the seam):

* video waits for tokens that refill at `factor` x the subscriber's estimate (its browser's REMB), so a
  burst leaves at a rate the link can take; the sender's loop waits with it, which is the back-pressure
  that lets the forwarding queue (and layer choice) see the link;
* audio never waits and is never dropped: it is small, and it is what people need most;
* retransmissions are sent only while they fit a budget (`nack_share` of the estimate) and only while
  still useful (the original went out less than `nack_max_age_s` ago); otherwise they are dropped;
* abs-send-time, which the receiver's delay-based estimate reads, is stamped when a packet really
  leaves, not when it was queued, so our own pacing is not mistaken for a congested network.

Pure apart from the awaited sleep: a clock and a sleep function are injected, and packets are bytes.
"""
from __future__ import annotations

import asyncio
import collections
import struct
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from .rtp_header import extension_span, payload_offset

AUDIO, VIDEO, RTX = "audio", "video", "rtx"
NTP_EPOCH_OFFSET_S = 2_208_988_800  # 1900 to 1970: abs-send-time counts NTP seconds, as aiortc's own stamps do
SENT_MEMORY = 4096  # original video packets remembered for the age check of their retransmissions


@dataclass(frozen=True)
class PacerConfig:
    factor: float = 1.5  # room above the estimate for keyframes, as browsers' own pacers keep
    floor_bps: int = 120_000  # never pace below this, whatever one REMB said
    burst_s: float = 0.04  # tokens a quiet connection may save up (40 ms at the pacing rate)
    nack_share: float = 0.25  # retransmissions get at most this share of the estimate
    nack_max_age_s: float = 1.0  # an older packet is past its use: the receiver has moved on or asked for a keyframe
    abs_send_time_id: int | None = 3  # the header extension id aiortc offers for abs-send-time


@dataclass
class PacerStats:
    sent: dict[str, int]
    dropped_rtx_budget: int = 0
    dropped_rtx_age: int = 0
    waited_s: float = 0.0


class Pacer:
    def __init__(
        self, config: PacerConfig = PacerConfig(), *, audio_pts: frozenset[int] = frozenset(),
        rtx_pts: frozenset[int] = frozenset(), clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.audio_pts, self.rtx_pts = audio_pts, rtx_pts
        self.clock, self.sleep = clock, sleep
        self.estimate_bps: float | None = None  # no pacing until the subscriber has said what it can take
        self._tokens = 0.0  # bytes
        self._nack_tokens = 0.0
        self._updated = clock()
        self._sent_at: collections.OrderedDict[tuple[int, int], float] = collections.OrderedDict()
        self._lock = asyncio.Lock()  # video packets leave in the order they came
        self.stats = PacerStats(sent={AUDIO: 0, VIDEO: 0, RTX: 0})

    def set_estimate(self, bps: float) -> None:
        self._refill()
        self.estimate_bps = max(float(bps), self.config.floor_bps)

    @property
    def rate_bps(self) -> float | None:
        return None if self.estimate_bps is None else self.estimate_bps * self.config.factor

    def kind_of(self, data: bytes) -> str:
        pt = data[1] & 0x7F if len(data) > 1 else -1
        return AUDIO if pt in self.audio_pts else RTX if pt in self.rtx_pts else VIDEO

    async def send(self, data: bytes, send: Callable[[bytes], Awaitable[None]]) -> None:
        kind = self.kind_of(data)
        if kind == AUDIO:
            self._spend(len(data))
            self.stats.sent[AUDIO] += 1
            await send(self._stamped(data))
            return
        if kind == RTX:
            if not self._rtx_admit(data):
                return
            self.stats.sent[RTX] += 1
            await send(self._stamped(data))
            return
        async with self._lock:
            await self._wait_for(len(data))
            self._remember(data)
            self.stats.sent[VIDEO] += 1
            await send(self._stamped(data))

    # --- tokens --------------------------------------------------------------------------------------

    def _refill(self) -> None:
        now = self.clock()
        elapsed, self._updated = max(0.0, now - self._updated), now
        rate = self.rate_bps
        if rate is None:
            return
        bytes_per_s = rate / 8
        self._tokens = min(self._tokens + elapsed * bytes_per_s, max(bytes_per_s * self.config.burst_s, 2400))
        nack_per_s = (self.estimate_bps or 0) * self.config.nack_share / 8
        self._nack_tokens = min(self._nack_tokens + elapsed * nack_per_s, max(nack_per_s * 0.5, 1200))

    def _spend(self, size: int) -> None:
        self._refill()
        if self.rate_bps is not None:
            self._tokens -= size  # audio may take the bucket below zero: video then waits a little longer

    async def _wait_for(self, size: int) -> None:
        """A packet leaves once the bucket is not in debt; it may take it below zero (a packet larger than
        the bucket still goes), and the next one waits for the refill."""
        while True:
            self._refill()
            rate = self.rate_bps
            if rate is None or self._tokens > -1.0:  # within a byte: float rounding must not spin
                break
            wait = -self._tokens * 8 / rate
            self.stats.waited_s += wait
            await self.sleep(wait)
        if self.rate_bps is not None:
            self._tokens -= size

    # --- retransmissions -----------------------------------------------------------------------------

    def _remember(self, data: bytes) -> None:
        seq, timestamp = struct.unpack_from("!HI", data, 2)
        self._sent_at[(seq, timestamp)] = self.clock()
        while len(self._sent_at) > SENT_MEMORY:
            self._sent_at.popitem(last=False)

    def _rtx_admit(self, data: bytes) -> bool:
        offset = payload_offset(data)
        if offset is None or len(data) < offset + 2:
            return False
        (original_seq,) = struct.unpack_from("!H", data, offset)
        (timestamp,) = struct.unpack_from("!I", data, 4)
        sent_at = self._sent_at.get((original_seq, timestamp))
        if sent_at is None or self.clock() - sent_at > self.config.nack_max_age_s:
            self.stats.dropped_rtx_age += 1
            return False
        self._refill()
        if self.rate_bps is not None:
            if self._nack_tokens < len(data):
                self.stats.dropped_rtx_budget += 1
                return False
            self._nack_tokens -= len(data)
            self._tokens -= len(data)  # retransmissions take from the same link
        return True

    def _stamped(self, data: bytes) -> bytes:
        if self.config.abs_send_time_id is None:
            return data
        return abs_send_time_set(data, self.config.abs_send_time_id, abs_send_time(time.time() + NTP_EPOCH_OFFSET_S))


def abs_send_time(seconds: float) -> int:
    """RFC-less but universal: 6.18 fixed point seconds, 24 bits (webrtc.org abs-send-time)."""
    return int(seconds * (1 << 18)) & 0xFFFFFF


def abs_send_time_set(data: bytes, ext_id: int, value: int) -> bytes:
    """The packet with its one-byte-header abs-send-time element (3 bytes) overwritten, if it has one."""
    span = extension_span(data, ext_id)
    if span is None or span[1] != 3:
        return data
    out = bytearray(data)
    out[span[0]:span[0] + 3] = value.to_bytes(3, "big")
    return bytes(out)
