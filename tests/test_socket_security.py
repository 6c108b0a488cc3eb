"""The class socket against someone who should not be there (issue 11): access revoked while the socket
is open, Origin checked to the port, text that cannot be stored, a person's budget shared by their
sockets, made-up numbers for /metrics. Through the real ASGI application, channel layer, database and
media node, as tests/test_consumer.py does (its fixtures and socket helpers are reused here)."""
from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.db import connection, transaction

from classroom.models import ChatMessage, Classroom, HandRaise, Membership, Presence, StageMembership
from classroom.services.chat import chat_post
from classroom.errors import InvalidState
from classroom.permissions import Actor
from classroom.services.tokens import service_token_issue
from classroom.signaling.origin import origin_allowed

# Fixtures (autouse ones included) and helpers of the consumer tests.
from tests.test_consumer import (  # noqa: F401
    TIMEOUT,
    Socket,
    cls,
    communicator,
    fast_passwords,
    fresh_channel_layer,
    media_node,
    open_socket,
    refused_with,
    sample,
)

pytestmark = pytest.mark.django_db(transaction=True)
User = get_user_model()
NO_LONGER = "You are no longer a member of this class."


async def start_live(ada: Socket) -> None:
    await ada.send(type="session.start", id="start")
    await ada.expect("ack", ref="start")


async def bring_on_stage(ada: Socket, student: Socket, user_id: int, *, accept: bool = True) -> None:
    await ada.send(type="stage.invite", user_id=user_id, id="invite")
    await ada.expect("ack", ref="invite")
    if accept:
        await student.send(type="stage.accept", id="accept")
        await student.expect("ack", ref="accept")


async def told_and_closed(socket: Socket) -> None:
    """The socket hears why in words, then closes with 4403."""
    error = await socket.expect("error")
    assert (error["code"], error["message"]) == ("not_member", NO_LONGER)
    closed = await socket.comm.receive_output(timeout=TIMEOUT)
    assert closed["type"] == "websocket.close" and closed["code"] == 4403, closed


async def state_event(socket: Socket, kind: str) -> dict[str, Any]:
    return (await socket.expect_event(kind))["state"]


async def remove(cls: dict[str, Any], name: str) -> None:
    await database_sync_to_async(delete_membership_as_the_admin_does)(classroom_id=cls["id"], user_id=cls["uid"][name])


def delete_membership_as_the_admin_does(*, classroom_id: int, user_id: int) -> None:
    with transaction.atomic():  # the admin's delete view runs in one transaction
        Membership.objects.get(classroom_id=classroom_id, user_id=user_id).delete()


def set_role(*, classroom_id: int, user_id: int, role: str) -> None:
    membership = Membership.objects.get(classroom_id=classroom_id, user_id=user_id)
    membership.role = role
    membership.save()  # as the admin's change form does: every field


# --- 1. revocation on an open socket ------------------------------------------------------------------------------

async def test_removed_member_is_told_closed_and_hears_no_more_chat(cls):
    ada = await open_socket(cls, "ada", page="console")
    ben = await open_socket(cls, "ben")
    cleo = await open_socket(cls, "cleo")
    try:
        await start_live(ada)
        await ada.send(type="chat.send", text="welcome all", id="c1")
        assert (await ben.expect("chat"))["message"]["text"] == "welcome all"
        await ben.send(type="hand.raise", id="h")
        await ben.expect("ack", ref="h")

        await remove(cls, "ben")
        await told_and_closed(ben)
        # the raised hand is gone for everyone: no ghost in the queue
        state = await state_event(ada, "hand.lowered")
        assert state["hands"] == []
        assert not await database_sync_to_async(HandRaise.objects.filter(lowered_at__isnull=True).exists)()

        await ada.send(type="chat.send", text="after ben left", id="c2")
        while (await cleo.expect("chat"))["message"]["text"] != "after ben left":
            pass
        assert await ben.comm.receive_nothing(timeout=0.3)
        assert not await database_sync_to_async(Presence.objects.filter(user_id=cls["uid"]["ben"]).exists)()
    finally:
        await ada.close()
        await ben.close()
        await cleo.close()


