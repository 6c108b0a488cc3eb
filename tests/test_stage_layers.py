"""Layer choice per subscriber (sfu/layers.py, pure) and the ForwardTrack's cut-over between layers on a
keyframe (no network): golden traces of estimates in, layers out."""
from __future__ import annotations

import asyncio

import pytest

from sfu.forwarding import ForwardTrack, Frame, PublishedLayers, PublishedTrack
from sfu.layers import (
    DEFAULT_LAYERS,
    ByteRate,
    ChooserConfig,
    LayerChooser,
    LinkEstimate,
    StageLayersConfig,
    layers_parse,
)

pytestmark = pytest.mark.once

RATES = [1_200_000.0, 300_000.0, 100_000.0]  # f, h, q
ALL = [True, True, True]


def trace(chooser: LayerChooser, steps: list[tuple[float, float | None]], **kw) -> list[int]:
    return [chooser.update(t, e, RATES, kw.get("active", ALL), lossy=kw.get("lossy", False)) for t, e in steps]


def test_a_falling_estimate_goes_down_at_once_to_the_layer_it_carries():
    chooser = LayerChooser(ChooserConfig(), layers=3, start=1)
    assert trace(chooser, [(0.0, None), (1.0, 320_000), (1.5, 200_000)]) == [1, 1, 2]


def test_a_first_estimate_under_the_layer_has_the_settle_window_to_rise():
    """A receiver's first estimate is what it has received so far, not what its link can carry."""
    chooser = LayerChooser(ChooserConfig(fall_window_s=3.0), layers=3, start=1)
    assert trace(chooser, [(0.0, 200_000), (1.0, 200_000), (2.9, 200_000), (3.1, 200_000)]) == [1, 1, 1, 2]
    rising = LayerChooser(ChooserConfig(fall_window_s=3.0), layers=3, start=1)
    assert trace(rising, [(float(t), 200_000 * 1.08 ** t) for t in range(6)]) == [1] * 6


def test_going_up_waits_for_the_estimate_to_hold_above_the_next_layer():
    chooser = LayerChooser(ChooserConfig(up_hold_s=2.5), layers=3, start=1)
    # 1.5 Mbit/s clears f's 1.2 Mbit/s + 15 %: up only after it held 2.5 s, not before.
    steps = [(t / 2, 1_500_000) for t in range(0, 8)]
    assert trace(chooser, steps) == [1, 1, 1, 1, 1, 0, 0, 0]


def test_a_members_own_uplink_takes_them_up_but_only_the_estimate_keeps_them_there():
    """The REMB of a subscriber on h sits near h's rate (it cannot say more than it receives); the 1.5
    Mbit/s the same member sends us says its link carries f: up after the hold. There, an estimate that
    stops rising below f's rate goes back down whatever the uplink says."""
    config = ChooserConfig(up_hold_s=2.0, fall_window_s=3.0)
    chooser = LayerChooser(config, layers=3, start=1)
    ups = [chooser.update(t / 2, 310_000, RATES, ALL, hint=1_500_000) for t in range(6)]
    assert ups == [1, 1, 1, 1, 0, 0]
    rising = [chooser.update(3.0 + t, 310_000 * 1.08 ** t, RATES, ALL, hint=1_500_000) for t in range(1, 4)]
    assert rising == [0, 0, 0]  # climbing towards f: kept
    flat = [chooser.update(6.0 + t, 400_000, RATES, ALL, hint=1_500_000) for t in range(1, 5)]
    assert flat[-1] == 1  # stopped rising under f: down, the uplink notwithstanding
    without = LayerChooser(config, layers=3, start=1)
    assert [without.update(t / 2, 310_000, RATES, ALL) for t in range(6)] == [1] * 6


