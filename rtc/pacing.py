"""The seam that puts a `Pacer` (rtc/pacer.py) in front of a peer connection's socket, for the pinned
aiortc: every RTP packet of the connection's senders goes through `RTCDtlsTransport._send_rtp`, the
one place before SRTP protection where a packet is still plain RTP (its payload type, sequence number
and header extensions readable). RTCP is not paced."""
from __future__ import annotations

from typing import Any

from .encoded_tap import TapError
from .pacer import Pacer

_PACED = "_classcast_pacer"


def connection_pace(pc: Any, pacer: Pacer) -> None:
    """Pace every packet this connection sends (call once its description is set: the transports and
    negotiated payload types exist then). The pacer learns which payload types are audio and RTX from
    the negotiated codecs. Idempotent per transport."""
    audio, rtx = set(pacer.audio_pts), set(pacer.rtx_pts)
    for transceiver in pc.getTransceivers():
        codecs = getattr(transceiver, "_codecs", None)
        if codecs is None:
            raise TapError("aiortc's RTCRtpTransceiver has no negotiated codec list; check the pinned aiortc version")
        for codec in codecs:
            name = codec.mimeType.lower()
            if name.endswith("/rtx"):
                rtx.add(codec.payloadType)
            elif name.startswith("audio/"):
                audio.add(codec.payloadType)
    pacer.audio_pts, pacer.rtx_pts = frozenset(audio), frozenset(rtx)
    for transceiver in pc.getTransceivers():
        transport = transceiver.sender.transport
        if transport is None or getattr(transport, _PACED, None) is pacer:
            continue
        original = getattr(transport, "_send_rtp", None)
        if original is None:
            raise TapError("aiortc's RTCDtlsTransport has no _send_rtp to pace; check the pinned aiortc version")
        if getattr(transport, _PACED, None) is not None:
            original = getattr(transport, _PACED + "_original")

        async def send_rtp(data: bytes, original: Any = original) -> None:
            if data and 192 <= data[1] <= 223:  # RTCP (RFC 5761 demux): never paced
                await original(data)
                return
            await pacer.send(data, original)

        setattr(transport, _PACED + "_original", original)
        transport._send_rtp = send_rtp  # noqa: SLF001 - the documented seam
        setattr(transport, _PACED, pacer)
