"""Forwarding without transcoding: each publisher's encoded frames go, untouched, to every subscriber.

aiortc receives a publisher's RTP and reassembles whole encoded frames; the encoded-frame tap
(`rtc/encoded_tap.py`) takes them before the decoder, so the node decodes nothing. A
`PublishedTrack` fans each frame out to the `ForwardTrack` of every subscribe transceiver carrying it;
that track hands aiortc's sender an `av.Packet`, which the sender only packetizes (VP8 descriptor,
H.264 FU-A, Opus as is): no decoding, no encoding, one copy of the payload per subscriber.

What a forwarding SFU must do itself, because nothing is re-encoded any more:

* **keyframes** - a new subscriber (or one that lost packets) needs one: its PLI/FIR reaches the
  publisher, coalesced and rate-limited per published track, and a `ForwardTrack` drops frames until
  the next keyframe after joining, switching source, or overflowing;
* **bitrate** - each subscriber's REMB is kept, and the publisher hears the weakest one still worth
  serving (never below `REMB_FLOOR_BPS`: one hopeless link must not ruin the picture for everyone);
* **timestamps** - a transceiver re-used for another publisher keeps its RTP clock moving forward,
  so receivers see one continuous stream;
* **layers** - a publisher may send its camera once per layer (`PublishedLayers`, see `layers.py`):
  each subscriber's ForwardTrack gets the layer its own link carries, and moves to another only on
  that layer's keyframe, so a weak subscriber never holds back what the others get;
* **staleness** - frames that reach the node long after their time (a publisher's browser sending
  what it queued during an outage) are dropped, not replayed to everyone at several times real
  speed; video then waits for a fresh keyframe.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from fractions import Fraction
from functools import lru_cache
from typing import Callable

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from rtc.keyframes import is_keyframe

from .layers import ByteRate, ChooserConfig, LayerChooser, LinkEstimate, StageLayersConfig

log = logging.getLogger("classcast.sfu")

KEYFRAME_MIN_INTERVAL_S = 0.3  # at most one PLI per published track per interval; later asks coalesce
REMB_FLOOR_BPS = 150_000
REMB_STALE_S = 5.0  # a subscriber's estimate older than this no longer holds the publisher back
QUEUE_FRAMES = {"video": 90, "audio": 150}  # ~3 s: a subscriber further behind starts over at a keyframe
FRAME_TICKS = {"video": 3000, "audio": 960}  # one frame at 30 fps / 20 ms: the step across a source switch
# A frame later than this behind its own timestamp (against the least late one of the last
# STALE_WINDOW_S) is stale. Above what a weak link adds: a frame waits up to a second for a
# retransmission (rtc.encoded_tap.loss_timing), and a browser's pacer on a 300 kbit/s link holds frames
# for a second or two (at 0.6 s and 1.2 s, stale frames there meant a keyframe request, a keyframe that
# queued again, and freezes of 8-9 s at the teacher); below the seconds of a browser's backlog after an
# outage (with transport-wide feedback its congestion window stops it queueing much during one).
STALE_AFTER_S = 2.5
STALE_WINDOW_S = 10.0
LAYERS_START_S = 2.0  # a publisher's layers that have not sent by then are taken as not coming
# A layer whose frame rate fell below this share of its own maximum (the browser starved it: a weak
# uplink's estimate spread over every layer) is not offered while a smoother one is: 320x180 at 30 fps
# beats 640x360 at one frame every few seconds.
SMOOTH_FPS_SHARE = 0.4
# ...and comes back above this share: one threshold made layers flap on a lossy uplink, and each flap
# moved subscribers to a layer whose keyframe they then waited for (under a frame a second at the teacher).
SMOOTH_AGAIN_SHARE = 0.6


class Lateness:
    """How late each frame arrives, judged by its own RTP clock: arrival time minus media time, less the
    smallest such difference seen in the last `window_s` (the path's own delay and the clocks' offset).
    A windowed minimum, so a lasting change of path delay is learnt within the window."""

    def __init__(self, *, window_s: float = STALE_WINDOW_S) -> None:
        self.window_s = window_s
        self._mins: collections.deque[tuple[float, float]] = collections.deque()  # (arrival, offset), rising

    def late_s(self, *, timestamp: int, clock_rate: int, arrival_s: float) -> float:
        offset = arrival_s - timestamp / clock_rate
        while self._mins and self._mins[-1][1] >= offset:
            self._mins.pop()
        self._mins.append((arrival_s, offset))
        while self._mins[0][0] < arrival_s - self.window_s:
            self._mins.popleft()
        return offset - self._mins[0][1]


class Frame:
    __slots__ = ("codec", "data", "timestamp", "clock_rate", "keyframe")

    def __init__(self, codec: str, data: bytes, timestamp: int, clock_rate: int, keyframe: bool) -> None:
        self.codec, self.data, self.timestamp, self.clock_rate, self.keyframe = codec, data, timestamp, clock_rate, keyframe


class PublishedTrack:
    """One publisher's track on this node: frames in (from the tap), out to every ForwardTrack on it."""

    def __init__(self, kind: str, *, request_keyframe: Callable[[], object], muted: bool = False) -> None:
        self.kind = kind
        self.codec: str | None = None
        self.muted = muted
        self.outputs: set[ForwardTrack] = set()
        self.frames = 0
        self.ended = False
        self._request_keyframe = request_keyframe
        self._last_pli = 0.0
        self._pli_pending: asyncio.TimerHandle | None = None
        self._remb: dict[int, tuple[float, int]] = {}  # id(output) -> (when, bps)
        self.lateness = Lateness()
        self.stale = 0  # frames dropped for arriving too late
        self.gaps = 0  # lost packets the receiver gave up on
        self._asked_at: float | None = None  # the first keyframe request not answered yet
        self.keyframe_wait_s: float | None = None  # the last request's answer took this long
        self._after_stale = False  # video: fresh frames wait for a keyframe after stale ones
        self.rate = ByteRate()  # what this track brings in, for the layer choosers

    # frames arrive on the event loop's thread (the receiver's RTP handler): hand off only
    def on_frame(self, codec: str, data: bytes, timestamp: int, clock_rate: int) -> None:
        self.codec = codec
        self.frames += 1
        now = time.monotonic()
        self.rate.add(now, len(data))
        late = self.lateness.late_s(timestamp=timestamp, clock_rate=clock_rate, arrival_s=now)
        if self.muted:
            return
        keyframe = is_keyframe(codec, data)
        if keyframe and self._asked_at is not None:  # how long the publisher took to answer: on a weak
            self.keyframe_wait_s = now - self._asked_at  # uplink, what a frozen subscriber waits through
            self._asked_at = None
        if late > STALE_AFTER_S:
            self.stale += 1
            if self.kind == "video" and not self._after_stale:
                self._after_stale = True
                for output in list(self.outputs):
                    output.source_resumed(self)  # continue each subscriber's clock from the next fresh keyframe
            return
        if self._after_stale:
            self._after_stale = False
            if not keyframe:
                self.request_keyframe()
        frame = Frame(codec, data, timestamp, clock_rate, keyframe)
        for output in list(self.outputs):  # a push may cut a subscriber over to this track
            output.push(frame, self)

    def on_gap(self) -> None:
        """The receiver gave up on a lost packet (rtc.encoded_tap.receiver_video_deadline): the frames
        that follow refer to one nobody got, so every subscriber waits for the next keyframe, asked for now."""
        self.gaps += 1
        for output in list(self.outputs):
            output.await_keyframe(self)
        self.request_keyframe()

    def set_muted(self, muted: bool) -> None:
        if self.muted and not muted and self.kind == "video":
            self.request_keyframe()  # subscribers need a picture to start from again
        self.muted = muted
        for output in list(self.outputs):
            output.source_resumed(self)

    def request_keyframe(self) -> None:
        """Coalesced and rate-limited: many subscribers asking at once cost the publisher one keyframe."""
        if self.kind != "video" or self.ended or self._pli_pending is not None:
            return
        wait = self._last_pli + KEYFRAME_MIN_INTERVAL_S - time.monotonic()
        if wait > 0:
            self._pli_pending = asyncio.get_event_loop().call_later(wait, self._send_pli)
        else:
            self._send_pli()

    def _send_pli(self) -> None:
        self._pli_pending = None
        self._last_pli = time.monotonic()
        if self._asked_at is None:
            self._asked_at = self._last_pli
        result = self._request_keyframe()
        if asyncio.iscoroutine(result):
            asyncio.ensure_future(result)

    def remb_report(self, output: "ForwardTrack", bitrate_bps: int) -> None:
        self._remb[id(output)] = (time.monotonic(), bitrate_bps)

    def remb_cap(self) -> int | None:
        """The weakest fresh subscriber estimate worth serving, or None when nobody reported one."""
        now = time.monotonic()
        fresh = [bps for output, (when, bps) in list(self._remb.items()) if now - when <= REMB_STALE_S]
        return max(REMB_FLOOR_BPS, min(fresh)) if fresh else None

    def attach(self, output: "ForwardTrack") -> None:
        self.outputs.add(output)

    def detach(self, output: "ForwardTrack") -> None:
        self.outputs.discard(output)
        self._remb.pop(id(output), None)

    def end(self) -> None:
        self.ended = True
        if self._pli_pending is not None:
            self._pli_pending.cancel()
            self._pli_pending = None
        for output in list(self.outputs):
            output.switch(None)


