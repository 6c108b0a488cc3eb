"""A non-browser participant (the egress worker's client) joins with a service token as a hidden,
subscribe-only member and receives the stage's media; forged tokens are refused."""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from aiortc.mediastreams import MediaStreamError

from rtc.stage_client import StageClientConfig, StageConnectionError, StageSubscriber

from .conftest import login_page

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def ws_url(server, class_id: int, token: str) -> str:
    return f"ws://127.0.0.1:{server.port}/ws/classes/{class_id}/?token={token}"


async def _receive(config: StageClientConfig, seconds: float) -> dict[str, Any]:
    sub = StageSubscriber(config)
    runner = asyncio.ensure_future(sub.run())
    try:
        deadline = time.monotonic() + 30
        while not any(t.kind == "video" for t in sub.tracks.values()):
            if runner.done():
                runner.result()
            assert time.monotonic() < deadline, "no video track offered to the service participant"
            await asyncio.sleep(0.1)
        video = next(t for t in sub.tracks.values() if t.kind == "video")
        audio = next((t for t in sub.tracks.values() if t.kind == "audio"), None)
        frames, size, started = 0, None, time.monotonic()
        while time.monotonic() - started < seconds:
            frame = await asyncio.wait_for(video.track.recv(), timeout=10)
            frames += 1
            size = (frame.width, frame.height)
        samples = 0
        if audio is not None:
            for _ in range(10):
                samples += (await asyncio.wait_for(audio.track.recv(), timeout=10)).samples
        return {"frames": frames, "size": size, "who": (video.user_id, video.name, video.role), "samples": samples}
    finally:
        await sub.close()
        try:
            await asyncio.wait_for(runner, timeout=10)
        except (StageConnectionError, MediaStreamError, asyncio.TimeoutError):
            pass


def run_in_thread(coro_fn, *args) -> Any:
    """Run an asyncio client beside Playwright's sync API (which owns this thread's loop)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro_fn(*args))
        except BaseException as exc:  # re-raised in the test thread
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=90)
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_service_token_joins_hidden_and_receives_media(live_server_proc, live_demo, browser):
    from classroom.services.tokens import service_token_issue

    server, demo = live_server_proc, live_demo
    cid = demo["class_id"]
    ada = login_page(browser, server, "ada", "classcast-demo")
    ada.goto(demo["urls"]["instructor"])
    ada.click("#start-session")
    ada.wait_for_selector("#stage-grid .tile.me")

    config = StageClientConfig(
        ws_url=ws_url(server, cid, service_token_issue(classroom_id=cid, purpose="egress")),
        origin=server.url,
    )
    got = run_in_thread(_receive, config, 3.0)
    assert got["frames"] >= 20  # about 20 fps from the fake camera for 3 s, re-encoded by the node
    assert got["size"][0] >= 320 and got["size"][1] >= 180
    assert got["who"][1] == "Ada Lovelace" and got["who"][2] == "instructor"
    assert got["samples"] > 0
    # Hidden: the instructor never saw a participant for it.
    names = ada.evaluate("window.classcast.state.participants.map(p => p.name)")
    assert names == ["Ada Lovelace"]


@pytest.mark.parametrize("token", ["forged", "eyJjIjoxfQ:1tTtTt:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"])
def test_forged_service_token_is_refused(live_server_proc, live_demo, token):
    config = StageClientConfig(ws_url=ws_url(live_server_proc, live_demo["class_id"], token), origin=live_server_proc.url)
    with pytest.raises(StageConnectionError):
        run_in_thread(lambda: StageSubscriber(config).run())


def test_service_token_for_another_class_is_refused(live_server_proc, live_demo):
    from classroom.models import Classroom
    from classroom.services.tokens import service_token_issue

    other = Classroom.objects.create(title="Other class")
    token = service_token_issue(classroom_id=other.pk, purpose="egress")
    config = StageClientConfig(ws_url=ws_url(live_server_proc, live_demo["class_id"], token), origin=live_server_proc.url)
    with pytest.raises(StageConnectionError):
        run_in_thread(lambda: StageSubscriber(config).run())
