"""The stage on real networks (issue 12): real Chromium at every end, one student's link impaired in a
lab namespace by a userspace netem (tests/netlab.py), the rest of the stage on clean loopback.

* A student behind a 300 kbit/s link keeps seeing the teacher move, and the teacher the student.
* A student on lossy Wi-Fi (5 % loss, 50±20 ms jitter) is heard, and hears, with little concealed.

The bounds come from bench/network.py (bench/README, "After this session's issue-12 work"): under the
cap classcast measured 24.3 / 20.6 fps (the direct call 22.3 / 21.1), the issue asks for at least 10; under
5 % loss it concealed 4.8 % / 5.7 % of the audio (the direct call 4.3 % / 3.4 %, classcast before this
work 25 %): 8 % leaves room for a busy machine and still fails the old behaviour three times over.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from .netlab import ImpairedLink, LinkConditions
from .netlab_stage import CLASSCAST_PCS, bring_on_stage, chromium_args, launch_chromium, login, running_stage_server

pytestmark = [
    pytest.mark.once,  # a network test: the deployment mode does not matter
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(os.geteuid() != 0 or not Path("/dev/net/tun").exists(), reason="the lab needs root and TUN"),
]

# Per received video stream: frames decoded and the size shown, from the page's own getStats().
STREAMS = """async () => {
  const sub = window.classcast.call && window.classcast.call.sub;
  if (!sub) return [];
  const out = [];
  (await sub.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video" && r.framesDecoded)
      out.push({ mid: r.mid, frames: r.framesDecoded, height: r.frameHeight || 0 });
  });
  return out;
}"""


def per_stream_fps(page: Any, seconds: float) -> dict[str, tuple[float, int]]:
    """mid -> (decoded fps over `seconds`, height shown at the end)."""
    before = {s["mid"]: s["frames"] for s in page.evaluate(STREAMS)}
    time.sleep(seconds)
    after = page.evaluate(STREAMS)
    return {s["mid"]: ((s["frames"] - before.get(s["mid"], 0)) / seconds, s["height"]) for s in after}


AUDIO = """async () => {
  const sub = window.classcast.call && window.classcast.call.sub;
  let concealed = 0, samples = 0;
  if (sub) (await sub.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "audio") { concealed += r.concealedSamples || 0; samples += r.totalSamplesReceived || 0; }
  });
  return { concealed, samples };
}"""


def concealed_pct(page: Any, seconds: float) -> float:
    before = page.evaluate(AUDIO)
    time.sleep(seconds)
    after = page.evaluate(AUDIO)
    played = after["samples"] - before["samples"]
    assert played > 0, "no audio played out"
    return 100.0 * (after["concealed"] - before["concealed"]) / played


def stage_of_two(pw: Any, link: ImpairedLink, server: Any, tmp_path: Path) -> tuple[Any, Any, list[Any]]:
    """ada on the host, ben inside the lab namespace, both on stage through the front door."""
    host_browser = launch_chromium(pw, chromium_args([server.url]))
    ns_browser = launch_chromium(pw, chromium_args([server.url]), link=link, wrapper_dir=tmp_path)
    urls = server.demo["urls"]
    teacher = login(host_browser, server.url, "ada", server.password, pcs_expr=CLASSCAST_PCS)
    student = login(ns_browser, server.url, "ben", server.password, pcs_expr=CLASSCAST_PCS)
    teacher.goto(urls["instructor"])
    student.goto(urls["student"])
    teacher.click("#start-session")
    teacher.wait_for_selector("#stage-grid .tile.me")
    bring_on_stage(teacher, student, timeout_ms=90_000)
    return teacher, student, [ns_browser, host_browser]


def test_a_student_behind_300_kbits_keeps_seeing_and_being_seen(tmp_path):
    from playwright.sync_api import sync_playwright

    capped = LinkConditions(rate_kbps=300, queue_ms=200)
    with ImpairedLink(up=capped, down=capped) as link, \
            running_stage_server(tmp_path / "var", link.host_address) as server, sync_playwright() as pw:
        teacher, student, browsers = stage_of_two(pw, link, server, tmp_path)
        try:
            time.sleep(10)  # the estimates settle on the link
            seen = per_stream_fps(student, 10.0)
            shown = per_stream_fps(teacher, 10.0)
            logs = server.log_tail()
            assert len(seen) == 1 and len(shown) == 1, (seen, shown, logs)
            for fps, height in (*seen.values(), *shown.values()):
                assert fps >= 10 and height >= 90, (seen, shown, logs)
            print(f"behind the cap: the student sees {seen}, the teacher sees {shown}")
        finally:
            for browser in browsers:
                browser.close()


THREE_LAYERS = "f:360:1:1200000:30,h:180:2:200000:30,q:90:4:100000:15"


def test_a_capped_student_does_not_hold_back_an_unimpaired_one(tmp_path, monkeypatch):
    """Three layers: ben behind 300 kbit/s keeps decoding everyone at >= 10 fps, while cleo, on the clean
    host beside the teacher, is sent a larger picture than ben - his link sets nobody's layer but his.
    (Not yet the top layer for cleo: a receive-side estimate climbs only towards what it receives, so
    with two streams to share it she stays on 320x180; see bench/README, network.py.)"""
    from playwright.sync_api import sync_playwright

    monkeypatch.setenv("CLASSCAST_STAGE_LAYERS", THREE_LAYERS)
    capped = LinkConditions(rate_kbps=300, queue_ms=200)
    with ImpairedLink(up=capped, down=capped) as link, \
            running_stage_server(tmp_path / "var", link.host_address) as server, sync_playwright() as pw:
        teacher, ben, browsers = stage_of_two(pw, link, server, tmp_path)
        try:
            cleo = login(browsers[1], server.url, "cleo", server.password, pcs_expr=CLASSCAST_PCS)
            cleo.goto(server.demo["urls"]["student"])
            bring_on_stage(teacher, cleo, timeout_ms=90_000)
            time.sleep(15)  # estimates settle; cleo's subscriptions climb to what her link carries
            at_ben = per_stream_fps(ben, 10.0)
            at_cleo = per_stream_fps(cleo, 10.0)
            logs = server.log_tail()
            assert len(at_ben) == 2 and len(at_cleo) == 2, (at_ben, at_cleo, logs)
            assert all(fps >= 10 for fps, _ in at_ben.values()), (at_ben, logs)
            assert max(h for _, h in at_cleo.values()) > max(h for _, h in at_ben.values()), (at_ben, at_cleo, logs)
            assert all(fps >= 10 for fps, _ in at_cleo.values()), (at_cleo, logs)
            print(f"ben (capped) sees {at_ben}; cleo (clean) sees {at_cleo}")
        finally:
            for browser in browsers:
                browser.close()


def test_audio_over_lossy_wifi_is_heard_with_little_concealed(tmp_path):
    from playwright.sync_api import sync_playwright

    lossy = LinkConditions(loss=0.05, delay_ms=50, jitter_ms=20)
    with ImpairedLink(up=lossy, down=lossy, seed=3) as link, \
            running_stage_server(tmp_path / "var", link.host_address) as server, sync_playwright() as pw:
        teacher, student, browsers = stage_of_two(pw, link, server, tmp_path)
        try:
            time.sleep(5)
            heard_by_student = concealed_pct(student, 15.0)
            heard_by_teacher = concealed_pct(teacher, 15.0)
            assert heard_by_student < 8.0 and heard_by_teacher < 8.0, (heard_by_student, heard_by_teacher)
            print(f"concealed: {heard_by_student:.1f} % at the student, {heard_by_teacher:.1f} % at the teacher")
        finally:
            for browser in browsers:
                browser.close()
