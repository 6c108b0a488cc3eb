"""A broadcast viewer on a weak link (issue 12): a viewer on a 300 kbit/s link plays the low HLS rendition
without stalling.

Every part is real: the compositor's program with the default `CLASSCAST_HLS_LADDER` (720p, 360p, 180p with
its own 48 kbit/s AAC, audio) publishes one RTMP stream per rung into the packager as `make run` starts it
(`manage.py hls_packager`); the app's own origin (daphne, embedded default) serves the master playlist at
the host's TUN address; Chromium runs inside a lab namespace whose link is capped at 300 kbit/s each way
(tests/netlab.py) and a student logs in and opens the real watch page, which plays with hls.js from
node_modules. The page's player is sampled every 100 ms (tests/netlab_hls.py) and judged from the samples:
the rung hls.js plays, the size of the decoded picture, the media it fetches, and whether currentTime
advances.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import m3u8
import pytest

from .netlab import ImpairedLink, LinkConditions
from .netlab_hls import FETCHES_JS, PLAYBACK_SAMPLER_JS, fetch_kind, kbps_by_kind, playback_stalls, settled_at
from .netlab_stage import (
    CHROMIUM,
    StageServer,
    chromium_args,
    free_port,
    launch_chromium,
    make_noisy_clip,
    manage,
    running_stage_server,
    stage_server_env,
    stop_process,
    wait_for_port,
)

pytestmark = [
    pytest.mark.once,  # a network test: the deployment mode does not matter
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(os.geteuid() != 0 or not Path("/dev/net/tun").exists(), reason="the lab needs root and TUN"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Chromium (Debian's chromium)"),
]

ROOT = Path(__file__).resolve().parent.parent
RUNG_NAMES = ["720p", "360p", "180p", "audio"]  # the default ladder, top first
LOW_HEIGHT = 180  # the lowest video rung: hls.js leaves the audio-only variant out when there are video ones
# As the lab's stage test caps a student (tests/test_network_stage.py): 300 kbit/s, a 200 ms queue.
CAPPED = LinkConditions(rate_kbps=300, queue_ms=200)
# Start-up is not judged: hls.js loads a first fragment to measure the link, jumps to the live edge and
# fills its buffer. The rules apply from START_UP_S after the low rung first plays on screen, for WATCH_S.
START_UP_S = 3.0
WATCH_S = 30.0
# A stall is currentTime standing still for more than 1 s while not paused: three LL-HLS parts (0.334 s),
# i.e. the player's whole PART-HOLD-BACK ran dry and the picture stops for anyone to see. A shorter
# standstill is within what 100 ms sampling and timers on a busy 2-core machine show without a rebuffer.
STALL_S = 1.0

START_SESSION = """
import json
from django.contrib.auth import get_user_model
from classroom.models import Classroom
from classroom.selectors import actor_get
from classroom.services.sessions import session_start
ada = get_user_model().objects.get(username="ada")
session = session_start(classroom_id={cid}, actor=actor_get(user=ada, classroom_id={cid}))
print(json.dumps({{"session": session.pk, "key": Classroom.objects.get(pk={cid}).stream_key}}))
"""

# True once the low rung plays on screen: hls.js's level and the decoded picture have its height and
# currentTime advanced between two samples.
LOW_RUNG_PLAYS_JS = f"""() => {{
  const s = window.__playback.samples;
  for (let i = 1; i < s.length; i++)
    if (s[i].height === {LOW_HEIGHT} && s[i].videoHeight === {LOW_HEIGHT} && s[i].ct > s[i - 1].ct) return true;
  return false;
}}"""

T = TypeVar("T")


def wait_until(check: Callable[[], T | None], *, timeout: float, what: str, logs: Callable[[], str]) -> T:
    """Poll the packager's output on disk (another process writes it: there is no event to await)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"no {what} after {timeout:.0f} s\n{logs()}")


def master_rungs(folder: Path) -> list[str] | None:
    """The master playlist's variant URIs once every rung has published."""
    path = folder / "live.m3u8"
    if not path.exists():
        return None
    uris = [p.uri for p in m3u8.loads(path.read_text()).playlists]
    return uris if len(uris) == len(RUNG_NAMES) else None