def test_an_interrupted_hold_starts_over():
    chooser = LayerChooser(ChooserConfig(up_hold_s=2.0), layers=3, start=1)
    steps = [(0.0, 1_500_000), (1.5, 1_500_000), (2.0, 320_000), (3.0, 1_500_000), (4.5, 1_500_000), (5.0, 1_500_000)]
    assert trace(chooser, steps) == [1, 1, 1, 1, 1, 0]


def test_an_estimate_at_its_ceiling_probes_the_next_layer():
    """A receive-side estimate stays under ~1.5x what it receives: well above the current rate it is not
    the limit, so the next layer is tried after the hold."""
    chooser = LayerChooser(ChooserConfig(up_hold_s=2.0), layers=3, start=2)
    steps = [(float(t), 160_000) for t in range(4)]  # q at 100 kbit/s, estimate 1.6x that
    assert trace(chooser, steps) == [2, 2, 1, 1]


def test_after_going_up_a_rising_estimate_is_given_time_a_falling_one_is_not():
    config = ChooserConfig(up_hold_s=1.0, fall_window_s=3.0)
    chooser = LayerChooser(config, layers=3, start=1)
    assert trace(chooser, [(0.0, 460_000), (1.0, 460_000)]) == [1, 0]
    # Under f's rate but climbing 8 %/s: f stays.
    climbing = [(1.0 + t, 460_000 * 1.08 ** t) for t in range(1, 6)]
    assert trace(chooser, climbing) == [0] * 5
    # Then the receiver's queue grows and it falls: down at once, to what the estimate carries.
    assert trace(chooser, [(6.5, 250_000)]) == [2]


def test_a_flat_estimate_under_the_new_layer_goes_back_down_once_settled():
    config = ChooserConfig(up_hold_s=1.0, fall_window_s=3.0)
    chooser = LayerChooser(config, layers=3, start=2)
    assert trace(chooser, [(0.0, 200_000), (1.0, 200_000)]) == [2, 1]  # probes h
    assert trace(chooser, [(2.0, 200_000), (3.0, 200_000), (4.5, 200_000)]) == [1, 1, 2]


def test_a_failed_try_doubles_the_hold_before_the_next():
    config = ChooserConfig(up_hold_s=1.0, fall_window_s=3.0, probe_grace_s=8.0)
    chooser = LayerChooser(config, layers=3, start=2)
    assert trace(chooser, [(0.0, 200_000), (1.0, 200_000), (4.5, 200_000)]) == [2, 1, 2]
    # The next try at h waits 2 s, not 1.
    assert trace(chooser, [(5.0, 200_000), (6.0, 200_000), (6.9, 200_000), (7.1, 200_000)]) == [2, 2, 2, 1]


def test_heavy_loss_goes_down_and_blocks_going_up():
    chooser = LayerChooser(ChooserConfig(up_hold_s=1.0), layers=3, start=0)
    assert trace(chooser, [(0.0, 1_000_000)], lossy=True) == [1]
    assert trace(chooser, [(1.0, 1_500_000), (3.0, 1_500_000)], lossy=True) == [1, 1]


def test_quiet_layers_are_never_chosen():
    chooser = LayerChooser(ChooserConfig(up_hold_s=1.0), layers=3, start=1)
    only_top = [True, False, False]  # an older page: one video
    assert trace(chooser, [(0.0, None), (1.0, 100_000), (5.0, 50_000)], active=only_top) == [0, 0, 0]
    nothing = [False, False, False]
    assert LayerChooser(ChooserConfig(), layers=3, start=1).update(0.0, 1e6, RATES, nothing) == 1