async def test_removed_member_on_stage_leaves_the_stage_and_the_media_connection(cls):
    ada = await open_socket(cls, "ada", page="console")
    ben = await open_socket(cls, "ben")
    try:
        await start_live(ada)
        await bring_on_stage(ada, ben, cls["uid"]["ben"])
        await ben.send(type="rtc.join", id="j")
        await ben.expect("rtc.offer")

        await remove(cls, "ben")
        await told_and_closed(ben)
        state = await state_event(ada, "stage.removed")
        assert [m["user_id"] for m in state["stage"]] == [cls["uid"]["ada"]]
        member = await database_sync_to_async(StageMembership.objects.get)(user_id=cls["uid"]["ben"])
        assert member.state == "removed"
        await ada.ping()
    finally:
        await ada.close()
        await ben.close()


async def test_role_change_takes_effect_on_the_open_socket(cls):
    ada = await open_socket(cls, "ada", page="console")
    ben = await open_socket(cls, "ben")
    try:
        await start_live(ada)
        await ben.send(type="stage.invite", user_id=cls["uid"]["cleo"], id="i0")
        await ben.error("forbidden", ref="i0")

        # promoted: a fresh welcome says so, with what the page needs to manage the class
        await database_sync_to_async(set_role)(classroom_id=cls["id"], user_id=cls["uid"]["ben"], role="instructor")
        welcome = await ben.expect("welcome")
        assert welcome["me"]["role"] == "instructor" and welcome["me"]["can_manage"] is True
        assert len(welcome["members"]) == 4
        await ben.send(type="stage.invite", user_id=cls["uid"]["cleo"], id="i1")
        await ben.expect("ack", ref="i1")

        # demoted: the rights go at once, the socket stays
        await database_sync_to_async(set_role)(classroom_id=cls["id"], user_id=cls["uid"]["ada"], role="student")
        welcome = await ada.expect("welcome")
        assert welcome["me"]["role"] == "student" and welcome["me"]["can_manage"] is False
        assert "members" not in welcome
        await ada.send(type="session.end", id="e")
        await ada.error("forbidden", ref="e")
        await ada.ping()
    finally:
        await ada.close()
        await ben.close()


async def test_staff_keep_access_when_their_membership_goes(cls):
    add = database_sync_to_async(Membership.objects.create)
    await add(classroom_id=cls["id"], user=cls["users"]["admin"], role="student")
    admin = await open_socket(cls, "admin")
    try:
        assert admin.welcome["me"]["role"] == "student"
        await remove(cls, "admin")
        welcome = await admin.expect("welcome")
        assert welcome["me"]["role"] == "staff" and welcome["me"]["can_manage"] is True
        await admin.ping()
    finally:
        await admin.close()


async def test_deactivated_and_deleted_accounts_are_closed_and_leave_no_ghost(cls):
    ada = await open_socket(cls, "ada", page="console")
    ben = await open_socket(cls, "ben")
    cleo = await open_socket(cls, "cleo", page="watch")
    try:
        await start_live(ada)
        await bring_on_stage(ada, ben, cls["uid"]["ben"], accept=False)  # invited
        await cleo.send(type="hand.raise", id="h")
        await cleo.expect("ack", ref="h")

        def deactivate(name: str) -> None:
            user = User.objects.get(username=name)
            user.is_active = False
            user.save()

        await database_sync_to_async(deactivate)("cleo")
        await told_and_closed(cleo)
        assert (await state_event(ada, "hand.lowered"))["hands"] == []

        await database_sync_to_async(User.objects.filter(username="ben").delete)()
        await told_and_closed(ben)
        state = await state_event(ada, "stage.removed")
        assert [m["user_id"] for m in state["stage"]] == [cls["uid"]["ada"]]
        assert cls["uid"]["ben"] not in {p["user_id"] for p in state["participants"]}
        await ada.ping()
    finally:
        await ada.close()
        await ben.close()
        await cleo.close()


async def test_deleting_a_live_class_closes_its_members_sockets(cls):
    ada = await open_socket(cls, "ada", page="console")
    ben = await open_socket(cls, "ben")
    try:
        await start_live(ada)
        await ben.send(type="hand.raise", id="h")
        await ben.expect("ack", ref="h")
        await database_sync_to_async(Classroom.objects.filter(pk=cls["id"]).delete)()
        await told_and_closed(ben)
        await told_and_closed(ada)
    finally:
        await ada.close()
        await ben.close()


async def test_a_change_that_sends_no_signal_is_caught_by_the_periodic_recheck(cls, settings):
    settings.CLASSCAST_WS_ACCESS_RECHECK_S = 0.2
    other = await database_sync_to_async(Classroom.objects.create)(title="Elsewhere")
    ben = await open_socket(cls, "ben")
    try:
        # QuerySet.update sends no signal (nor does raw SQL)
        await database_sync_to_async(Membership.objects.filter(user_id=cls["uid"]["ben"]).update)(classroom=other)
        await told_and_closed(ben)
    finally:
        await ben.close()