class PublishedLayers:
    """One publisher's camera, once per layer (highest first, as `config`), each a PublishedTrack:
    what a subscriber's ForwardTrack chooses among. A browser that sends fewer (an older page) leaves
    the others quiet, and nobody is given a quiet layer."""

    kind = "video"

    def __init__(self, config: StageLayersConfig, tracks: list[PublishedTrack]) -> None:
        self.config = config
        self.tracks = tracks
        self._own: dict[int, int] = {}  # layer -> the node's own REMB for its receiver
        self._started: float | None = None
        self._smooth = [True] * len(tracks)

    @property
    def codec(self) -> str | None:
        return next((t.codec for t in self.tracks if t.codec), None)

    @property
    def frames(self) -> int:
        return max(t.frames for t in self.tracks)

    def rates(self, now: float) -> list[float]:
        """Measured bits/s per layer; the configured maximum until a layer has sent anything."""
        return [t.rate.bps(now) or layer.max_bitrate_bps for t, layer in zip(self.tracks, self.config.layers)]

    def active(self, now: float) -> list[bool]:
        """Layers sending now. For the first seconds of a publisher every layer counts: they start a few
        frames apart, and a subscriber sent to whichever came first would be moved again at once."""
        if self._started is None and any(t.frames for t in self.tracks):
            self._started = now
        young = self._started is None or now - self._started < LAYERS_START_S
        if young:
            return [True] * len(self.tracks)
        sending = [t.rate.active(now) for t in self.tracks]
        for i, (t, layer) in enumerate(zip(self.tracks, self.config.layers)):
            share = t.rate.fps(now) / layer.max_fps
            self._smooth[i] = share >= (SMOOTH_FPS_SHARE if self._smooth[i] else SMOOTH_AGAIN_SHARE)
        smooth = [on and ok for on, ok in zip(sending, self._smooth)]
        return smooth if any(smooth) else sending

    def describe(self, now: float) -> list[dict[str, object]]:
        active = self.active(now)
        return [
            {"layer": layer.name, "kbps": round(t.rate.bps(now) / 1000), "fps": round(t.rate.fps(now), 1),
             "active": on, "own_remb_kbps": round(self._own.get(i, 0) / 1000), "stale": t.stale, "gaps": t.gaps,
             "keyframe_wait_s": None if t.keyframe_wait_s is None else round(t.keyframe_wait_s, 2)}
            for i, (t, layer, on) in enumerate(zip(self.tracks, self.config.layers, active))
        ]

    def remb_for(self, index: int, own_bps: int) -> int:
        """The REMB every layer's receiver tells the publisher. A browser takes each REMB as the estimate
        for its whole connection, so all of them say the same total: per layer, the node's own estimate
        capped by that layer's subscribers (never those of another layer)."""
        self._own[index] = own_bps
        total = 0
        for i, bps in self._own.items():
            cap = self.tracks[i].remb_cap()
            total += min(bps, cap) if cap is not None else bps
        return total

    def set_muted(self, muted: bool) -> None:
        for track in self.tracks:
            track.set_muted(muted)

    def end(self) -> None:
        for track in self.tracks:
            track.end()


