"""The seam that sends a publisher's browser transport-wide feedback (rtc/transport_cc.py) on the pinned
aiortc, which negotiates no transport-cc and sends only REMB.

* the publish offer asks for transport-wide sequence numbers (`offer_transport_cc`);
* `TransportFeedbackSender.start(answer_sdp)`: if the answer kept them, every RTP packet's number is
  read as the datagram is read (`datagram_received` of aioice's socket protocols: SRTP leaves the
  header and its extensions in the clear), with the time the kernel received it (SIOCGSTAMP). Any
  time Python takes itself is too late: a busy event loop reads datagrams in bursts, and the wait
  looks to the browser like a queue growing on the link - it backed off to 30 kbit/s a layer on a
  clean one. Feedback goes out every `interval_s` through `RTCDtlsTransport._send_rtp` (which
  protects RTCP as RTCP).
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
import random
import struct
import time
from typing import Any

from .encoded_tap import TapError, ice_protocols
from .transport_cc import TransportFeedback, answer_transport_cc_id, offer_with_transport_cc, transport_sequence

log = logging.getLogger("classcast.sfu")
EXT_ID = 5  # aiortc's own extensions use 1-3
INTERVAL_S = 0.05  # what browsers send at: often enough for their delay trend, ~1 % of the uplink
SIOCGSTAMP = 0x8906  # Linux: when the last datagram read from a socket arrived (struct timeval)
_TIMEVAL = bytes(16)


def kernel_stamp(fd: int) -> float | None:
    """Wall-clock arrival of the datagram just read from `fd`, or None where the kernel keeps none."""
    try:
        sec, usec = struct.unpack("qq", fcntl.ioctl(fd, SIOCGSTAMP, _TIMEVAL))
    except OSError:
        return None
    return sec + usec / 1e6


def offer_transport_cc(sdp: str) -> str:
    return offer_with_transport_cc(sdp, ext_id=EXT_ID)


class TransportFeedbackSender:
    def __init__(self, pc: Any, *, interval_s: float = INTERVAL_S) -> None:
        self.pc = pc
        self.interval_s = interval_s
        self.epoch = time.time() - 1.0  # arrivals from here: a small reference time, far from the 24-bit wrap
        self.feedback = TransportFeedback(sender_ssrc=random.getrandbits(32))
        self.task: asyncio.Task[None] | None = None
        self._transport: Any = None

    def start(self, answer_sdp: str) -> bool:
        """Start reading and reporting arrivals, if the browser's answer kept transport-wide numbers."""
        ext_id = answer_transport_cc_id(answer_sdp)
        if ext_id is None or self.task is not None:
            return False
        transports = {id(t.receiver.transport): t.receiver.transport for t in self.pc.getTransceivers()
                      if t.receiver.transport is not None}
        if len(transports) != 1:
            raise TapError("transport-wide feedback needs one bundled transport")
        self._transport = next(iter(transports.values()))
        feedback, epoch = self.feedback, self.epoch
        for protocol in ice_protocols(self.pc):
            original = protocol.datagram_received
            sock = protocol.transport.get_extra_info("socket") if protocol.transport else None
            fd = sock.fileno() if sock is not None else -1
            kernel_stamp(fd)  # the first ask turns the socket's timestamps on

            def received(data: bytes, addr: Any, original: Any = original, fd: int = fd) -> None:
                if len(data) > 16 and 128 <= data[0] < 192 and not 192 <= data[1] <= 223:  # RTP, not RTCP
                    seq = transport_sequence(data, ext_id)
                    if seq is not None:
                        feedback.on_packet(seq, (kernel_stamp(fd) or time.time()) - epoch)
                        if not feedback.media_ssrc:  # the browser takes feedback only about one of its streams
                            feedback.media_ssrc = int.from_bytes(data[8:12], "big")
                original(data, addr)

            protocol.datagram_received = received  # the instance's: asyncio calls it per datagram
        self.task = asyncio.ensure_future(self._run())
        log.debug("transport-wide feedback on", extra={"ext_id": ext_id})
        return True

    async def _run(self) -> None:
        while self.pc.connectionState != "closed":
            await asyncio.sleep(self.interval_s)
            if self._transport.state != "connected":
                continue
            try:
                await self._send()
            except Exception:  # never silently: a browser without feedback holds its encoders at 30 kbit/s
                log.exception("transport-wide feedback failed")

    async def _send(self) -> None:
        packets = self.feedback.build()
        if packets and self.feedback.stats.packets % 200 < len(packets):  # every ~10 s
            log.debug("transport-wide feedback", extra=vars(self.feedback.stats))
        for packet in packets:
            try:
                await self._transport._send_rtp(packet)  # noqa: SLF001
            except ConnectionError:  # the connection is going; the loop ends with it
                return