def test_loss_based_estimate_cuts_on_heavy_loss_and_grows_back_on_little():
    config = ChooserConfig(loss_growth=1.08)
    link = LinkEstimate(config)
    link.on_remb(0.0, 1_000_000)
    assert link.bps(0.0) == 1_000_000
    link.on_loss(0.5, 0.2, sent_bps=800_000)  # GCC: x (1 - 0.5 loss)
    assert link.bps(0.5) == pytest.approx(720_000)
    link.on_loss(1.0, 0.05, sent_bps=720_000)  # between 2 and 10 %: hold
    assert link.bps(1.0) == pytest.approx(720_000)
    link.on_loss(1.5, 0.0, sent_bps=720_000)
    assert link.bps(1.5) == pytest.approx(720_000 * 1.08)
    for t in range(10):  # grows past the delay-based estimate: loss no longer limits
        link.on_loss(2.0 + t, 0.0, sent_bps=720_000)
    assert link.loss_based is None and link.bps(4.0) == 1_000_000
    assert link.bps(20.0) is None  # the REMB went stale


def test_byte_rate_window():
    rate = ByteRate(window_s=2.0)
    for i in range(60):  # 30 fps of 1000-byte frames
        rate.add(i / 30, 1000)
    assert rate.bps(59 / 30) == pytest.approx(240_000, rel=0.05)
    assert rate.active(3.0) and not rate.active(5.0)


def test_layer_config_parsing_and_fit():
    assert layers_parse("f:360:1:1200000:30, h:180:2:200000:30,q:90:4:100000:15") == DEFAULT_LAYERS
    assert DEFAULT_LAYERS.fitting(720) == 0 and DEFAULT_LAYERS.fitting(200) == 1 and DEFAULT_LAYERS.fitting(10) == 2
    with pytest.raises(ValueError):
        StageLayersConfig(layers=())
    with pytest.raises(ValueError):
        layers_parse("f:360:1:1200000:30,f:180:2:300000:30")


# --- the ForwardTrack between layers (no network) ----------------------------------------------------


def frame(ts: int, key: bool, tag: bytes) -> Frame:
    return Frame("vp8", (b"\x00" if key else b"\x01") + tag, ts, 90000, key)


async def test_a_subscriber_moves_to_another_layer_only_on_that_layers_keyframe_with_its_clock_going_on():
    asks: list[str] = []
    tracks = [PublishedTrack("video", request_keyframe=lambda n=n: asks.append(n)) for n in "fhq"]
    layers = PublishedLayers(DEFAULT_LAYERS, tracks)
    out = ForwardTrack("video")
    seen: list[str | None] = []
    out.on_layer = seen.append
    out.switch(layers)
    assert out.source is tracks[1] and seen == ["h"]  # starts one under the top
    out.push(frame(1000, True, b"h0"), tracks[1])
    out.push(frame(4000, False, b"h1"), tracks[1])
    out._select(tracks[2])  # noqa: SLF001 - what adapt() does once the chooser says q
    assert out.pending is tracks[2] and "q" in asks
    out.push(frame(500_000, False, b"q0"), tracks[2])  # not a keyframe: h goes on
    out.push(frame(7000, False, b"h2"), tracks[1])
    out.push(frame(503_000, True, b"q1"), tracks[2])  # q's keyframe: cut over
    out.push(frame(10_000, False, b"h3"), tracks[1])  # h is no longer forwarded
    out.push(frame(506_000, False, b"q2"), tracks[2])
    assert out.source is tracks[2] and out.pending is None and seen == ["h", "q"]
    assert out not in tracks[1].outputs
    packets = [await asyncio.wait_for(out.recv(), 1) for _ in range(5)]
    assert [bytes(p)[1:] for p in packets] == [b"h0", b"h1", b"h2", b"q1", b"q2"]
    assert [p.pts for p in packets] == [0, 3000, 6000, 9000, 12000]  # one clock across the cut
    out.stop()
    assert seen[-1] is None