def tail(path: Path, chars: int = 2500) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def test_a_viewer_on_a_300_kbits_link_plays_the_low_rendition_without_stalling(tmp_path):
    from playwright.sync_api import sync_playwright

    clip = make_noisy_clip(tmp_path / "noisy.y4m")  # every rung at its bitrate cap, as a lively camera puts it
    var = tmp_path / "var"
    children: list[subprocess.Popen[bytes]] = []
    with ImpairedLink(up=CAPPED, down=CAPPED) as link, running_stage_server(var, link.host_address) as server:
        env = stage_server_env(var, link.host_address, server.port)  # the web process's install and settings
        cid = server.demo["class_id"]
        live = json.loads(manage(env, "shell", "-c", START_SESSION.format(cid=cid)).strip().splitlines()[-1])
        folder = var / "hls" / f"class-{cid}" / f"session-{live['session']}"

        def logs() -> str:
            return "".join(f"--- {p.name}\n{tail(p)}\n" for p in sorted(tmp_path.glob("*.log"))) + server.log_tail()

        try:
            rtmp_port = free_port()
            with open(tmp_path / "packager.log", "wb") as log:
                children.append(subprocess.Popen(
                    [sys.executable, "manage.py", "hls_packager", "--port", str(rtmp_port), "--metrics-port", "0"],
                    cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                ))
            wait_for_port("127.0.0.1", rtmp_port, proc=children[0])
            code = (f"from tests.netlab_hls import publish_ladder; "
                    f"publish_ladder({rtmp_port}, {live['key']!r}, {str(clip)!r}, 240)")
            with open(tmp_path / "publisher.log", "wb") as log:
                children.append(subprocess.Popen(
                    [sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                ))
            uris = wait_until(lambda: master_rungs(folder), timeout=60, what="master playlist of every rung", logs=logs)
            assert uris == [f"{name}/live.m3u8" for name in RUNG_NAMES]

            with sync_playwright() as pw:
                browser = launch_chromium(pw, chromium_args([server.url]), link=link, wrapper_dir=tmp_path)
                try:
                    played = watch(browser, server, link)
                finally:
                    browser.close()
        finally:
            for child in reversed(children):
                if child.stdin is not None:
                    child.stdin.close()  # the publisher stops on EOF
                    try:
                        child.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        pass
                stop_process(child)

    # Kept beside the logs for a look after a failure.
    (tmp_path / "played.json").write_text(json.dumps({k: v for k, v in played.items() if not k.startswith("link_")}))
    samples, events = played["samples"], played["events"]
    settled = settled_at(samples, LOW_HEIGHT)
    assert settled is not None, (played["levels"], samples[-5:])
    start, end = settled + START_UP_S, samples[-1]["t"]
    assert end - start >= WATCH_S - 1, (start, end)  # the page sampled the whole window
    window = [s for s in samples if start <= s["t"] <= end]
    switched = [e for e in events if e["type"] == "levelSwitched"]
    stalls = playback_stalls(samples, start, end, STALL_S)
    media_rungs = sorted({fetch_kind(f[2]) for f in played["fetches"] if start <= f[1] <= end} - {"master", "other"})
    advanced = window[-1]["ct"] - window[0]["ct"]
    frames = window[-1]["frames"] - window[0]["frames"]
    down = played["link_after"].down - played["link_before"].down
    first = samples[0]["t"]  # the player exists
    figures = {
        "page_ready_s": played["page_ready_s"],
        "settled_after_s": round(settled - first, 1),
        "switches": [(round(e["t"] - first, 1), e["height"]) for e in switched],
        "watched_s": round(end - start, 1), "played_s": round(advanced, 1),
        "stalls": [(round(x.at - first, 1), round(x.seconds, 1)) for x in stalls],
        "waiting": [round(e["t"] - first, 1) for e in events if e["type"] == "waiting"],
        "frames": frames, "dropped_frames": window[-1]["dropped"] - window[0]["dropped"],
        "errors": [e["details"] for e in events if e["type"] == "error"],
        "bandwidth_estimate_kbps": round(window[-1]["bw"] / 1000), "latency_s": round(window[-1]["latency"], 2),
        "buffer_ahead_min_s": round(min(s["ahead"] for s in window), 2),
        "fetched_kbps": kbps_by_kind(played["fetches"], start, end),
        "link_down_kbps": round(down.forwarded_bytes * 8 / 1000 / played["link_s"], 1),
        "link_down_dropped": down.dropped_queue,
        "link_queue_delay_ms_mean": round(down.queue_delay_ms_mean),
    }
    print("viewer behind 300 kbit/s:", json.dumps(figures))

    # It plays the low rendition: hls.js's level and the decoded picture are 180p throughout; it neither
    # switches nor fetches from a rung the link cannot carry.
    assert {(s["height"], s["videoHeight"]) for s in window} == {(LOW_HEIGHT, LOW_HEIGHT)}, figures
    assert not [e for e in switched if start <= e["t"] <= end], figures
    assert media_rungs == [f"{LOW_HEIGHT}p media", f"{LOW_HEIGHT}p playlist"], figures
    # Without stalling; nor by many standstills just under the bound (together at most two stalls' worth);
    # and the picture moves (frames decoded: at least half of 30 fps, some may drop on a busy machine).
    assert stalls == [], figures
    assert advanced >= (end - start) - 2 * STALL_S, figures
    assert frames >= 15 * (end - start), figures
    assert not [e for e in events if e["type"] == "error" and e["fatal"]], figures


def viewer_page(browser: Any, server: StageServer, username: str) -> Any:
    """A viewer's page, logged in through the real login form (no camera or microphone: watch only)."""
    page = browser.new_context(base_url=server.url).new_page()
    page.goto("/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", server.password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)
    return page


def watch(browser: Any, server: StageServer, link: ImpairedLink) -> dict[str, Any]:
    """cleo, a student, opens the watch page behind the cap and watches; what her player did."""
    page = viewer_page(browser, server, "cleo")
    page.context.add_init_script(PLAYBACK_SAMPLER_JS)
    t_goto = time.monotonic()
    page.goto(server.demo["urls"]["watch"])
    page.wait_for_selector("#player-status.live", timeout=60_000)
    page_ready_s = round(time.monotonic() - t_goto, 1)  # the page and its scripts through the cap
    # hls.js parsed the master playlist: its levels are the video rungs.
    page.wait_for_function("() => window.__playback && window.__playback.levels.length > 0", timeout=60_000)
    levels = page.evaluate("() => window.__playback.levels")
    assert sorted(level["height"] for level in levels) == [180, 360, 720], levels
    page.wait_for_function(LOW_RUNG_PLAYS_JS, timeout=60_000)
    # From here a fixed observation window: nothing to await, the page samples its player meanwhile.
    link_before, t0 = link.stats(), time.monotonic()
    time.sleep(START_UP_S + WATCH_S + 0.5)
    link_after, link_s = link.stats(), time.monotonic() - t0
    played = page.evaluate("() => ({ samples: window.__playback.samples, events: window.__playback.events })")
    return {**played, "fetches": page.evaluate(FETCHES_JS), "levels": levels, "page_ready_s": page_ready_s,
            "link_before": link_before, "link_after": link_after, "link_s": link_s}