async def test_login_does_not_disturb_open_sockets(cls):
    ben = await open_socket(cls, "ben")
    try:
        def login_again() -> None:
            from django.contrib.auth.models import update_last_login

            update_last_login(None, User.objects.get(username="ben"))

        await database_sync_to_async(login_again)()
        await ben.ping()
        assert not [m for m in ben.skipped if m["type"] == "welcome"]
    finally:
        await ben.close()


# --- 2. Origin: scheme, host and port ------------------------------------------------------------------------------

def ws_with(cls: dict[str, Any], *, host: bytes, origin: bytes | None, cookie: str | None = None, query: str = "",
            extra: list[tuple[bytes, bytes]] = ()):
    comm = communicator(cls["id"], cookie=cookie, query=query, origin=origin)
    comm.scope["headers"] = [(k, v) for k, v in comm.scope["headers"] if k != b"host"] + [(b"host", host), *extra]
    return comm


async def connects(comm) -> bool:
    connected, _ = await comm.connect(timeout=TIMEOUT)
    await comm.disconnect(timeout=TIMEOUT)
    return connected


async def test_origin_must_match_scheme_host_and_port(cls, settings):
    ada = cls["cookies"]["ada"]
    host = b"127.0.0.1:8000"
    before = await sample("classcast_sockets_refused_total", {"reason": "origin"})
    assert not await connects(ws_with(cls, host=host, origin=b"http://127.0.0.1:8001", cookie=ada))
    assert await sample("classcast_sockets_refused_total", {"reason": "origin"}) == before + 1
    assert not await connects(ws_with(cls, host=host, origin=b"https://127.0.0.1:8000", cookie=ada))
    assert not await connects(ws_with(cls, host=host, origin=b"http://localhost:8000", cookie=ada))
    assert await connects(ws_with(cls, host=host, origin=b"http://127.0.0.1:8000", cookie=ada))
    # a Host that is not ours is not an origin of ours, even when the Origin agrees with it
    assert not await connects(ws_with(cls, host=b"evil.example", origin=b"http://evil.example", cookie=ada))
    # behind a TLS proxy: the site's public origin is trusted explicitly
    settings.CSRF_TRUSTED_ORIGINS = ["https://class.example.com"]
    assert await connects(ws_with(cls, host=host, origin=b"https://class.example.com", cookie=ada))
    assert not await connects(ws_with(cls, host=host, origin=b"https://class.example.com:8443", cookie=ada))


async def test_proxy_header_gives_the_scheme_when_configured(cls, settings):
    settings.ALLOWED_HOSTS = ["class.example.com"]
    ada = cls["cookies"]["ada"]
    https = [(b"x-forwarded-proto", b"https")]
    assert not await connects(ws_with(cls, host=b"class.example.com", origin=b"https://class.example.com", cookie=ada))
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    host = b"class.example.com"
    assert await connects(ws_with(cls, host=host, origin=b"https://class.example.com", cookie=ada, extra=https))
    assert not await connects(ws_with(cls, host=host, origin=b"http://class.example.com", cookie=ada, extra=https))


async def test_without_origin_only_a_token_opens_the_socket(cls):
    # what the egress workers' `websockets` client may send: no Origin, a service token
    token = service_token_issue(classroom_id=cls["id"], purpose="egress")
    assert await connects(ws_with(cls, host=b"127.0.0.1:8000", origin=None, query=f"token={token}"))
    # a session cookie without an Origin is not a browser's: the cookie is not used
    comm = ws_with(cls, host=b"127.0.0.1:8000", origin=None, cookie=cls["cookies"]["ada"])
    assert await refused_with(comm) == 4401


