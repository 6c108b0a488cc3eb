"""Video layers on the stage: what each publisher sends, and which layer each subscriber gets (pure, no aiortc).

aiortc cannot tell simulcast encodings (RIDs) apart, so a publisher sends its camera once per layer on
a transceiver of its own (the publish offer carries one recvonly video transceiver per `LayerConfig`,
the page scales each with `setParameters`), and the node keeps one PublishedTrack per layer.

Per subscriber track, a `LayerChooser` turns that subscriber's feedback into a layer:

* the estimate: the REMB its browser sends (the connection's delay-based estimate, shared among the
  video it receives) bounded by a loss-based estimate from its receiver reports, as GCC does
  (loss > 10 % cuts, < 2 % lets it grow);
* down at once when the estimate no longer carries the current layer's measured rate;
* up after the way up has held for a few seconds. A receive-side estimate cannot say much more than
  what it receives (Chromium's stays under 1.5x its throughput, and climbs 8 % a second), so "held"
  is either the estimate - or the member's own uplink, as the node measures what they send: a link
  that carries 1.5 Mbit/s up rarely carries less down - above the next layer's rate plus a margin,
  or the estimate well above what is sent now (nothing limits it: try the next layer, if it is within
  reach). Once there, the estimate must keep rising towards the layer, or it goes down again. An up-switch that ends in a down-switch soon after doubles the
  hold before that layer is tried again.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass


@dataclass(frozen=True)
class LayerConfig:
    name: str  # short and stable: "f", "h", "q"
    height: int  # nominal, for a 640x360 camera: what an egress asking for a tile size compares with
    scale_down_by: float  # the page's scaleResolutionDownBy for this layer's sender
    max_bitrate_bps: int  # the page's maxBitrate; the rate assumed until one is measured
    max_fps: int


@dataclass(frozen=True)
class StageLayersConfig:
    layers: tuple[LayerConfig, ...]  # highest first

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("a stage needs at least one video layer")
        if len({layer.name for layer in self.layers}) != len(self.layers):
            raise ValueError("layer names must differ")

    def fitting(self, max_height: int) -> int:
        """Index of the highest layer no taller than `max_height` (the lowest if none is)."""
        return next((i for i, layer in enumerate(self.layers) if layer.height <= max_height), len(self.layers) - 1)


# h fits a 300 kbit/s link with the audio and packet overhead beside it.
DEFAULT_LAYERS = StageLayersConfig(layers=(
    LayerConfig("f", 360, 1.0, 1_200_000, 30),
    LayerConfig("h", 180, 2.0, 200_000, 30),  # with Opus and overhead, under a 300 kbit/s link
    LayerConfig("q", 90, 4.0, 100_000, 15),
))


def layers_parse(text: str) -> StageLayersConfig:
    """`name:height:scale:max_bps:fps,...` highest first, e.g. `f:360:1:1200000:30,h:180:2:300000:30`."""
    layers = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, height, scale, bps, fps = item.split(":")
        layers.append(LayerConfig(name, int(height), float(scale), int(bps), int(fps)))
    return StageLayersConfig(layers=tuple(layers))


class ByteRate:
    """Bits per second over a sliding window (a layer's measured rate)."""

    def __init__(self, *, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._bytes = 0

    def add(self, now: float, size: int) -> None:
        self._samples.append((now, size))
        self._bytes += size
        self._trim(now)

    def bps(self, now: float) -> float:
        self._trim(now)
        if not self._samples:
            return 0.0
        span = max(now - self._samples[0][0], self.window_s / 2)  # a young window is not a burst
        return self._bytes * 8 / span

    def active(self, now: float) -> bool:
        self._trim(now)
        return bool(self._samples)

    def fps(self, now: float) -> float:
        """Frames per second over the window (one sample is one frame)."""
        self._trim(now)
        return len(self._samples) / self.window_s

    def _trim(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._bytes -= self._samples.popleft()[1]


@dataclass(frozen=True)
class ChooserConfig:
    up_margin: float = 0.15  # the estimate must exceed the next layer's rate by this share
    unconstrained_ratio: float = 1.3  # estimate / rate sent now above which nothing limits the link
    # ...but an estimate at its ceiling (1.5x what it receives) says nothing about a layer several times
    # richer: only a layer within this reach is tried (a failed try floods a weak link for seconds).
    probe_reach: float = 0.33
    up_hold_s: float = 2.5  # the way up must hold this long
    max_up_hold_s: float = 40.0  # after failed tries, the hold doubles up to this
    probe_grace_s: float = 8.0  # a down-switch this soon after going up counts as a failed try
    loss_high: float = 0.10
    loss_low: float = 0.02
    loss_growth: float = 1.08  # per receiver report under loss_low (GCC: 8 % a second)
    remb_stale_s: float = 5.0
    fall_ratio: float = 0.9  # an estimate this far under its recent peak: the receiver saw congestion
    fall_window_s: float = 3.0
    rise_ratio: float = 1.05  # over fall_window_s: an estimate still climbing towards a new layer


class LinkEstimate:
    """One subscriber's estimate for one of our senders: its REMB share, bounded by a loss-based one."""

    def __init__(self, config: ChooserConfig) -> None:
        self.config = config
        self.remb: float | None = None
        self.remb_at = 0.0
        self.loss_based: float | None = None  # None: no loss seen worth limiting on
        self.loss = 0.0

    def on_remb(self, now: float, bps: float) -> None:
        self.remb, self.remb_at = bps, now

    def on_loss(self, now: float, fraction: float, sent_bps: float) -> None:
        self.loss = fraction
        if fraction > self.config.loss_high:
            base = min(self.loss_based or sent_bps, sent_bps) if sent_bps > 0 else (self.loss_based or 0.0)
            self.loss_based = base * (1 - 0.5 * fraction)
        elif fraction < self.config.loss_low and self.loss_based is not None:
            self.loss_based *= self.config.loss_growth
            if self.remb is not None and self.loss_based > self.remb:
                self.loss_based = None  # grown past the delay-based one: loss no longer limits

    def bps(self, now: float) -> float | None:
        remb = self.remb if self.remb is not None and now - self.remb_at <= self.config.remb_stale_s else None
        values = [v for v in (remb, self.loss_based) if v is not None]
        return min(values) if values else None


class LayerChooser:
    """Which layer (an index, 0 = highest) one subscriber track should get. Feed it `update` with the
    estimate, each layer's rate and which layers are being received at all; it only says where to go,
    the ForwardTrack switches there on that layer's next keyframe.

    Right after an up-switch (or its first estimate) the subscriber's estimate still reflects less than
    the layer and grows (~8 %/s in Chromium), so an estimate under its rate is not yet a reason to leave:
    a falling estimate (the receiver saw its queue grow) or heavy loss is; and once `fall_window_s`
    has passed, an estimate that stopped rising too."""

    def __init__(self, config: ChooserConfig, *, layers: int, start: int) -> None:
        self.config = config
        self.layers = layers
        self.current = start
        self._up_since: float | None = None
        self._hold = [config.up_hold_s] * layers
        self._went_up: tuple[float, int] | None = None  # (when, to which layer)
        self._recent: collections.deque[tuple[float, float]] = collections.deque()  # (when, estimate)
        self._switched_at: float | None = None

    def update(
        self, now: float, estimate: float | None, rates: list[float], active: list[bool], *, lossy: bool = False,
        hint: float | None = None,
    ) -> int:
        """`hint`: what else says the link carries more (the member's own uplink, measured by the node):
        it may only take a subscriber up, never keep it up - the estimate does that."""
        usable = [i for i in range(self.layers) if active[i]]
        if not usable:
            return self.current
        if self.current not in usable:  # the layer went quiet (or never came): the nearest one that did not
            self.current = min(usable, key=lambda i: (abs(i - self.current), -i))
            self._up_since = None
        if estimate is None:
            return self.current
        if self._switched_at is None:  # the first estimate: give it the same time to rise as after a switch
            self._switched_at = now
        self._recent.append((now, estimate))
        while self._recent[0][0] < now - self.config.fall_window_s:
            self._recent.popleft()
        falling = estimate < self.config.fall_ratio * max(e for _, e in self._recent)
        rising = estimate > self.config.rise_ratio * min(e for _, e in self._recent)
        settled = now - self._switched_at >= self.config.fall_window_s
        rate = rates[self.current]
        congested = falling or lossy or (settled and not rising)
        if estimate < rate and self.current != usable[-1] and congested:
            self._down(now, next((i for i in usable if rates[i] <= estimate), usable[-1]))
            return self.current
        if self._went_up is not None and now - self._went_up[0] > self.config.probe_grace_s:
            self._hold[self._went_up[1]] = self.config.up_hold_s  # it held: the next try is quick again
            self._went_up = None
        higher = [i for i in usable if i < self.current]
        if not higher or falling or lossy:
            self._up_since = None
            return self.current
        target = higher[-1]
        reach = max(estimate, hint or 0.0)
        fits = reach >= rates[target] * (1 + self.config.up_margin)
        unconstrained = (
            estimate >= rate * self.config.unconstrained_ratio and reach >= rates[target] * self.config.probe_reach
        )
        if fits or unconstrained:
            if self._up_since is None:
                self._up_since = now
            if now - self._up_since >= self._hold[target]:
                self._went_up = (now, target)
                self.current = target
                self._up_since = None
                self._recent.clear()  # the estimate starts over from what the new layer brings
                self._switched_at = now
        else:
            self._up_since = None
        return self.current

    def _down(self, now: float, target: int) -> None:
        if self._went_up is not None and now - self._went_up[0] <= self.config.probe_grace_s:
            layer = self._went_up[1]
            self._hold[layer] = min(self._hold[layer] * 2, self.config.max_up_hold_s)
        self._went_up = None
        self._up_since = None
        self._recent.clear()
        self._switched_at = now
        self.current = target
