"""The seams into aiortc (1.16, pinned) that forwarding and recording need, all in this one module.

1. Receiver: encoded frames on their way to the decoder (`receiver_tap`).
2. Receiver: RTCP it sends - the REMB it tells the publisher is capped or rewritten (`receiver_remb_cap`,
   `receiver_remb_rewrite`: a publisher sending several layers hears one total from all of them).
3. Receiver: its receive-side bandwidth estimate, which an egress subscriber does not need
   (`receiver_estimator_off`).
4. Sender: RTCP it receives - keyframe requests, REMB and receiver reports' loss reach us
   (`sender_feedback_tap`); aiortc would only act on them for frames it encodes itself, and a
   forwarding sender encodes nothing.
5. ICE: the receive buffer of a peer connection's UDP sockets (`ice_receive_buffer`), which aioice
   leaves at the kernel default.
6. Receiver: audio packets straight to the tap as they arrive (`receiver_audio_passthrough`), instead
   of through aiortc's audio jitter buffer, which holds everything behind a lost packet.
7. Receiver: video frames held behind a lost packet only for a bounded time (`receiver_video_deadline`),
   instead of until 512 packets later; each lost packet asked for a few times while still useful
   (`receiver_nack_budget`), instead of every missing one again on each new loss.
8. Codecs: Opus in-band FEC offered on every connection (`opus_fec_negotiate`), and where browsers
   start their send-side bandwidth estimate (`video_start_bitrate_negotiate`).

aiortc has no public API for received encoded media. `RTCRtpReceiver` reassembles RTP packets into
whole encoded frames (a `JitterFrame`: the depacketized payload - a VP8 frame, an H.264 Annex B access
unit, an Opus packet - and its RTP timestamp counted from 0) and hands `(codec, frame)` to its decoder
thread through a private `queue.Queue`. `receiver_tap` wraps that queue's `put` on one receiver: every
frame goes to `on_frame` first (on the event loop's thread, so it must only hand off), and on to the
decoder only when `decode` is true. A recorder that only writes files therefore decodes nothing.
That queue has no bound: a decoder starved of CPU falls further and further behind, and whoever reads
the track sees frames seconds old. With `max_backlog`, a video frame that finds that many frames still
waiting makes the tap drop them and wait for the next keyframe (asking for one through `on_backlog`),
as the media node does for a subscriber that falls behind; audio drops its oldest frame instead.

If an aiortc upgrade moves the queue, `receiver_tap` raises `TapError` instead of silently recording
nothing; `tests/test_encoded_tap.py` and `tests/test_sfu.py` pin the behaviour against the installed
version.
"""
from __future__ import annotations

import logging
import queue
import socket
import time
from typing import Any, Callable

from aiortc.codecs import CODECS
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpreceiver import NackGenerator
from aiortc.utils import uint16_add, uint16_gt
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpSrPacket,
    pack_remb_fci,
    unpack_remb_fci,
)

from . import RtcError
from .keyframes import is_keyframe

log = logging.getLogger("classcast.egress")
_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"
_ESTIMATOR_ATTR = "_RTCRtpReceiver__remote_bitrate_estimator"
_JITTER_ATTR = "_RTCRtpReceiver__jitter_buffer"
_KIND_ATTR = "_RTCRtpReceiver__kind"
_NACK_ATTR = "_RTCRtpReceiver__nack_generator"
# What a receiver of Opus asks its sender for (RFC 7587): in-band FEC, so a lost 20 ms packet is rebuilt
# from the next one; 10 ms frames allowed. Chromium encodes FEC only when the far end's description says
# so, and then as much as the receiver reports losing.
OPUS_FMTP = {"minptime": 10, "useinbandfec": 1}
_TAPPED = "_classcast_tap"

# (codec name in lower case, payload, RTP timestamp from 0, clock rate)
FrameCallback = Callable[[str, bytes, int, int], None]


class TapError(RtcError):
    """aiortc's receiver no longer looks the way this seam expects."""