@pytest.mark.once
@pytest.mark.parametrize(
    "origin, allowed",
    [
        ("http://127.0.0.1:8000", True),
        ("HTTP://127.0.0.1:8000", True),
        ("http://127.0.0.1:8000/", True),
        ("http://127.0.0.1:8001", False),
        ("http://127.0.0.1", False),
        ("https://127.0.0.1:8000", False),
        ("ws://127.0.0.1:8000", False),
        ("null", False),
        ("http://127.0.0.1:8000.evil.example", False),
        ("http://user@127.0.0.1:8000", False),
        ("http://127.0.0.1:99999", False),
        ("https://app.example.com", True),
        ("https://app.example.com:443", True),
        ("http://app.example.com", False),
        ("https://a.tenant.example.org", True),
        ("https://tenant.example.org", True),
        ("https://eviltenant.example.org", False),
        ("https://a.tenant.example.org:8443", False),
    ],
)
def test_origin_allowed(origin, allowed, settings):
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://app.example.com", "https://*.tenant.example.org"]
    scope = {"type": "websocket", "scheme": "ws", "headers": [(b"host", b"127.0.0.1:8000")]}
    assert origin_allowed(origin, scope) is allowed


# --- 3. text that cannot be stored ---------------------------------------------------------------------------------

@pytest.mark.parametrize("escaped", ["\\ud800", "a\\u0000b", "bell\\u0007"], ids=["lone-surrogate", "NUL", "BEL"])
async def test_chat_with_text_that_cannot_be_stored_is_refused_in_words(cls, escaped):
    ada = await open_socket(cls, "ada", page="console")
    try:
        await start_live(ada)
        await ada.send_text('{"type": "chat.send", "id": "bad", "text": "%s"}' % escaped)
        error = await ada.error("invalid_field", ref="bad")
        assert error["message"].startswith("chat.send: text contains ")
        frame = '{"type": "destination.add", "id": "d", "name": "%s", "url": "rtmp://example.com/live/k"}'
        await ada.send_text(frame % escaped)
        await ada.error("invalid_field", ref="d")
        await ada.send(type="chat.send", text="still here", id="ok")
        await ada.expect("ack", ref="ok")
        assert [m.text for m in await database_sync_to_async(list)(ChatMessage.objects.all())] == ["still here"]
    finally:
        await ada.close()


async def test_chat_service_refuses_text_that_cannot_be_stored(cls):
    ada = await open_socket(cls, "ada", page="console")
    try:
        await start_live(ada)
    finally:
        await ada.close()
    actor = Actor(user_id=cls["uid"]["ada"], role="instructor")
    for text in ("a\x00b", "\ud800"):
        with pytest.raises(InvalidState, match="contains"):
            await database_sync_to_async(chat_post)(classroom_id=cls["id"], actor=actor, text=text)
    assert not await database_sync_to_async(ChatMessage.objects.exists)()


# --- 4. one budget per person, a cap on sockets ---------------------------------------------------------------------

async def replies(socket: Socket, count: int) -> list[dict[str, Any]]:
    got = []
    while len(got) < count:
        message = await socket.receive()
        if message["type"] in ("pong", "error"):
            got.append(message)
    return got


async def test_a_persons_sockets_share_one_message_budget(cls, settings):
    settings.CLASSCAST_WS_RATE_PER_S = 1  # a burst of 2, then one a second
    first = await open_socket(cls, "ben")
    second = await open_socket(cls, "ben", page="watch")
    other = await open_socket(cls, "cleo")
    try:
        for i in range(2):  # one socket alone: its burst goes through
            await first.send(type="ping", id=f"a{i}")
        assert [m["type"] for m in await replies(first, 2)] == ["pong", "pong"]
        for i in range(2):  # the second socket has no budget of its own
            await second.send(type="ping", id=f"b{i}")
        limited = [m for m in await replies(second, 2) if m["type"] == "error"]
        assert limited and all(m["code"] == "rate_limited" for m in limited)
        for i in range(2):  # someone else's budget is untouched
            await other.send(type="ping", id=f"c{i}")
        assert [m["type"] for m in await replies(other, 2)] == ["pong", "pong"]
    finally:
        await first.close()
        await second.close()
        await other.close()


async def test_sockets_per_person_and_class_are_capped(cls, settings):
    settings.CLASSCAST_WS_MAX_SOCKETS_PER_USER = 2
    before = await sample("classcast_sockets_refused_total", {"reason": "too_many_sockets"})
    tabs = [await open_socket(cls, "ben"), await open_socket(cls, "ben", page="watch")]
    try:
        extra = communicator(cls["id"], cookie=cls["cookies"]["ben"])
        connected, _ = await extra.connect(timeout=TIMEOUT)
        assert connected  # accepted only to say why
        error = await extra.receive_json_from(timeout=TIMEOUT)
        assert error["code"] == "too_many_sockets" and "2 tabs" in error["message"]
        closed = await extra.receive_output(timeout=TIMEOUT)
        assert closed["type"] == "websocket.close" and closed["code"] == 4429
        await extra.disconnect(timeout=TIMEOUT)
        assert await sample("classcast_sockets_refused_total", {"reason": "too_many_sockets"}) == before + 1
        assert await database_sync_to_async(Presence.objects.filter(user_id=cls["uid"]["ben"]).count)() == 2

        cleo = await open_socket(cls, "cleo")  # another person is not affected
        await cleo.close()
        await tabs.pop().close()  # a closed tab frees its place
        tabs.append(await open_socket(cls, "ben"))
    finally:
        for tab in tabs:
            await tab.close()


