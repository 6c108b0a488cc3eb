"""The stage in real Chromium (fake camera + tone) against a live daphne server and a real media node."""
from __future__ import annotations

import time

import pytest

from .conftest import login_page, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Counts RTCPeerConnections a page creates (the watch page must create none).
COUNT_PCS = """
(() => {
  const Orig = window.RTCPeerConnection;
  window.__pcCount = 0;
  window.RTCPeerConnection = function (...args) { window.__pcCount += 1; return new Orig(...args); };
  window.RTCPeerConnection.prototype = Orig.prototype;
})();
"""

INBOUND = """
async () => {
  const pc = window.classcast.call && window.classcast.call.sub;
  if (!pc) return null;
  const out = {video: 0, audioBytes: 0, audioEnergy: 0, codec: null, frames: 0};
  const stats = await pc.getStats();
  stats.forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') {
      out.frames += s.framesDecoded || 0;
      if (s.codecId && stats.get(s.codecId)) out.codec = stats.get(s.codecId).mimeType;
    }
    if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      out.audioBytes += s.bytesReceived || 0;
      out.audioEnergy += s.totalAudioEnergy || 0;
    }
  });
  return out;
}
"""


def decoded_fps(page, seconds: float = 5.0) -> tuple[float, dict]:
    first = wait_until(lambda: (s := page.evaluate(INBOUND)) and s["frames"] > 0 and s, what="first decoded frames")
    start = time.monotonic()
    time.sleep(seconds)
    last = page.evaluate(INBOUND)
    return (last["frames"] - first["frames"]) / (time.monotonic() - start), last


def test_stage_flow_two_browsers_and_a_watcher(live_server_proc, live_demo, browser):
    server, demo = live_server_proc, live_demo
    ada = login_page(browser, server, "ada", "classcast-demo")
    ben = login_page(browser, server, "ben", "classcast-demo")
    cleo_ctx = browser.new_context(base_url=server.url)
    cleo_ctx.add_init_script(COUNT_PCS)
    cleo = cleo_ctx.new_page()
    cleo.goto("/accounts/login/")
    cleo.fill("input[name=username]", "cleo")
    cleo.fill("input[name=password]", "classcast-demo")
    cleo.click("button[type=submit]")
    cleo.wait_for_url(lambda url: "/accounts/login/" not in url)

    ada.goto(demo["urls"]["instructor"])
    ben.goto(demo["urls"]["student"])
    cleo.goto(demo["urls"]["watch"])

    # The instructor starts the class and is on stage with their own camera.
    ada.click("#start-session")
    ada.wait_for_selector("#session-status.live")
    ada.wait_for_selector("#stage-grid .tile.me")

    # A student raises a hand; the instructor sees it and invites; the student accepts.
    ben.wait_for_selector("#raise-hand:not([hidden])")
    ben.click("#raise-hand")
    ada.wait_for_selector("#hands li [data-action=invite]")
    ada.click("#hands li [data-action=invite]")
    ben.wait_for_selector("#invitation:not([hidden])")
    ben.click("#accept-invite")

    # Each browser decodes the other's video at >= 15 fps over 5 s, and receives audio.
    for page in (ada, ben):
        page.wait_for_selector("#stage-grid .tile:not(.me) video")
        fps, stats = decoded_fps(page)
        assert fps >= 15, f"decoded {fps:.1f} fps; server log:\n{server.logs()}"
        assert stats["audioBytes"] > 0
        assert stats["codec"] in ("video/VP8", "video/H264")
    audio = wait_until(lambda: (s := ben.evaluate(INBOUND)) and s["audioEnergy"] > 0 and s, what="audio energy")
    assert audio["audioEnergy"] > 0

    # Each remote tile shows a network-quality indicator from getStats(), and the browsers'
    # reports reach /metrics (join time and RTT from the browser side).
    for page in (ada, ben):
        page.wait_for_selector("#stage-grid .tile:not(.me) .quality.good, #stage-grid .tile:not(.me) .quality.fair, #stage-grid .tile:not(.me) .quality.poor")
    admin = login_page(browser, server, "admin", "classcast-demo")  # /metrics answers staff (or a bearer token)
    metrics = wait_until(
        lambda: (text := admin.evaluate("fetch('/metrics').then((r) => r.text())"))
        and 'classcast_rtt_seconds_count{source="browser"}' in text and text,
        what="browser reports in /metrics",
    )
    assert 'classcast_join_seconds_count{source="browser"} 2.0' in metrics
    assert "classcast_live_sessions 1.0" in metrics

    # The watcher saw every stage event but holds no peer connection.
    cleo.wait_for_function("() => document.querySelectorAll('#stage-grid .tile').length === 2")
    assert cleo.evaluate("window.__pcCount") == 0
    kinds = cleo.evaluate("window.classcast.events.map(e => e.kind)")
    for kind in ("session.started", "hand.raised", "stage.invited", "stage.joined"):
        assert kind in kinds

    # The student leaves the stage; the instructor's page shows it.
    ben_id = ben.evaluate("window.classcast.me.user_id")
    ben.click("#leave-stage")
    ada.wait_for_selector(f'#stage-grid .tile[data-user-id="{ben_id}"]', state="detached")
    ben.wait_for_selector("#raise-hand:not([hidden])")
    assert ben.evaluate("window.classcast.call.pub === null && window.classcast.call.sub === null")
    cleo.wait_for_function("() => document.querySelectorAll('#stage-grid .tile').length === 1")
    for ctx in (ada.context, ben.context, cleo_ctx):
        ctx.close()
