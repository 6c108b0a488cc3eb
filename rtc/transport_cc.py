"""Transport-wide congestion control feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01) for
what a publisher's browser sends the node: pure, no aiortc.

A receive-side estimate (REMB, what aiortc computes) reads delay from one stream at a time and took
jitter for congestion: under 5 % loss and 50 ± 20 ms jitter the node told a student's browser it had
about 100 kbit/s on an uncapped link, and its three layers starved. With transport-wide feedback the
browser runs its own congestion controller (delay trend, loss, probing: what it does in a direct call)
on the arrival time of every packet it sent us; the node only reports those arrivals.

`TransportFeedback` collects (transport-wide sequence number, arrival time) and turns them into RTCP
transport feedback packets (RTPFB, FMT 15): packet status chunks (two-bit status vectors: simple and
always valid), then receive deltas in 250 µs steps, one byte when 0-63.75 ms after the previous, two
(signed) otherwise. A packet is reported once; one that arrives after it was reported lost stays lost.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from .rtp_header import extension_span

URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
DELTA_S = 0.00025
REFERENCE_S = 0.064
MAX_STATUSES = 400  # per feedback packet: about a kilobyte
RTPFB, FMT_TRANSPORT_CC = 205, 15
NOT_RECEIVED, SMALL_DELTA, LARGE_DELTA = 0, 1, 2


@dataclass
class FeedbackStats:
    packets: int = 0  # feedback packets built
    reported: int = 0  # media packets reported received
    lost: int = 0  # reported not received
    late: int = 0  # arrived after being reported lost


class TransportFeedback:
    def __init__(self, *, sender_ssrc: int) -> None:
        self.sender_ssrc = sender_ssrc
        # One of the sender's SSRCs: libwebrtc drops feedback about a stream it does not send (and its
        # congestion window, seeing nothing acknowledged, then holds every encoder at 30 kbit/s).
        self.media_ssrc = 0
        self._arrivals: dict[int, float] = {}  # extended sequence number -> arrival (s)
        self._next: int | None = None  # first extended sequence number not reported yet
        self._highest: int | None = None
        self._count = 0  # feedback packet count, 8 bits on the wire
        self.stats = FeedbackStats()

    def on_packet(self, seq: int, arrival_s: float) -> None:
        extended = self._unwrap(seq)
        if self.stats.packets and self._next is not None and extended < self._next:
            self.stats.late += 1  # reported lost already
            return
        self._arrivals.setdefault(extended, arrival_s)  # a duplicate keeps its first arrival
        if self._next is None or extended < self._next:  # before the first report: reordered
            self._next = extended

    def _unwrap(self, seq: int) -> int:
        if self._highest is None:
            self._highest = seq
            return seq
        delta = (seq - self._highest) & 0xFFFF
        extended = self._highest + delta if delta < 0x8000 else self._highest - (0x10000 - delta)
        self._highest = max(self._highest, extended)
        return extended

    def build(self) -> list[bytes]:
        """Feedback for everything up to the newest packet received; [] when nothing new arrived."""
        if not self._arrivals or self._next is None:
            return []
        end = max(self._arrivals)
        statuses = [(seq, self._arrivals.get(seq)) for seq in range(self._next, end + 1)]
        self._arrivals = {}  # everything up to the newest is reported now
        self._next = end + 1
        out = []
        start = 0
        while start < len(statuses):
            packet, used = self._one(statuses[start:start + MAX_STATUSES])
            out.append(packet)
            start += used
        return out

    def _one(self, statuses: list[tuple[int, float | None]]) -> tuple[bytes, int]:
        """One feedback packet from the front of `statuses`; returns it and how many it covers (a delta
        that does not fit two bytes ends it: the next packet starts from its own reference time)."""
        # Integer 250 µs ticks throughout: the first delta is then always 0-255 after its reference.
        ticks_of = [None if t is None else round(t / DELTA_S) for _, t in statuses]
        first = next((t for t in ticks_of if t is not None), 0)
        reference = first // 256  # 64 ms = 256 ticks
        previous = reference * 256
        symbols: list[int] = []
        deltas = bytearray()
        for arrival in ticks_of:
            if arrival is None:
                symbols.append(NOT_RECEIVED)
                self.stats.lost += 1
                continue
            delta = arrival - previous
            if 0 <= delta <= 0xFF:
                symbols.append(SMALL_DELTA)
                deltas.append(delta)
            elif -0x8000 <= delta <= 0x7FFF:
                symbols.append(LARGE_DELTA)
                deltas += struct.pack("!h", delta)
            else:  # never the first received one: it is within 64 ms of its reference
                break
            previous = arrival
            self.stats.reported += 1
        chunks = bytearray()
        for i in range(0, len(symbols), 7):
            vector = 0xC000  # status vector chunk, two-bit symbols
            for j, symbol in enumerate(symbols[i:i + 7]):
                vector |= symbol << (12 - 2 * j)
            chunks += struct.pack("!H", vector)
        body = struct.pack("!IIHH", self.sender_ssrc, self.media_ssrc, statuses[0][0] & 0xFFFF, len(symbols))
        body += (reference & 0xFFFFFF).to_bytes(3, "big") + bytes([self._count & 0xFF]) + chunks + deltas
        self._count += 1
        self.stats.packets += 1
        padding = -len(body) % 4
        if padding:  # RFC 3550 padding: the last octet counts the padding octets
            body += bytes(padding - 1) + bytes([padding])
        words = (4 + len(body)) // 4 - 1
        header = struct.pack("!BBH", 0x80 | (0x20 if padding else 0) | FMT_TRANSPORT_CC, RTPFB, words)
        return header + bytes(body), len(symbols)


def parse_feedback(data: bytes) -> tuple[int, int, list[float | None]]:
    """(base sequence number, feedback count, per packet its arrival in seconds from the reference
    time's epoch, None if not received): the inverse of `TransportFeedback`, for tests and the bench."""
    first, pt, words = struct.unpack_from("!BBH", data, 0)
    if pt != RTPFB or first & 0x1F != FMT_TRANSPORT_CC:
        raise ValueError("not a transport feedback packet")
    end = 4 * (words + 1)
    if first & 0x20:
        end -= data[end - 1]
    base, count = struct.unpack_from("!HH", data, 12)
    reference = int.from_bytes(data[16:19], "big")
    fb_count = data[19]
    pos, symbols = 20, []
    while len(symbols) < count:
        (chunk,) = struct.unpack_from("!H", data, pos)
        pos += 2
        if chunk & 0x8000:
            two_bit = bool(chunk & 0x4000)
            width, n = (2, 7) if two_bit else (1, 14)
            for j in range(n):
                symbols.append((chunk >> (14 - width * (j + 1))) & (3 if two_bit else 1))
        else:
            symbols += [(chunk >> 13) & 3] * (chunk & 0x1FFF)
    symbols = symbols[:count]
    now = reference * REFERENCE_S
    arrivals: list[float | None] = []
    for symbol in symbols:
        if symbol == NOT_RECEIVED:
            arrivals.append(None)
            continue
        if symbol == SMALL_DELTA:
            ticks = data[pos]
            pos += 1
        else:
            (ticks,) = struct.unpack_from("!h", data, pos)
            pos += 2
        now += ticks * DELTA_S
        arrivals.append(now)
    if pos > end:
        raise ValueError("transport feedback shorter than its statuses")
    return base, fb_count, arrivals


def offer_with_transport_cc(sdp: str, *, ext_id: int) -> str:
    """An SDP offer whose audio and video sections ask for transport-wide sequence numbers and
    feedback (an extmap and `a=rtcp-fb:<pt> transport-cc` per codec but RTX)."""
    sections = re.split(r"(?m)^(?=m=)", sdp)
    out = [sections[0]]
    for section in sections[1:]:
        if not section.startswith(("m=audio", "m=video")) or URI in section:
            out.append(section)
            continue
        lines = section.splitlines(keepends=True)
        eol = "\r\n" if lines[0].endswith("\r\n") else "\n"
        rtx = set(re.findall(r"(?m)^a=rtpmap:(\d+) rtx/", section))
        pts = [pt for pt in lines[0].split()[3:] if pt not in rtx]
        added = [f"a=extmap:{ext_id} {URI}{eol}"] + [f"a=rtcp-fb:{pt} transport-cc{eol}" for pt in pts]
        last_attr = max((i for i, line in enumerate(lines) if line.startswith("a=")), default=len(lines) - 1)
        out.append("".join(lines[:last_attr + 1] + added + lines[last_attr + 1:]))
    return "".join(out)


def answer_transport_cc_id(sdp: str) -> int | None:
    """The extension id the answer kept for transport-wide sequence numbers (None: refused)."""
    match = re.search(rf"(?m)^a=extmap:(\d+)(?:/\w+)? {re.escape(URI)}\s*$", sdp)
    return int(match.group(1)) if match else None


def transport_sequence(data: bytes, ext_id: int) -> int | None:
    """The transport-wide sequence number an RTP packet carries, or None."""
    span = extension_span(data, ext_id)
    if span is None or span[1] != 2:
        return None
    return struct.unpack_from("!H", data, span[0])[0]
