"""What people see when things go wrong: a denied camera, and a server that goes away and comes back."""
from __future__ import annotations

import pytest

from .conftest import CHROMIUM, CHROMIUM_ARGS, bring_on_stage, login_page
from .test_browser_stage import decoded_fps

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_denied_camera_is_explained_and_the_stage_still_plays(live_server_proc, live_demo, browser):

    server, demo = live_server_proc, live_demo
    ada = login_page(browser, server, "ada", "classcast-demo")
    ada.goto(demo["urls"]["instructor"])
    ada.click("#start-session")
    ada.wait_for_selector("#stage-grid .tile.me")

    # A second Chromium that answers "block" to the camera prompt, as a person clicking Block would.
    flags = [f for f in CHROMIUM_ARGS if f != "--use-fake-ui-for-media-stream"] + ["--deny-permission-prompts"]
    denying = browser.browser_type.launch(executable_path=CHROMIUM, headless=True, args=flags)
    try:
        ben = login_page(denying, server, "ben", "classcast-demo", permissions=[])
        ben.goto(demo["urls"]["student"])
        bring_on_stage(ada, ben)
        ben.wait_for_selector("#banner.error:has-text('Camera and microphone access was denied')")
        assert ben.evaluate("window.classcast.localError") == "NotAllowedError"
        # Still on stage, seeing and hearing the instructor.
        fps, stats = decoded_fps(ben, seconds=3)
        assert fps > 5 and stats["audioBytes"] > 0
    finally:
        denying.close()


def test_lost_connection_is_shown_and_the_page_rejoins_by_itself(live_server_proc, live_demo, browser):
    server, demo = live_server_proc, live_demo
    ada = login_page(browser, server, "ada", "classcast-demo")
    ben = login_page(browser, server, "ben", "classcast-demo")
    ada.goto(demo["urls"]["instructor"])
    ben.goto(demo["urls"]["student"])
    ada.click("#start-session")
    bring_on_stage(ada, ben)
    decoded_fps(ben, seconds=1)

    server.stop_web()
    ben.wait_for_selector("#banner.warn:has-text('Connection lost')")
    ada.wait_for_selector("#banner.warn:has-text('Connection lost')")
    assert ben.evaluate("window.classcast.inCall") is False

    server.start_web()
    ben.wait_for_selector("#banner.ok:has-text('Reconnected')", timeout=30_000)
    # Back on stage without anyone clicking: both decode each other again.
    for name, page in (("ada", ada), ("ben", ben)):
        page.wait_for_function("() => window.classcast.inCall && window.classcast.call.sub !== null", timeout=30_000)
        try:
            fps, _ = decoded_fps(page, seconds=3)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}\n{server.logs()}") from None
        assert fps >= 10, f"{name} decoded {fps:.1f} fps after the reconnect\n{server.logs()}"
