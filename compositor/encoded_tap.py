"""The one seam into aiortc's receiver (aiortc 1.16, pinned): encoded frames on their way to the decoder.

aiortc has no public API for received encoded media. `RTCRtpReceiver` reassembles RTP packets into
whole encoded frames (a `JitterFrame`: the depacketized payload - a VP8 frame, an H.264 Annex B access
unit, an Opus packet - and its RTP timestamp counted from 0) and hands `(codec, frame)` to its decoder
thread through a private `queue.Queue`. `receiver_tap` wraps that queue's `put` on one receiver: every
frame goes to `on_frame` first (on the event loop's thread, so it must only hand off), and on to the
decoder only when `decode` is true. A recorder that only writes files therefore decodes nothing.

If an aiortc upgrade moves the queue, `receiver_tap` raises `TapError` instead of silently recording
nothing; `tests/test_encoded_tap.py` pins the behaviour against the installed version.
"""
from __future__ import annotations

import logging
import queue
from typing import Any, Callable

from . import CompositorError

log = logging.getLogger("classcast.egress")
_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"
_TAPPED = "_classcast_tap"

# (codec name in lower case, payload, RTP timestamp from 0, clock rate)
FrameCallback = Callable[[str, bytes, int, int], None]


class TapError(CompositorError):
    """aiortc's receiver no longer looks the way this seam expects."""


def receiver_tap(receiver: Any, *, on_frame: FrameCallback, decode: bool) -> None:
    """Send this receiver's encoded frames to `on_frame` (and to its decoder if `decode`). Idempotent."""
    decoder_queue = getattr(receiver, _QUEUE_ATTR, None)
    if not isinstance(decoder_queue, queue.Queue):
        raise TapError("aiortc's RTCRtpReceiver has no decoder queue to tap; check the pinned aiortc version")
    if getattr(decoder_queue, _TAPPED, False):
        return
    original_put = decoder_queue.put

    def put(item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is None:  # the receiver is stopping: let the decoder thread (and the track) end
            original_put(item, block, timeout)
            return
        codec, frame = item
        try:
            on_frame(codec.name.lower(), frame.data, int(frame.timestamp), int(codec.clockRate))
        except Exception:  # noqa: BLE001 - a consumer's bug must not break aiortc's receive path
            log.exception("encoded frame consumer failed")
        if decode:
            original_put(item, block, timeout)

    decoder_queue.put = put  # type: ignore[method-assign]
    setattr(decoder_queue, _TAPPED, True)


async def receiver_request_keyframe(receiver: Any) -> bool:
    """Ask the sender for a keyframe (RTCP PLI) on every SSRC this receiver hears. False if none yet."""
    sources = [s.source for s in receiver.getSynchronizationSources()]
    for ssrc in sources:
        await receiver._send_rtcp_pli(ssrc)  # noqa: SLF001 - part of the same documented seam
    return bool(sources)