# --- 5. stats.report: only from a media connection, bounded, rate-limited ------------------------------------------

TRACK = {"kind": "video", "direction": "inbound", "bitrate_bps": 400_000, "packet_loss": 0.02, "jitter_ms": 5}
REPORT = {"type": "stats.report", "join_ms": 900, "rtt_ms": 30, "tracks": [TRACK]}
SERIES = {
    "classcast_join_seconds_count": {"source": "browser"},
    "classcast_rtt_seconds_count": {"source": "browser"},
    "classcast_packet_loss_ratio_count": {"source": "browser", "kind": "video"},
}


async def metric_counts() -> dict[str, float]:
    return {name: await sample(name, labels) for name, labels in SERIES.items()}


async def test_a_member_without_media_connection_cannot_move_the_metrics(cls):
    ada = await open_socket(cls, "ada", page="console")
    ben = await open_socket(cls, "ben")
    try:
        await start_live(ada)
        before = await metric_counts()
        for i in range(3):
            await ben.send(**REPORT, id=f"r{i}")
        await ben.ping()  # handled, and no error was sent back
        assert await metric_counts() == before
    finally:
        await ada.close()
        await ben.close()


async def test_stats_reports_are_bounded_and_rate_limited_quietly(cls):
    ada = await open_socket(cls, "ada", page="console")
    try:
        await start_live(ada)
        await ada.send(type="rtc.join", id="j")
        await ada.expect("rtc.offer")
        before = await metric_counts()
        for bad in ({"rtt_ms": 3_600_000}, {"join_ms": 10**9}, {"tracks": [{**TRACK, "packet_loss": 7}]}):
            await ada.send(type="stats.report", **bad, id="bad")
            await ada.error("invalid_field", ref="bad")
        assert await metric_counts() == before

        for i in range(6):
            await ada.send(**REPORT, id=f"r{i}")
        await ada.ping()  # the extra reports were dropped without an error
        after = await metric_counts()
        assert after["classcast_join_seconds_count"] == before["classcast_join_seconds_count"] + 1
        counted = after["classcast_rtt_seconds_count"] - before["classcast_rtt_seconds_count"]
        assert 3 <= counted <= 4, counted  # the join report, a burst of 2 (one more if 2 s passed): not 6
    finally:
        await ada.close()


# --- the page: removed in the admin while the class is open ----------------------------------------------------------

@pytest.fixture
def server_passwords(settings) -> None:
    """The live server checks passwords with the site's hashers, not the tests' fast one."""
    from django.conf import global_settings

    settings.PASSWORD_HASHERS = global_settings.PASSWORD_HASHERS


@pytest.mark.browser
def test_the_page_says_in_words_when_the_admin_removes_the_member(
    server_passwords, live_server_proc, live_demo, browser, monkeypatch
):
    import re

    from tests.conftest import login_page

    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")  # Playwright's sync API runs a loop in this thread
    server, demo = live_server_proc, live_demo
    ben = login_page(browser, server, "ben", "classcast-demo")
    ben.goto(demo["urls"]["student"])
    ben.wait_for_function("() => window.classcast.me && window.classcast.me.role === 'student'")

    membership = Membership.objects.get(classroom_id=demo["class_id"], user__username="ben")
    admin = login_page(browser, server, "admin", "classcast-demo")
    admin.goto(f"/admin/classroom/membership/{membership.pk}/delete/")
    admin.get_by_role("button", name=re.compile("Yes, I.m sure")).click()
    admin.wait_for_url(lambda url: url.rstrip("/").endswith("/admin/classroom/membership"))

    ben.wait_for_selector(f"#banner.error:has-text('{NO_LONGER}')")
    assert not Membership.objects.filter(pk=membership.pk).exists()
    connection.close()  # opened beside Playwright's loop: not the connection teardown closes
