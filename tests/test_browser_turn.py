"""NAT traversal through a real coturn on loopback with TURN REST credentials (`use-auth-secret`).

Chromium is forced to relay (`?ice=relay` -> iceTransportPolicy "relay"), so media can only flow
through coturn's relay ports; the credentials are the short-lived ones the app hands out. A wrong
shared secret must keep the browser off the relay without breaking the media node or the class.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import random
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from .conftest import (
    LiveServer,
    bring_on_stage,
    free_port,
    login_page,
    start_live_server,
    stop_processes,
    wait_for_port,
    wait_until,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TURN_SECRET = "classcast-turn-test-secret"
TURN_REALM = "classcast.test"
RELAY_PORTS = 200


@dataclass
class Coturn:
    port: int
    secret: str
    min_port: int
    max_port: int
    log_path: Path
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def coturn_start(tmp: Path, *, secret: str) -> Coturn:
    """`turnserver` on 127.0.0.1 with TURN REST auth; every file it writes stays under `tmp`."""
    port = free_port()
    min_port = random.randrange(49152, 65535 - RELAY_PORTS, RELAY_PORTS)  # a range of its own per run
    max_port = min_port + RELAY_PORTS - 1
    log_path = tmp / "turnserver.log"
    conf = tmp / "turnserver.conf"
    conf.write_text(
        "\n".join(
            [
                "listening-ip=127.0.0.1",
                f"listening-port={port}",
                "relay-ip=127.0.0.1",
                f"min-port={min_port}",
                f"max-port={max_port}",
                "use-auth-secret",
                f"static-auth-secret={secret}",
                f"realm={TURN_REALM}",
                "fingerprint",
                "no-tls",
                "no-dtls",
                "no-cli",
                "no-tcp-relay",
                "no-rfc5780",
                "allow-loopback-peers",  # browser, media node and relay all live on 127.0.0.1
                "verbose",  # per-session lines: ALLOCATE success / 401 per user
                f"log-file={log_path}",
                "simple-log",
                "no-stdout-log",
                f"pidfile={tmp / 'turnserver.pid'}",
                f"userdb={tmp / 'turndb'}",
                "",
            ]
        )
    )
    out = open(tmp / "turnserver.out", "w")
    proc = subprocess.Popen(["turnserver", "-c", str(conf)], cwd=tmp, stdout=out, stderr=subprocess.STDOUT)
    coturn = Coturn(port=port, secret=secret, min_port=min_port, max_port=max_port, log_path=log_path, proc=proc)
    try:
        wait_for_port(port, proc=proc)
        # The TCP listener answers first; wait for the UDP one browsers and aioice use.
        wait_until(lambda: "UDP listener opened" in coturn.log(), timeout=10, what="coturn's UDP listener")
    except BaseException:
        stop_processes([proc])
        raise
    return coturn


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    server = coturn_start(tmp_path, secret=TURN_SECRET)
    try:
        yield server
    finally:
        stop_processes([server.proc])


@pytest.fixture
def app_turn_secret() -> str:
    """The secret the app signs credentials with; a test parametrizes it to disagree with coturn."""
    return TURN_SECRET


def live_server_with(tmp_path: Path, **env: str) -> Iterator[LiveServer]:
    from classroom.models import MediaNode

    MediaNode.objects.all().delete()  # nodes of earlier tests are gone
    server = start_live_server(tmp_path, **env)
    try:
        yield server
    finally:
        stop_processes(server.procs)


@pytest.fixture
def turn_live_server(transactional_db, tmp_path, coturn, app_turn_secret) -> Iterator[LiveServer]:
    yield from live_server_with(tmp_path, CLASSCAST_TURN_URLS=coturn.url, CLASSCAST_TURN_SECRET=app_turn_secret)


@pytest.fixture
def unreachable_turn_live_server(transactional_db, tmp_path) -> Iterator[LiveServer]:
    """TURN configured at a loopback port nothing listens on (a TURN server that is down)."""
    url = f"turn:127.0.0.1:{free_port()}?transport=udp"
    yield from live_server_with(tmp_path, CLASSCAST_TURN_URLS=url, CLASSCAST_TURN_SECRET=TURN_SECRET)


@pytest.fixture
def turn_demo(turn_live_server) -> dict[str, Any]:
    from classroom.services.demo import demo_seed

    return demo_seed()


@pytest.fixture
def unreachable_demo(unreachable_turn_live_server) -> dict[str, Any]:
    from classroom.services.demo import demo_seed

    return demo_seed()


# The selected candidate pair of one of the page's connections ("pub" or "sub"), from getStats().
SELECTED_PAIR = """
async (name) => {
  const pc = window.classcast.call && window.classcast.call[name];
  if (!pc) return null;
  const stats = await pc.getStats();
  let pairId = null;
  stats.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
  });
  const pair = pairId && stats.get(pairId);
  if (!pair || pair.state !== 'succeeded') return null;
  const local = stats.get(pair.localCandidateId);
  const remote = stats.get(pair.remoteCandidateId);
  const localTypes = [];
  stats.forEach((s) => { if (s.type === 'local-candidate') localTypes.push(s.candidateType); });
  return {
    local: {
      type: local.candidateType, address: local.address, port: local.port,
      relayProtocol: local.relayProtocol || null, url: local.url || null,
    },
    remote: {type: remote.candidateType, address: remote.address, port: remote.port},
    localTypes,
    bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived,
  };
}
"""

# Video frames decoded on the subscribe connection (the rest of the stage).
FRAMES_DECODED = """
async () => {
  const pc = window.classcast.call && window.classcast.call.sub;
  if (!pc) return 0;
  let frames = 0;
  (await pc.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp' && s.kind === 'video') frames += s.framesDecoded || 0;
  });
  return frames;
}
"""

CONNECTED = (
    "() => window.classcast.rtcStates.publish === 'connected' && window.classcast.rtcStates.subscribe === 'connected'"
)


def with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


def frames_rising(page) -> tuple[int, int]:
    first = wait_until(lambda: page.evaluate(FRAMES_DECODED), what="first decoded frames")
    later = wait_until(lambda: (n := page.evaluate(FRAMES_DECODED)) > first and n, what="more decoded frames")
    return first, later


def test_stage_media_flows_through_turn_relay(turn_live_server, turn_demo, coturn, browser):
    server, demo = turn_live_server, turn_demo
    cid = demo["class_id"]
    ada = login_page(browser, server, "ada", "classcast-demo")
    ben = login_page(browser, server, "ben", "classcast-demo")
    ada.goto(with_query(demo["urls"]["instructor"], "ice=relay"))
    ben.goto(with_query(demo["urls"]["student"], "ice=relay"))

    ada.click("#start-session")
    ada.wait_for_selector("#session-status.live")
    ada.wait_for_selector("#stage-grid .tile.me")
    bring_on_stage(ada, ben)

    for page in (ada, ben):
        assert page.evaluate("window.classcast.call.icePolicy") == "relay"
        page.wait_for_selector("#stage-grid .tile:not(.me) video")
        page.wait_for_function(CONNECTED, timeout=30_000)
        first, later = frames_rising(page)
        assert later > first > 0, f"server log:\n{server.logs()}"

    # Both of each page's connections go through a coturn relay port on loopback, and only
    # relay candidates were gathered (the policy leaves nothing else to fall back on).
    for page in (ada, ben):
        for name in ("pub", "sub"):
            # Media direction of each connection: the page sends on pub and receives on sub (the
            # selected pair may have just been nominated, so wait for its media bytes).
            flowing = "bytesSent" if name == "pub" else "bytesReceived"
            pair = wait_until(
                lambda: (p := page.evaluate(SELECTED_PAIR, name)) and p[flowing] > 1000 and p,
                what=f"media on the selected {name} pair",
            )
            assert pair["local"]["type"] == "relay", pair
            assert pair["local"]["address"] == "127.0.0.1", pair
            assert coturn.min_port <= pair["local"]["port"] <= coturn.max_port, pair
            assert pair["local"]["relayProtocol"] == "udp", pair
            assert set(pair["localTypes"]) == {"relay"}, pair

    # The REST endpoint hands ada a TURN entry signed with coturn's secret, for her user id.
    ada_id = ada.evaluate("window.classcast.me.user_id")
    ben_id = ben.evaluate("window.classcast.me.user_id")
    reply = ada.evaluate(
        "async (url) => { const r = await fetch(url); return {status: r.status, body: await r.json()}; }",
        f"/api/classes/{cid}/ice-servers/",
    )
    assert reply["status"] == 200, reply
    turn = [s for s in reply["body"]["iceServers"] if any(u.startswith("turn:") for u in s["urls"])]
    assert len(turn) == 1, reply
    entry = turn[0]
    assert entry["urls"] == [coturn.url]
    expiry, user = entry["username"].split(":", 1)
    assert user == f"user-{ada_id}"
    assert int(expiry) > time.time()
    expected = base64.b64encode(hmac.new(TURN_SECRET.encode(), entry["username"].encode(), hashlib.sha1).digest())
    assert entry["credential"] == expected.decode()

    # coturn saw allocations and permissions for both people, and refused no credentials.
    log = coturn.log()
    for uid in (ada_id, ben_id):
        assert re.search(rf"user <\d+:user-{uid}>: incoming packet ALLOCATE processed, success", log), log[-4000:]
    assert "CREATE_PERMISSION processed, success" in log
    assert "check_stun_auth" not in log
    assert "media node message failed" not in server.logs()
    for ctx in (ada.context, ben.context):
        ctx.close()


@pytest.mark.parametrize("app_turn_secret", ["not-the-coturn-secret"], ids=["wrong-secret"])
def test_wrong_turn_secret_keeps_relay_off_but_class_works(turn_live_server, turn_demo, coturn, browser):
    server, demo = turn_live_server, turn_demo
    cid = demo["class_id"]
    ada = login_page(browser, server, "ada", "classcast-demo")
    ben = login_page(browser, server, "ben", "classcast-demo")
    ada.goto(with_query(demo["urls"]["instructor"], "ice=relay"))
    ben.goto(demo["urls"]["student"])
    ada.click("#start-session")
    ada.wait_for_selector("#session-status.live")
    ada.wait_for_selector("#stage-grid .tile.me")
    ada_id = ada.evaluate("window.classcast.me.user_id")

    # The media node never asks TURN for itself; it offers its host candidates.
    ada.wait_for_function("() => !!(window.classcast.call && window.classcast.call.pub?.remoteDescription)")
    offer = ada.evaluate("window.classcast.call.pub.remoteDescription.sdp")
    assert "typ host" in offer and "typ relay" not in offer, offer

    # ~20 s: the browser has no candidate to check with, so its media never connects.
    seen: set[str] = set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        seen.update(ada.evaluate("Object.values(window.classcast.rtcStates)"))
        assert "connected" not in seen, f"connected through TURN with a wrong secret; states {seen}"
        time.sleep(0.5)
    assert ada.evaluate("window.classcast.call.pub.connectionState") != "connected"
    assert ada.evaluate(SELECTED_PAIR, "pub") is None

    # coturn refused ada's credentials.
    log = coturn.log()
    assert re.search(rf"check_stun_auth: Cannot find credentials of user <\d+:user-{ada_id}>", log), log[-4000:]
    assert re.search(rf"user <\d+:user-{ada_id}>: incoming packet message processed, error 401", log), log[-4000:]
    assert "ALLOCATE processed, success" not in log

    # Everything else still works: chat both ways, the REST endpoint, the socket.
    ada.fill("#chat-input", "can you hear me?")
    ada.press("#chat-input", "Enter")
    ben.wait_for_selector("#chat-log li:has-text('can you hear me?')")
    ben.fill("#chat-input", "no media, but chat works")
    ben.press("#chat-input", "Enter")
    ada.wait_for_selector("#chat-log li:has-text('no media, but chat works')")
    status = ada.evaluate(f"fetch('/api/classes/{cid}/ice-servers/').then((r) => r.status)")
    assert status == 200
    assert "media node message failed" not in server.logs()
    for ctx in (ada.context, ben.context):
        ctx.close()


def test_unreachable_turn_server_falls_back_to_host_candidates(unreachable_turn_live_server, unreachable_demo, browser):
    server, demo = unreachable_turn_live_server, unreachable_demo
    ada = login_page(browser, server, "ada", "classcast-demo")
    ben = login_page(browser, server, "ben", "classcast-demo")
    ada.goto(demo["urls"]["instructor"])
    ben.goto(demo["urls"]["student"])
    ada.click("#start-session")
    ada.wait_for_selector("#stage-grid .tile.me")
    bring_on_stage(ada, ben)

    # aioice gives up on the TURN server after its gathering timeout and offers host candidates.
    for page in (ada, ben):
        page.wait_for_function(CONNECTED, timeout=45_000)
        first, later = frames_rising(page)
        assert later > first > 0, f"server log:\n{server.logs()}"
        offer = page.evaluate("window.classcast.call.pub.remoteDescription.sdp")
        assert "typ host" in offer and "typ relay" not in offer, offer
        pair = wait_until(lambda: page.evaluate(SELECTED_PAIR, "sub"), what="selected sub pair")
        assert pair["local"]["type"] == "host" and pair["remote"]["type"] == "host", pair
    assert "media node message failed" not in server.logs()
    for ctx in (ada.context, ben.context):
        ctx.close()