async def test_each_layers_publisher_cap_hears_only_its_own_subscribers():
    tracks = [PublishedTrack("video", request_keyframe=lambda: None) for _ in "fhq"]
    layers = PublishedLayers(DEFAULT_LAYERS, tracks)
    strong, weak = ForwardTrack("video"), ForwardTrack("video")
    strong.switch(layers)
    weak.switch(layers)
    strong._select(tracks[0])  # noqa: SLF001 - nothing forwarded yet: moves at once
    weak._select(tracks[2])  # noqa: SLF001
    strong.remb(2_000_000)
    weak.remb(200_000)
    assert tracks[0].remb_cap() == 2_000_000 and tracks[2].remb_cap() == 200_000
    # Every layer's receiver tells the publisher the same total: its own estimates, each capped by its layer.
    assert layers.remb_for(0, 3_000_000) == 2_000_000
    assert layers.remb_for(1, 400_000) == 2_400_000
    assert layers.remb_for(2, 500_000) == 2_600_000


async def test_a_subscriber_receiving_several_publishers_caps_each_with_its_share():
    """Chromium's REMB is its whole connection's: two video tracks each get half of it."""
    tracks = [PublishedTrack("video", request_keyframe=lambda: None) for _ in "fhq"]
    out = ForwardTrack("video")
    out.share = lambda: 2
    out.switch(PublishedLayers(DEFAULT_LAYERS, tracks))
    out.feedback_remb(1_000_000)
    assert out.source.remb_cap() == 500_000
    assert out.link.bps(out.link.remb_at) == 1_000_000  # the chooser divides it itself
    out.stop()


def test_a_starved_layer_is_not_offered_while_a_smoother_one_is():
    """A weak uplink's estimate spread over every layer leaves the top one at a frame every few seconds:
    subscribers get the layer that still moves, and only when none does, whatever is sending."""
    tracks = [PublishedTrack("video", request_keyframe=lambda: None) for _ in "fhq"]
    layers = PublishedLayers(DEFAULT_LAYERS, tracks)
    now = 100.0
    for t in tracks:
        t.rate.add(now - 10.0, 1000)  # all started long ago
        t.frames = 1
    layers.active(now - 10.0)
    for i in range(60):  # the last 2 s: f at 1 fps, h at 30 fps, q at 15 fps
        at = now - 2.0 + i / 30
        if i % 30 == 0:
            tracks[0].rate.add(at, 5000)
        tracks[1].rate.add(at, 1000)
        if i % 2 == 0:
            tracks[2].rate.add(at, 400)
    assert layers.active(now) == [False, True, True]
    slow = [PublishedTrack("video", request_keyframe=lambda: None) for _ in "fhq"]
    starved = PublishedLayers(DEFAULT_LAYERS, slow)
    for t in slow:
        t.rate.add(now - 10.0, 1000)
        t.frames = 1
    starved.active(now - 10.0)
    slow[0].rate.add(now - 1.0, 5000)  # only the top layer sends, and barely
    assert starved.active(now) == [True, False, False]


def test_a_starved_layer_leaves_below_40_percent_of_its_frame_rate_and_comes_back_above_60():
    tracks = [PublishedTrack("video", request_keyframe=lambda: None) for _ in DEFAULT_LAYERS.layers]
    layers = PublishedLayers(DEFAULT_LAYERS, tracks)
    t0 = 1000.0

    def feed(fps_f: float, start: float) -> list[bool]:
        for i in range(int(2 * fps_f)):  # two seconds (the rate window) of f at fps_f
            tracks[0].rate.add(start + i / fps_f, 1000)
        for i in range(60):  # h and q smooth throughout
            tracks[1].rate.add(start + i / 30, 500)
            tracks[2].rate.add(start + i / 30, 200)
        return layers.active(start + 2.0)

    tracks[0].frames = 1
    layers.active(t0)  # the publisher's first frame: its layers' start-up grace begins
    assert feed(30, t0 + 3) == [True, True, True]
    assert feed(10, t0 + 6) == [False, True, True]  # 33 % of 30 fps: starved
    assert feed(15, t0 + 9) == [False, True, True]  # 50 %: not yet smooth again (it was flapping here)
    assert feed(20, t0 + 12) == [True, True, True]  # 67 %
    assert feed(15, t0 + 15) == [True, True, True]  # 50 %: stays