class ForwardTrack(MediaStreamTrack):
    """The source of one subscribe transceiver's sender, for the connection's whole life: it carries
    whichever PublishedTrack it is pointed at (or nothing, quietly) and hands out encoded packets."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.source: PublishedTrack | None = None
        self.layers: PublishedLayers | None = None  # when the source is one layer of these
        self.pending: PublishedTrack | None = None  # the layer to cut over to at its next keyframe
        self.pinned: int | None = None  # a layer index asked for (egress), instead of the chooser's
        self.chooser_config = ChooserConfig()
        self.chooser: LayerChooser | None = None
        self.link = LinkEstimate(self.chooser_config)
        self.share: Callable[[], int] = lambda: 1  # video tracks sharing this subscriber's estimate
        self.uplink: Callable[[float], float | None] = lambda now: None  # what this subscriber sends us, bits/s
        self.on_layer: Callable[[str | None], None] | None = None  # the layer this subscriber now gets
        self.codec: str | None = None  # the codec this transceiver was negotiated for
        self.forwarded = 0
        self.dropped = 0
        self._queue: collections.deque[tuple[Frame, int]] = collections.deque()  # (frame, epoch)
        self._epoch = 0  # a new one per cut-over: its frames continue the clock from where it is
        self._ready = asyncio.Event()
        self._need_keyframe = kind == "video"
        self._offset: int | None = None  # out timestamp = in timestamp + offset
        self._last_out = -FRAME_TICKS[kind]
        self._out_epoch = 0

    def switch(self, source: PublishedTrack | PublishedLayers | None) -> None:
        layers = source if isinstance(source, PublishedLayers) else None
        if layers is not None:
            if layers is self.layers:
                return
            start = self.pinned if self.pinned is not None else min(1, len(layers.tracks) - 1)
            self.chooser = LayerChooser(self.chooser_config, layers=len(layers.tracks), start=start)
            self.link = LinkEstimate(self.chooser_config)
            track: PublishedTrack | None = layers.tracks[start]
        else:
            if self.source is source and self.layers is None:
                return
            self.chooser = None
            track = source  # type: ignore[assignment]
        self._drop_pending()
        self.layers = layers
        if self.source is not None:
            self.source.detach(self)
        self.source = track
        self._queue.clear()
        self._offset = None  # the next frame continues this track's clock, whoever sends it
        self._need_keyframe = self.kind == "video"
        if track is not None:
            track.attach(self)
            track.request_keyframe()
        self._layer_changed()

    def adapt(self, now: float) -> None:
        """Point this subscriber at the layer its link carries (or the one asked for); the cut-over
        waits for that layer's keyframe."""
        layers = self.layers
        if layers is None:
            return
        rates, active = layers.rates(now), layers.active(now)
        if self.chooser is None or self.pinned is not None:
            usable = [i for i in range(len(active)) if active[i]]
            want = self.pinned or 0
            index = min(usable, key=lambda i: (abs(i - want), i)) if usable else want
        else:
            estimate = self.link.bps(now)
            if estimate is not None:
                estimate /= max(1, self.share())
            lossy = self.link.loss > self.chooser_config.loss_high
            uplink = self.uplink(now)
            hint = uplink / max(1, self.share()) if uplink else None
            index = self.chooser.update(now, estimate, rates, active, lossy=lossy, hint=hint)
        self._select(layers.tracks[index])

    def _select(self, track: PublishedTrack) -> None:
        if track is self.source:
            self._drop_pending()
            return
        if track is self.pending:
            return
        self._drop_pending()
        if self._need_keyframe:  # nothing flows from the current layer yet: no picture to keep
            if self.source is not None:
                self.source.detach(self)
            self.source = track
            self._epoch += 1  # frames still queued from the old layer keep their own offset
            track.attach(self)
            track.request_keyframe()
            self._layer_changed()
            return
        self.pending = track
        track.attach(self)
        track.request_keyframe()

    def _drop_pending(self) -> None:
        if self.pending is not None:
            if self.pending is not self.source:
                self.pending.detach(self)
            self.pending = None

    def _layer_name(self, track: PublishedTrack | None) -> str | None:
        if self.layers is not None and track is not None and track in self.layers.tracks:
            return self.layers.config.layers[self.layers.tracks.index(track)].name
        return None

    def describe(self, now: float) -> dict[str, object]:
        estimate = self.link.bps(now)
        return {
            "layer": self._layer_name(self.source), "pending": self._layer_name(self.pending),
            "need_keyframe": self._need_keyframe, "estimate_kbps": round(estimate / 1000) if estimate else None,
            "remb_kbps": round(self.link.remb / 1000) if self.link.remb else None, "loss": round(self.link.loss, 3),
            "forwarded": self.forwarded, "dropped": self.dropped, "queued": len(self._queue),
        }

    def _layer_changed(self) -> None:
        name = self._layer_name(self.source)
        log.debug("layer now %s", name, extra={"pending": self._layer_name(self.pending)})
        if self.on_layer is not None:
            self.on_layer(name)

    def feedback_remb(self, bitrate_bps: int) -> None:
        """This subscriber's REMB (its whole connection's estimate) for our sender; its publisher's cap
        hears this track's share of it."""
        self.remb(bitrate_bps // max(1, self.share()))
        self.link.on_remb(time.monotonic(), bitrate_bps)
        self.adapt(time.monotonic())

    def feedback_loss(self, fraction: float) -> None:
        """The share of our packets this subscriber reported lost (RTCP receiver report)."""
        now = time.monotonic()
        sent = self.source.rate.bps(now) if self.source is not None else 0.0
        self.link.on_loss(now, fraction, sent)
        self.adapt(now)

    def await_keyframe(self, origin: PublishedTrack) -> None:
        """Forward nothing more from `origin` until its next keyframe (its clock goes on as it was)."""
        if origin is self.source and self.kind == "video":
            self._need_keyframe = True

    def source_resumed(self, origin: PublishedTrack | None = None) -> None:
        if origin is not None and origin is not self.source:
            return  # a layer we only wait on
        self._offset = None
        self._need_keyframe = self.kind == "video"

    def push(self, frame: Frame, origin: PublishedTrack | None = None) -> None:
        if origin is not None and origin is not self.source:
            if origin is not self.pending or not frame.keyframe:
                return  # keep forwarding the current layer until the target's keyframe
            previous, self.source, self.pending = self.source, origin, None
            if previous is not None:
                previous.detach(self)  # its REMB cap no longer hears this subscriber
            self._epoch += 1
            self._need_keyframe = False
            self._layer_changed()
        if self._need_keyframe:
            if not frame.keyframe:
                self.dropped += 1
                return
            self._need_keyframe = False
        if len(self._queue) >= QUEUE_FRAMES[self.kind]:
            # Too far behind (a stalled sender): start over at the next keyframe rather than grow.
            self.dropped += len(self._queue)
            self._queue.clear()
            self._need_keyframe = self.kind == "video"
            if self.source is not None:
                self.source.request_keyframe()
            if self._need_keyframe and not frame.keyframe:
                return
        self._queue.append((frame, self._epoch))
        self._ready.set()

    def request_keyframe(self) -> None:
        """This subscriber asked (PLI/FIR): the publisher is asked, once per interval for everyone."""
        if self.source is not None:
            self.source.request_keyframe()

    def remb(self, bitrate_bps: int) -> None:
        if self.source is not None:
            self.source.remb_report(self, bitrate_bps)

    async def recv(self) -> av.Packet:
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            frame, epoch = self._queue.popleft()
            if epoch != self._out_epoch:  # the first frame of another layer: same clock, fresh offset
                self._out_epoch, self._offset = epoch, None
            if self._offset is None:
                self._offset = self._last_out + FRAME_TICKS[self.kind] - frame.timestamp
            out = frame.timestamp + self._offset
            if out <= self._last_out:  # a publisher's clock that went back: keep ours moving forward
                self._offset += self._last_out + 1 - out
                out = self._last_out + 1
            self._last_out = out
            packet = av.Packet(frame.data)
            packet.pts = out
            packet.time_base = _time_base(frame.clock_rate)
            self.forwarded += 1
            return packet

    def stop(self) -> None:
        super().stop()
        self.switch(None)
        self._ready.set()


@lru_cache(maxsize=8)
def _time_base(clock_rate: int) -> Fraction:
    """1/clock rate, made once: recv() runs per frame per subscriber, and a Fraction costs microseconds."""
    return Fraction(1, clock_rate)
