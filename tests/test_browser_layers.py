"""Stage video layers in real Chromium: a page publishes its camera once per layer, each scaled as the
node's offer says, and another page decodes one tile per person."""
from __future__ import annotations

import pytest

from .conftest import start_live_server, stage_start, stop_processes, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.once]

# Three layers, whatever the deployment's default (one layer until layering holds up on impaired uplinks).
LAYERS = "f:360:1:1200000:30,h:180:2:200000:30,q:90:4:100000:15"


@pytest.fixture
def layered_server(transactional_db, tmp_path):
    """A live server whose media node runs three layers, and the demo class (made before the browser's
    event loop starts: the ORM refuses to run inside it)."""
    from classroom.models import MediaNode
    from classroom.services.demo import demo_seed

    MediaNode.objects.all().delete()
    server = start_live_server(tmp_path, CLASSCAST_STAGE_LAYERS=LAYERS)
    try:
        yield server, demo_seed()
    finally:
        stop_processes(server.procs)

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


def test_a_page_publishes_every_layer_and_another_decodes_one_tile(layered_server, browser):
    server, demo = layered_server
    ada, (ben,) = stage_start(browser, server, demo, "ben")
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