def receiver_tap(
    receiver: Any,
    *,
    on_frame: FrameCallback | None,
    decode: bool,
    max_backlog: int = 0,
    on_backlog: Callable[[], object] | None = None,
) -> None:
    """Send this receiver's encoded frames to `on_frame` (and to its decoder if `decode`, never letting
    more than `max_backlog` frames wait for it when that is set). Idempotent."""
    decoder_queue = getattr(receiver, _QUEUE_ATTR, None)
    if not isinstance(decoder_queue, queue.Queue):
        raise TapError("aiortc's RTCRtpReceiver has no decoder queue to tap; check the pinned aiortc version")
    if getattr(decoder_queue, _TAPPED, False):
        return
    original_put = decoder_queue.put
    guard = _Backlog(decoder_queue, max_backlog, on_backlog) if decode and max_backlog > 0 else None

    def put(item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:  # the receiver is stopping: let the decoder thread (and the track) end
            original_put(item, block, timeout)
            return
        codec, frame = item
        name = codec.name.lower()
        if on_frame is not None:
            try:
                on_frame(name, frame.data, int(frame.timestamp), int(codec.clockRate))
            except Exception:  # noqa: BLE001 - a consumer's bug must not break aiortc's receive path
                log.exception("encoded frame consumer failed")
        if decode and (guard is None or guard.admit(name, frame.data)):
            original_put(item, block, timeout)

    decoder_queue.put = put  # type: ignore[method-assign]
    setattr(decoder_queue, _TAPPED, True)


class _Backlog:
    """Keeps a decoder queue short: see the module's docstring. Runs on the event loop's thread."""

    def __init__(self, decoder_queue: queue.Queue, limit: int, on_backlog: Callable[[], object] | None) -> None:
        self.queue, self.limit, self.on_backlog = decoder_queue, limit, on_backlog
        self.skipping = False

    def admit(self, codec: str, data: bytes) -> bool:
        if self.skipping:
            if not is_keyframe(codec, data):
                return False
            self.skipping = False
        if self.queue.qsize() < self.limit:
            return True
        if codec not in ("vp8", "h264"):  # audio: every frame decodes alone; the oldest goes
            self._drain(1)
            return True
        self._drain(self.limit)
        if is_keyframe(codec, data):
            return True  # starts a clean decode by itself
        self.skipping = True
        log.warning("decoder %d frames behind: dropped them, waiting for a keyframe", self.limit)
        if self.on_backlog is not None:
            self.on_backlog()
        return False

    def _drain(self, most: int) -> None:
        """Take up to `most` waiting frames away from the decoder (the oldest first)."""
        for _ in range(most):
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            if item is None:  # never swallow the stop signal
                self.queue.put(None)
                return


def receiver_estimator_off(receiver: Any) -> None:
    """Stop this receiver's remote bitrate estimation (and so its REMB). aiortc runs the estimator on every
    video packet, in Python, only to tell the sender how much it may send; an egress job inside the data
    centre has nothing to say about that (the stage members' estimates cap the publishers), and the
    estimator was about an eighth of its receive path. Idempotent."""
    if not hasattr(receiver, _ESTIMATOR_ATTR):
        raise TapError("aiortc's RTCRtpReceiver has no remote bitrate estimator; check the pinned aiortc version")
    setattr(receiver, _ESTIMATOR_ATTR, None)


async def receiver_request_keyframe(receiver: Any) -> bool:
    """Ask the sender for a keyframe (RTCP PLI) on every SSRC this receiver hears. False if none yet."""
    sources = [s.source for s in receiver.getSynchronizationSources()]
    for ssrc in sources:
        await receiver._send_rtcp_pli(ssrc)  # noqa: SLF001 - part of the same documented seam
    return bool(sources)


def sender_feedback_tap(
    sender: Any, *, on_keyframe_request: Callable[[], None], on_remb: Callable[[int], None],
    on_loss: Callable[[float], None] | None = None,
) -> None:
    """Take this sender's incoming PLI/FIR and REMB for ourselves, and hear the fraction lost its
    receiver reports give (they, and NACKs answered from its packet history, stay aiortc's too). Idempotent."""
    original = getattr(sender, "_handle_rtcp_packet", None)
    if original is None or not hasattr(sender, "_ssrc"):
        raise TapError("aiortc's RTCRtpSender has no RTCP handler to tap; check the pinned aiortc version")
    if getattr(sender, _TAPPED, False):
        return

    async def handle(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            on_keyframe_request()
            return
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                return
            if sender._ssrc in ssrcs:  # noqa: SLF001 - part of this seam
                on_remb(bitrate)
            return
        if on_loss is not None and isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            for report in packet.reports:
                if report.ssrc == sender._ssrc:  # noqa: SLF001
                    on_loss(report.fraction_lost / 256)
        await original(packet)

    sender._handle_rtcp_packet = handle  # noqa: SLF001
    setattr(sender, _TAPPED, True)


def receiver_remb_cap(receiver: Any, *, cap: Callable[[], int | None]) -> None:
    """The REMB this receiver sends its publisher says at most `cap()` bits/s (None: no cap), so the
    publisher's encoder follows the weakest subscriber as well as this node's own link. Idempotent."""

    def rewrite(bitrate: int) -> int:
        limit = cap()
        return limit if limit is not None and limit < bitrate else bitrate

    receiver_remb_rewrite(receiver, rewrite=rewrite)


def receiver_remb_rewrite(receiver: Any, *, rewrite: Callable[[int], int]) -> None:
    """The REMB this receiver sends its publisher says `rewrite(its own estimate)` bits/s. Idempotent."""
    original = getattr(receiver, "_send_rtcp", None)
    if original is None:
        raise TapError("aiortc's RTCRtpReceiver has no RTCP sender to tap; check the pinned aiortc version")
    if getattr(receiver, _TAPPED + "_remb", False):
        return

    async def send(packet: Any) -> None:
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                bitrate, ssrcs = 0, []
            told = rewrite(bitrate) if ssrcs else bitrate
            if told != bitrate:
                packet = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=packet.ssrc, media_ssrc=packet.media_ssrc,
                                        fci=pack_remb_fci(told, ssrcs))
        await original(packet)

    receiver._send_rtcp = send  # noqa: SLF001
    setattr(receiver, _TAPPED + "_remb", True)


def ice_receive_buffer(pc: Any, *, size: int) -> list[int]:
    """Ask for `size` bytes of kernel receive buffer on every UDP socket this peer connection gathered
    (call after setLocalDescription). aioice keeps Linux's default, about 208 KB: a process that
    receives a whole stage (4+ Mbit/s) and stalls for 0.4 s - a GC pause, a busy moment on a shared
    core - then loses packets in the kernel, and lost video means a frozen tile until the next
    keyframe. The kernel caps the request at net.core.rmem_max (the README says how to raise it).
    Returns the sizes the kernel granted (it reports twice the usable size). Idempotent."""
    granted = []
    for protocol in ice_protocols(pc):
        sock = protocol.transport.get_extra_info("socket") if protocol.transport else None
        if sock is None:
            continue
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        granted.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    return granted


def ice_protocols(pc: Any) -> list[Any]:
    """The asyncio datagram protocols of every UDP socket this peer connection gathered (aioice's)."""
    found = []
    for transport in _ice_transports(pc):
        connection = getattr(transport.iceGatherer, "_connection", None)
        protocols = getattr(connection, "_protocols", None)
        if not isinstance(protocols, list):
            raise TapError("aioice's Connection has no socket list; check the pinned aiortc/aioice versions")
        found += protocols
    return found


def _ice_transports(pc: Any) -> list[Any]:
    seen: dict[int, Any] = {}
    for transceiver in pc.getTransceivers():
        for end in (transceiver.receiver, transceiver.sender):
            dtls = end.transport
            if dtls is not None:
                seen.setdefault(id(dtls.transport), dtls.transport)
    return list(seen.values())


def opus_fec_negotiate() -> None:
    """Offer and accept Opus with in-band FEC on every connection this process makes. aiortc builds
    every description from its module-level codec list (a codec preference's own parameters must equal
    that list's, so they cannot add any), and that list's Opus has no fmtp: without this a browser never
    sends the node FEC, and every lost audio packet is concealed. Call before building preferences
    (`RTCRtpSender.getCapabilities`). Idempotent."""
    opus = [c for c in CODECS.get("audio", []) if c.mimeType.lower() == "audio/opus"]
    if len(opus) != 1 or not isinstance(opus[0].parameters, dict):
        raise TapError("aiortc's codec list has no single Opus entry; check the pinned aiortc version")
    opus[0].parameters.update(OPUS_FMTP)


def video_start_bitrate_negotiate(kbps: int) -> None:
    """Tell browsers where to start their send-side estimate (`x-google-start-bitrate`, which Chromium
    reads from the far end's video fmtp). Without it Chromium starts at 300 kbit/s and, fed REMB alone,
    grows about 8 % a second: half a minute before a clean link carries the top layer. Like Opus FEC,
    it can only go into aiortc's module-level codec list. 0 leaves it out. Idempotent."""
    video = [c for c in CODECS.get("video", []) if c.mimeType.lower() in ("video/vp8", "video/h264")]
    if not video or not all(isinstance(c.parameters, dict) for c in video):
        raise TapError("aiortc's codec list has no VP8/H.264 entries; check the pinned aiortc version")
    for codec in video:
        if kbps > 0:
            codec.parameters["x-google-start-bitrate"] = int(kbps)
        else:
            codec.parameters.pop("x-google-start-bitrate", None)


def receiver_audio_passthrough(receiver: Any) -> None:
    """Hand every audio packet on (to the tap, then the decoder) as it arrives. aiortc's audio jitter
    buffer releases a frame only once every earlier packet is in, so one lost packet holds the stream for
    16 packets (320 ms) and then releases a burst: on a lossy link a quarter of the audio forwarded from
    it ended up concealed. A forwarding node needs no jitter buffer (the receiving browser has its own,
    and its Opus decoder rebuilds the gap from the next packet's FEC); a duplicate or a packet older
    than one already passed on (a retransmission, a reordering) is dropped. Idempotent."""
    if getattr(receiver, _KIND_ATTR, None) != "audio":
        raise TapError("only an audio receiver passes packets through: a video frame spans several packets")
    current = getattr(receiver, _JITTER_ATTR, None)
    if isinstance(current, _PassThrough):
        return
    if not isinstance(current, JitterBuffer):
        raise TapError("aiortc's RTCRtpReceiver has no jitter buffer to replace; check the pinned aiortc version")
    setattr(receiver, _JITTER_ATTR, _PassThrough())


class _PassThrough:
    """Stands in for aiortc's JitterBuffer on an audio receiver (which only calls `add`): one RTP packet
    is one Opus frame."""

    def __init__(self) -> None:
        self.highest: int | None = None  # extended sequence number of the newest packet passed on
        self.dropped = 0

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self.highest is None:
            extended = seq
        else:
            # unwrap the 16-bit sequence number around the newest one (RFC 3550 A.1)
            delta = (seq - self.highest) & 0xFFFF
            extended = self.highest + delta if delta < 0x8000 else self.highest - (0x10000 - delta)
        if self.highest is not None and extended <= self.highest:
            self.dropped += 1
            return False, None
        self.highest = extended
        return False, JitterFrame(data=packet._data, timestamp=packet.timestamp)  # noqa: SLF001 - set by aiortc


# A lost video packet is waited for this long (a NACK and its retransmission take one round trip, two
# rounds on a 150 ms path), then given up on: past it, a keyframe comes sooner than the packet would.
VIDEO_GIVE_UP_S = 0.5


def receiver_video_deadline(
    receiver: Any, *, on_gap: Callable[[], object], give_up_s: float = VIDEO_GIVE_UP_S,
    clock: Callable[[], float] = time.monotonic,
) -> "DeadlineJitterBuffer":
    """Bound how long a video frame waits for a lost packet. aiortc's video jitter buffer releases
    nothing behind a missing packet until 512 newer ones arrived: a retransmission that is lost too
    holds a 100 kbit/s layer for 50 s, a 1 Mbit/s one for 5 s. After `give_up_s` the frames behind the
    hole are dropped and `on_gap` is called (on the event loop's thread): what follows refers to a
    frame nobody will get, so the caller waits for (and asks for) a keyframe. Idempotent."""
    if getattr(receiver, _KIND_ATTR, None) != "video":
        raise TapError("only a video receiver's frames wait for lost packets")
    current = getattr(receiver, _JITTER_ATTR, None)
    if isinstance(current, DeadlineJitterBuffer):
        return current
    if not isinstance(current, JitterBuffer):
        raise TapError("aiortc's RTCRtpReceiver has no jitter buffer to replace; check the pinned aiortc version")
    buffer = DeadlineJitterBuffer(capacity=current.capacity, give_up_s=give_up_s, on_gap=on_gap, clock=clock)
    setattr(receiver, _JITTER_ATTR, buffer)
    return buffer


class DeadlineJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, plus a deadline on holes (see `receiver_video_deadline`)."""

    def __init__(self, *, capacity: int, give_up_s: float, on_gap: Callable[[], object],
                 clock: Callable[[], float]) -> None:
        super().__init__(capacity=capacity, is_video=True)
        self.give_up_s, self.on_gap, self.clock = give_up_s, on_gap, clock
        self.gaps = 0  # holes given up on
        self._newest: int | None = None
        self._stuck_since: float | None = None

    def add(self, packet: Any) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._newest is None or uint16_gt(seq, self._newest):
            self._newest = seq
        pli, frame = super().add(packet)
        if frame is not None or self._origin is None:
            self._stuck_since = None
            return pli, frame
        hole = self._hole()
        if hole is None:
            self._stuck_since = None
            return pli, None
        now = self.clock()
        if self._stuck_since is None:
            self._stuck_since = now
        if now - self._stuck_since < self.give_up_s:
            return pli, None
        self._skip(hole)
        self._stuck_since = None
        self.gaps += 1
        self.on_gap()
        return pli, self._remove_frame(seq) if self._origin is not None else None

    def _span(self) -> int:
        """Positions from the origin up to and including the newest packet."""
        assert self._origin is not None and self._newest is not None
        ahead = uint16_add(self._newest, -self._origin)
        return 0 if ahead >= 0x8000 else min(ahead + 1, self.capacity)  # 0: everything up to the newest is gone

    def _hole(self) -> int | None:
        """Offset from the origin of the first missing packet that a newer one is waiting behind."""
        assert self._origin is not None
        for offset in range(self._span()):
            if self._packets[(self._origin + offset) % self.capacity] is None:
                return offset
        return None

    def _skip(self, hole: int) -> None:
        """Drop everything up to the hole, then the frame the first packet after it belongs to (its
        start may be in the hole); the origin ends on the next frame's first packet, or past the newest."""
        self.remove(hole)
        remaining = self._span()
        timestamp = None
        while remaining > 0:
            packet = self._packets[self._origin % self.capacity]
            if packet is not None:
                if timestamp is None:
                    timestamp = packet.timestamp
                elif packet.timestamp != timestamp:
                    return
            self.remove(1)
            remaining -= 1


NACK_TRIES = 3  # asks per lost packet: a retransmission lost as well gets two more chances
NACK_RETRY_S = 0.15  # between asks for the same packet: about a round trip on the paths we serve


def loss_timing(rtt_s: float | None) -> tuple[float, float]:
    """(how long a hole is waited for, how long between asks for one packet) on a path of this round
    trip: a retransmission needs one, so three asks and their answers must fit before giving up. On a
    capped link the queue makes the round trip 0.3-0.5 s, and the fixed half second gave up on packets
    whose retransmission was still on its way (then a keyframe, which on 300 kbit/s takes seconds)."""
    if rtt_s is None or rtt_s <= 0:
        return VIDEO_GIVE_UP_S, NACK_RETRY_S
    retry = max(NACK_RETRY_S, 1.2 * rtt_s)
    # at most 1 s: a frame later than that is about to be stale anyway (sfu.forwarding.STALE_AFTER_S)
    return min(max(VIDEO_GIVE_UP_S, NACK_TRIES * retry + 0.05), 1.0), retry


def receiver_nack_budget(
    receiver: Any, *, tries: int = NACK_TRIES, retry_s: float = NACK_RETRY_S, max_age_s: float = VIDEO_GIVE_UP_S,
    clock: Callable[[], float] = time.monotonic,
) -> "BudgetedNackGenerator":
    """Ask for each lost video packet at most `tries` times, `retry_s` apart, and not once it is older
    than `max_age_s` (the jitter buffer has given up on it by then). aiortc's generator NACKs every
    packet still missing each time a new one goes missing: on a 300 kbit/s uplink the publisher's
    browser then spent three quarters of its rate on retransmissions the node no longer needed. Idempotent."""
    current = getattr(receiver, _NACK_ATTR, None)
    if isinstance(current, BudgetedNackGenerator):
        return current
    if not isinstance(current, NackGenerator):
        raise TapError("aiortc's RTCRtpReceiver has no NACK generator to replace; check the pinned aiortc version")
    generator = BudgetedNackGenerator(tries=tries, retry_s=retry_s, max_age_s=max_age_s, clock=clock)
    setattr(receiver, _NACK_ATTR, generator)
    return generator


class BudgetedNackGenerator(NackGenerator):
    """aiortc's receiver calls `add(packet)` for each packet and, when it returns True, sends one NACK
    for `sorted(missing)`: here `missing` holds only the packets due to be asked for now."""

    def __init__(self, *, tries: int, retry_s: float, max_age_s: float, clock: Callable[[], float]) -> None:
        super().__init__()
        self.tries, self.retry_s, self.max_age_s, self.clock = tries, retry_s, max_age_s, clock
        self._lost: dict[int, list[float]] = {}  # seq -> [first missed, last asked, times asked]
        self.asked = 0

    def add(self, packet: Any) -> bool:
        seq, now = packet.sequence_number, self.clock()
        if self.max_seq is None:
            self.max_seq = seq
            return False
        if uint16_gt(seq, self.max_seq):
            gap = uint16_add(seq, -self.max_seq) - 1
            for offset in range(1, min(gap, 512) + 1):  # a jump of thousands is a restart, not losses
                self._lost[uint16_add(self.max_seq, offset)] = [now, -1.0, 0]
            self.max_seq = seq
        else:
            self._lost.pop(seq, None)
        due = set()
        for lost_seq, entry in list(self._lost.items()):
            first, last, asked = entry
            if asked >= self.tries or now - first > self.max_age_s:
                del self._lost[lost_seq]
            elif now - last >= self.retry_s:
                entry[1], entry[2] = now, asked + 1
                due.add(lost_seq)
        self.missing = due
        self.asked += len(due)
        return bool(due)
