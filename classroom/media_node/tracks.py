"""Track wrappers the SFU puts between publishers and the subscribe connections' senders.

aiortc runs one send loop per RTCRtpSender for the life of the connection. Handing it a track that
later stops kills that loop for good (a stopped MediaRelay proxy either never answers `recv()` or
raises MediaStreamError), and frames whose timestamps go backwards are refused by libvpx. So:

* every subscribe transceiver keeps one `SwitchableTrack`, which never ends and forwards whichever
  publisher it is pointed at, waiting quietly while it carries nobody;
* every published video track is wrapped in a `NodeClockTrack`, which stamps frames with this node's
  monotonic clock. MediaRelay hands the *same* frame object to every subscriber, so the stamp must be
  one value per frame (not per subscriber); a node-wide clock also keeps time moving forward when a
  transceiver switches from one publisher to the next.
"""
from __future__ import annotations

import asyncio
import time
from fractions import Fraction

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av.frame import Frame

VIDEO_CLOCK = 90_000
VIDEO_TIME_BASE = Fraction(1, VIDEO_CLOCK)
_EPOCH = time.monotonic()


class NodeClockTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.source = source

    async def recv(self) -> Frame:
        frame = await self.source.recv()
        frame.pts = int((time.monotonic() - _EPOCH) * VIDEO_CLOCK)
        frame.time_base = VIDEO_TIME_BASE
        return frame

    def stop(self) -> None:
        super().stop()
        self.source.stop()


class GateTrack(MediaStreamTrack):
    """A publisher's track as the node forwards it: while muted, frames are read and dropped, so a
    mute the instructor asked for holds even if the publisher's browser ignores it."""

    def __init__(self, source: MediaStreamTrack, *, muted: bool = False) -> None:
        super().__init__()
        self.kind = source.kind
        self.source = source
        self.muted = muted

    async def recv(self) -> Frame:
        while True:
            frame = await self.source.recv()
            if not self.muted:
                return frame

    def stop(self) -> None:
        super().stop()
        self.source.stop()


class SwitchableTrack(MediaStreamTrack):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.source: MediaStreamTrack | None = None
        self._changed = asyncio.Event()

    def switch(self, source: MediaStreamTrack | None) -> MediaStreamTrack | None:
        """Point at `source` (None: carry nothing); returns the previous source for the caller to stop."""
        previous, self.source = self.source, source
        self._changed.set()
        return previous

    async def recv(self) -> Frame:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            source = self.source
            self._changed.clear()
            if source is None:
                await self._changed.wait()
                continue
            getter = asyncio.ensure_future(source.recv())
            getter.add_done_callback(_consume_outcome)
            changed = asyncio.ensure_future(self._changed.wait())
            done, _ = await asyncio.wait({getter, changed}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()  # switched away mid-wait: the old source may never answer
                continue
            changed.cancel()
            try:
                return getter.result()
            except MediaStreamError:
                if self.source is source:  # the publisher went away; wait for the next one
                    self.source = None

    def stop(self) -> None:
        super().stop()
        self._changed.set()
        if self.source is not None:
            self.source.stop()
            self.source = None


def _consume_outcome(task: asyncio.Future) -> None:
    """An abandoned `recv()` may still end in MediaStreamError; it is expected, not worth a log line."""
    if not task.cancelled():
        task.exception()
