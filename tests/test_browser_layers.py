"""Stage video layers in real Chromium: a page publishes its camera once per layer, each scaled as the
node's offer says, and another page decodes one tile per person."""
from __future__ import annotations

import pytest

from .conftest import stage_start, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.once]

OUTBOUND_VIDEO = """
async () => {
  const pc = window.classcast.call && window.classcast.call.pub;
  if (!pc) return [];
  const out = [];
  (await pc.getStats()).forEach((s) => {
    if (s.type === 'outbound-rtp' && s.kind === 'video' && s.bytesSent > 0)
      out.push({width: s.frameWidth || 0, height: s.frameHeight || 0, fps: s.framesPerSecond || 0});
  });
  const limits = pc.getSenders().filter((x) => x.track && x.track.kind === 'video')
    .map((x) => x.getParameters().encodings[0] || {});
  return {streams: out, maxBitrates: limits.map((e) => e.maxBitrate || 0)};
}
"""

DECODED = """
async () => {
  const pc = window.classcast.call && window.classcast.call.sub;
  let frames = 0;
  if (pc) (await pc.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') frames += s.framesDecoded || 0;
  });
  return frames;
}
"""


def test_a_page_publishes_every_layer_and_another_decodes_one_tile(live_server_proc, live_demo, browser):
    ada, (ben,) = stage_start(browser, live_server_proc, live_demo, "ben")
    sent = wait_until(
        lambda: (s := ada.evaluate(OUTBOUND_VIDEO)) and len(s["streams"]) == 3 and all(x["width"] for x in s["streams"])
        and s, what="three video layers sent", timeout=30,
    )
    widths = sorted(x["width"] for x in sent["streams"])
    # Chromium's fake camera is 640x480: the layers are it, halved and quartered.
    assert widths == [160, 320, 640], sent
    assert sorted(sent["maxBitrates"]) == [100_000, 200_000, 1_200_000]
    wait_until(lambda: ben.evaluate(DECODED) > 30, what="ben decodes ada's video", timeout=30)
    assert ben.locator("#stage-grid .tile:not(.me)").count() == 1  # one tile for ada, not one per layer
