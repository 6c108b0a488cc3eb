"""A stage call whose path breaks comes back by itself (issue 12 "Recovery"): real Chromium in a lab
namespace behind a userspace netem (tests/netlab.py), the student's link cut long enough for both ends
to give the connection up, then restored. aiortc has no ICE restart, so the page re-joins: it says
"Reconnecting…" meanwhile, nothing once back, and nobody reloads."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from .netlab import ImpairedLink, LinkConditions, with_outage
from .netlab_stage import (
    CLASSCAST_PCS,
    bring_on_stage,
    chromium_args,
    launch_chromium,
    login,
    page_samples,
    running_stage_server,
    video_back_after,
)

pytestmark = [
    pytest.mark.once,  # a network test: the deployment mode does not matter
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(os.geteuid() != 0 or not Path("/dev/net/tun").exists(), reason="the lab needs root and TUN"),
]

OUTAGE_S = 15.0  # longer than the page waits on a disconnected connection (4 s) before re-joining
DECODING = """() => { const s = window.__netstats || []; if (s.length < 4) return false;
  const a = s[s.length - 4].video, b = s[s.length - 1].video; return !!(a && b && b.frames > a.frames); }"""


def test_a_call_whose_path_broke_rejoins_without_a_reload(tmp_path):
    from playwright.sync_api import sync_playwright

    clean = LinkConditions(delay_ms=10)
    with ImpairedLink(up=clean, down=clean) as link, running_stage_server(tmp_path / "var", link.host_address) as server, \
            sync_playwright() as pw:
        origins = [server.url]
        teacher_browser = launch_chromium(pw, chromium_args(origins))
        student_browser = launch_chromium(pw, chromium_args(origins), link=link, wrapper_dir=tmp_path)
        try:
            urls = server.demo["urls"]
            teacher = login(teacher_browser, server.url, "ada", server.password, pcs_expr=CLASSCAST_PCS)
            student = login(student_browser, server.url, "ben", server.password, pcs_expr=CLASSCAST_PCS)
            teacher.goto(urls["instructor"])
            student.goto(urls["student"])
            teacher.click("#start-session")
            teacher.wait_for_selector("#stage-grid .tile.me")
            bring_on_stage(teacher, student, timeout_ms=60_000)
            student.wait_for_function(DECODING, timeout=60_000, polling=250)
            student.evaluate("() => { window.__firstSub = window.classcast.call.sub; }")

            link.set(up=with_outage(clean), down=with_outage(clean))
            # The page tells the student, in words, while the path is gone.
            student.get_by_text("Reconnecting…").wait_for(timeout=20_000)
            time.sleep(max(0.0, OUTAGE_S - 8))
            restored = time.time()
            link.set(up=clean, down=clean)

            # Video is back on a fresh connection (a re-join, not the old one coming round), no reload,
            # and the reconnecting notice is gone.
            student.wait_for_function(
                "() => window.classcast.call && window.classcast.call.sub && window.classcast.call.sub !== window.__firstSub",
                timeout=60_000, polling=250,
            )
            student.wait_for_function(DECODING, timeout=60_000, polling=250)
            assert student.get_by_text("Reconnecting…").is_hidden()
            back = video_back_after(page_samples(student), restored)
            assert back is not None, server.log_tail()
            # The teacher sees the student again too.
            teacher.wait_for_function(DECODING, timeout=60_000, polling=250)
            print(f"video back {back:.1f} s after the link was restored")
        finally:
            student_browser.close()
            teacher_browser.close()
