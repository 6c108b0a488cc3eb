"""The class socket through the real ASGI application (config.asgi): auth, refusals, broadcasts, rate
limits and the media node path. Database, channel layer and media node are the real ones: on the embedded
default the consumer starts the media node in this test's event loop; scaled out, the test runs one."""
from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import uuid
from typing import Any, AsyncIterator

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.test import Client
from prometheus_client import REGISTRY

from classroom.models import Classroom, LiveSession, MediaNode as MediaNodeRow, Presence, SessionStatus, StageMembership
from classroom.services.tokens import service_token_issue

pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()
TIMEOUT = 10
HOST = b"127.0.0.1"  # the Host a browser sends for a page served from http://127.0.0.1
ORIGIN = b"http://127.0.0.1"  # the socket wants the page's own origin (scheme, host and port)
BAD_SDP = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


def application():
    from config.asgi import application

    return application


# --- fixtures -------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def cls(demo) -> dict[str, Any]:
    """The demo class, its users and a logged-in session cookie for each (plus eve, in no class)."""
    User.objects.create_user("eve", password="eve-password")
    users = {u.username: u for u in User.objects.filter(username__in=["ada", "ben", "cleo", "dev", "admin", "eve"])}
    cookies = {}
    for name, user in users.items():
        client = Client()
        client.force_login(user)
        cookies[name] = client.cookies["sessionid"].value
    return {"id": demo["class_id"], "users": users, "uid": {n: u.pk for n, u in users.items()}, "cookies": cookies}


@pytest.fixture(autouse=True)
def fresh_channel_layer(settings) -> None:
    """A channel layer of this test's own: every test runs on a new event loop, and a Redis layer keeps
    per-loop locks that must not outlive their loop (re-setting CHANNEL_LAYERS drops the cached layer)."""
    settings.CHANNEL_LAYERS = copy.deepcopy(django_settings.CHANNEL_LAYERS)


@pytest.fixture(autouse=True)
async def media_node(transactional_db, fresh_channel_layer) -> AsyncIterator[Any]:
    """Scaled out: a media node of our own in this event loop. Embedded: the one the consumer starts,
    stopped at the end so its last database write happens while the test database is still there."""
    if django_settings.CLASSCAST_MEDIA_NODE_EMBEDDED:
        yield None
        from classroom.media_node import node as node_module

        embedded = getattr(node_module, "_embedded", None)  # (loop, task, node) of the node the consumer started
        if embedded is not None and embedded[0] is asyncio.get_running_loop():
            embedded[2].stop()
            await _cancel(embedded[1])
        return

    from classroom.media_node.node import MediaNode

    node = MediaNode(node_id=f"test-node-{uuid.uuid4().hex[:12]}", capacity=12)
    task = asyncio.ensure_future(node.run())
    registered = database_sync_to_async(MediaNodeRow.objects.filter(node_id=node.node_id).exists)
    for _ in range(int(TIMEOUT / 0.05)):
        if await registered() or task.done():
            break
        await asyncio.sleep(0.05)
    assert not task.done(), task.exception()
    assert await registered(), "the media node did not register"
    yield node
    node.stop()
    await _cancel(task)


async def _cancel(task: asyncio.Future) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


# --- a socket -------------------------------------------------------------------------------------------------

class Socket:
    def __init__(self, comm: WebsocketCommunicator) -> None:
        self.comm = comm
        self.skipped: list[dict[str, Any]] = []
        self.welcome: dict[str, Any] = {}

    async def send(self, **data: Any) -> None:
        await self.comm.send_json_to(data)

    async def send_text(self, text: str) -> None:
        await self.comm.send_to(text_data=text)

    async def receive(self) -> dict[str, Any]:
        return await self.comm.receive_json_from(timeout=TIMEOUT)

    async def expect(self, type_: str, **match: Any) -> dict[str, Any]:
        """The next message of this type (and these top-level values), skipping broadcasts in between;
        an error event nobody waits for fails the test at once."""
        while True:
            message = await self.receive()
            if message["type"] == type_ and all(message.get(k) == v for k, v in match.items()):
                return message
            if message["type"] == "error" and type_ != "error":
                raise AssertionError(f"unexpected error while waiting for {type_}: {message}")
            self.skipped.append(message)

    async def expect_event(self, kind: str) -> dict[str, Any]:
        while True:
            message = await self.expect("event")
            if message["event"]["kind"] == kind:
                return message

    async def error(self, code: str, **match: Any) -> dict[str, Any]:
        message = await self.expect("error")
        assert message["code"] == code, message
        assert isinstance(message["message"], str) and message["message"]
        for key, value in match.items():
            assert message[key] == value, message
        return message

    async def ping(self, ref: str = "alive") -> None:
        await self.send(type="ping", id=ref)
        assert await self.expect("pong", ref=ref) == {"type": "pong", "ref": ref}

    async def close(self) -> None:
        await self.comm.disconnect(timeout=TIMEOUT)


def communicator(class_id: int, *, cookie: str | None = None, query: str = "", origin: bytes | None = ORIGIN):
    headers = [(b"host", HOST)]
    if origin is not None:
        headers.append((b"origin", origin))
    if cookie is not None:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    path = f"/ws/classes/{class_id}/" + (f"?{query}" if query else "")
    return WebsocketCommunicator(application(), path, headers=headers)


async def open_socket(cls: dict[str, Any], name: str | None, *, page: str = "class", token: str | None = None) -> Socket:
    query = f"page={page}" + (f"&token={token}" if token else "")
    comm = communicator(cls["id"], cookie=cls["cookies"][name] if name else None, query=query)
    connected, code = await comm.connect(timeout=TIMEOUT)
    assert connected, f"refused with {code}"
    socket = Socket(comm)
    socket.welcome = await socket.expect("welcome")
    return socket


async def refused_with(comm: WebsocketCommunicator) -> int | None:
    connected, code = await comm.connect(timeout=TIMEOUT)
    await comm.disconnect(timeout=TIMEOUT)
    assert not connected
    return code


async def sample(name: str, labels: dict[str, str]) -> float:
    # Read in a worker thread: a database-backed collector may be registered (it queries at collect time).
    value = await sync_to_async(REGISTRY.get_sample_value)(name, labels)
    return value or 0.0


# --- who may connect ------------------------------------------------------------------------------------------

async def test_unauthenticated_socket_is_refused(cls):
    before = await sample("classcast_sockets_refused_total", {"reason": "unauthenticated"})
    assert await refused_with(communicator(cls["id"])) == 4401
    assert await sample("classcast_sockets_refused_total", {"reason": "unauthenticated"}) == before + 1
    assert await refused_with(communicator(cls["id"], cookie="not-a-session")) == 4401
    assert not await database_sync_to_async(Presence.objects.exists)()


async def test_non_member_is_refused(cls):
    before = await sample("classcast_sockets_refused_total", {"reason": "not_member"})
    assert await refused_with(communicator(cls["id"], cookie=cls["cookies"]["eve"])) == 4403
    assert await sample("classcast_sockets_refused_total", {"reason": "not_member"}) == before + 1
    assert not await database_sync_to_async(Presence.objects.exists)()


async def test_unknown_class_is_refused_like_a_class_of_others(cls):
    # A non-member cannot tell a class id that does not exist from one they are not in.
    before = await sample("classcast_sockets_refused_total", {"reason": "not_member"})
    assert await refused_with(communicator(cls["id"] + 1000, cookie=cls["cookies"]["ada"])) == 4403
    assert await refused_with(communicator(cls["id"], cookie=cls["cookies"]["eve"])) == 4403
    assert await sample("classcast_sockets_refused_total", {"reason": "not_member"}) == before + 2
    # staff may see every class: for them a missing class is just that
    assert await refused_with(communicator(cls["id"] + 1000, cookie=cls["cookies"]["admin"])) == 4404


async def test_foreign_origin_is_refused(cls):
    comm = communicator(cls["id"], cookie=cls["cookies"]["ada"], origin=b"http://evil.example")
    connected, _ = await comm.connect(timeout=TIMEOUT)
    await comm.disconnect(timeout=TIMEOUT)
    assert not connected
    comm = communicator(cls["id"], cookie=cls["cookies"]["ada"], origin=None)
    connected, _ = await comm.connect(timeout=TIMEOUT)
    await comm.disconnect(timeout=TIMEOUT)
    assert not connected


async def test_forged_and_other_class_service_tokens_are_refused(cls):
    other = await database_sync_to_async(Classroom.objects.create)(title="Other class")
    valid = service_token_issue(classroom_id=cls["id"], purpose="egress")
    tampered = valid[:-3] + ("AAA" if not valid.endswith("AAA") else "BBB")
    for token in (
        "forged",
        "eyJjIjoxLCJwIjoiZWdyZXNzIn0:1tPZ3x:bogus-signature",
        tampered,
        service_token_issue(classroom_id=other.pk, purpose="egress"),
    ):
        before = await sample("classcast_sockets_refused_total", {"reason": "bad_token"})
        assert await refused_with(communicator(cls["id"], query=f"token={token}")) == 4401, token
        assert await sample("classcast_sockets_refused_total", {"reason": "bad_token"}) == before + 1
    # a member's cookie does not rescue a bad token
    assert await refused_with(communicator(cls["id"], cookie=cls["cookies"]["ada"], query="token=forged")) == 4401


async def test_expired_service_token_is_refused(cls, settings):
    settings.CLASSCAST_SERVICE_TOKEN_TTL_S = -1
    token = service_token_issue(classroom_id=cls["id"], purpose="egress")
    assert await refused_with(communicator(cls["id"], query=f"token={token}")) == 4401


async def test_service_token_connects_as_a_hidden_subscriber(cls):
    token = service_token_issue(classroom_id=cls["id"], purpose="egress", name="recorder-1")
    service = await open_socket(cls, None, token=token)
    try:
        welcome = service.welcome
        assert welcome["me"] == {"user_id": None, "name": "recorder-1", "role": "service", "can_manage": False}
        assert welcome["class_id"] == cls["id"]
        assert welcome["state"]["participants"] == []  # hidden
        assert "chat" not in welcome and "members" not in welcome
        row = await database_sync_to_async(Presence.objects.get)()
        assert (row.user_id, row.page, row.hidden) == (None, "service", True)

        for frame in ({"type": "hand.raise", "id": "h1"}, {"type": "session.start", "id": "s1"},
                      {"type": "chat.send", "text": "hi", "id": "c1"}):
            await service.send(**frame)
            await service.error("forbidden", ref=frame["id"])
        await service.ping()
        assert not await database_sync_to_async(LiveSession.objects.exists)()
    finally:
        await service.close()
    assert not await database_sync_to_async(Presence.objects.exists)()


# --- welcome --------------------------------------------------------------------------------------------------

async def test_student_welcome(cls):
    ben = await open_socket(cls, "ben")
    try:
        assert ben.welcome == {
            "type": "welcome",
            "class_id": cls["id"],
            "state": {
                "session": None,
                "stage": [],
                "hands": [],
                "participants": [{"user_id": cls["uid"]["ben"], "name": "Ben Okafor", "role": "student", "pages": ["class"]}],
                "broadcast": None,
                "recording": None,
            },
            "limits": {"max_message_bytes": 64 * 1024},
            "me": {"user_id": cls["uid"]["ben"], "name": "Ben Okafor", "role": "student", "can_manage": False},
            "chat": [],
        }
    finally:
        await ben.close()


async def test_instructor_welcome_has_members_and_chat_history(cls):
    ada = await open_socket(cls, "ada", page="console")
    ben = await open_socket(cls, "ben")
    try:
        assert ada.welcome["me"] == {"user_id": cls["uid"]["ada"], "name": "Ada Lovelace", "role": "instructor", "can_manage": True}
        assert [(m["name"], m["role"]) for m in ada.welcome["members"]] == [
            ("Ada Lovelace", "instructor"),
            ("Ben Okafor", "student"),
            ("Cleo Martins", "student"),
            ("Dev Sharma", "student"),
        ]
        assert ada.welcome["chat"] == []
        await ada.send(type="session.start", id="s")
        await ada.expect("ack", ref="s")
        await ben.send(type="chat.send", text="first!", id="c")
        await ben.expect("ack", ref="c")
    finally:
        await ada.close()

    cleo = await open_socket(cls, "cleo", page="watch")
    admin = await open_socket(cls, "admin", page="console")
    try:
        assert [(m["user_id"], m["text"]) for m in cleo.welcome["chat"]] == [(cls["uid"]["ben"], "first!")]
        assert cleo.welcome["state"]["session"]["status"] == "live"
        assert [p["user_id"] for p in cleo.welcome["state"]["stage"]] == [cls["uid"]["ada"]]
        assert {p["user_id"]: p["pages"] for p in cleo.welcome["state"]["participants"]} == {
            cls["uid"]["ben"]: ["class"],
            cls["uid"]["cleo"]: ["watch"],
        }
        assert admin.welcome["me"]["role"] == "staff" and admin.welcome["me"]["can_manage"] is True
        assert len(admin.welcome["members"]) == 4
    finally:
        await cleo.close()
        await admin.close()
        await ben.close()


async def test_presence_follows_sockets(cls):
    ada_id, ben_id = cls["uid"]["ada"], cls["uid"]["ben"]

    async def presence_until(socket: Socket, expected: set[int]) -> list[dict[str, Any]]:
        while True:  # the socket's own arrival is announced too; wait for the announcement we expect
            participants = (await socket.expect("presence"))["participants"]
            if {p["user_id"] for p in participants} == expected:
                return participants

    ada = await open_socket(cls, "ada", page="console")
    try:
        ben = await open_socket(cls, "ben")
        participants = await presence_until(ada, {ada_id, ben_id})
        assert {p["user_id"]: (p["role"], p["pages"]) for p in participants} == {
            ada_id: ("instructor", ["console"]),
            ben_id: ("student", ["class"]),
        }
        await ben.close()
        await presence_until(ada, {ada_id})
        assert await database_sync_to_async(Presence.objects.count)() == 1
    finally:
        await ada.close()


# --- bad frames: an error event, and the socket keeps working ---------------------------------------------------

BAD_FRAMES = [
    pytest.param("{not json", "malformed", None, id="malformed-json"),
    pytest.param("[1, 2]", "malformed", None, id="not-an-object"),
    pytest.param('{"id": "r1"}', "malformed", "r1", id="missing-type"),
    pytest.param('{"type": "teleport", "id": "r2"}', "unknown_type", "r2", id="unknown-type"),
    pytest.param('{"type": "chat.send", "id": "r3"}', "invalid_field", "r3", id="missing-field"),
    pytest.param('{"type": "ping", "id": "r4", "x": 1}', "invalid_field", "r4", id="unexpected-field"),
    pytest.param('{"type": "stage.invite", "user_id": "7", "id": "r5"}', "invalid_field", "r5", id="wrong-type"),
    pytest.param(json.dumps({"type": "chat.send", "text": "x" * 70 * 1024}), "too_large", None, id="oversized-70KiB"),
]


@pytest.mark.parametrize("frame, code, ref", BAD_FRAMES)
async def test_bad_frame_gets_an_error_and_the_socket_survives(cls, frame, code, ref):
    ben = await open_socket(cls, "ben")
    try:
        before = await sample("classcast_signaling_errors_total", {"code": code})
        await ben.send_text(frame)
        error = await ben.error(code)
        assert error["ref"] == ref
        assert await sample("classcast_signaling_errors_total", {"code": code}) == before + 1
        await ben.ping()
    finally:
        await ben.close()


async def test_binary_frame_gets_an_error_and_the_socket_survives(cls):
    ben = await open_socket(cls, "ben")
    try:
        await ben.comm.send_to(bytes_data=b'{"type": "ping"}')
        await ben.error("malformed")
        await ben.ping()
    finally:
        await ben.close()


async def test_deeply_nested_json_gets_an_error_and_the_socket_survives(cls):
    ben = await open_socket(cls, "ben")
    try:
        await ben.send_text('{"type": "ping", "x": ' + "[" * 20_000 + "]" * 20_000 + "}")
        await ben.error("malformed")
        await ben.ping()
    finally:
        await ben.close()


# --- roles acting above themselves --------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "frame",
    [
        {"type": "session.start"},
        {"type": "stage.invite", "user_id": "cleo"},
        {"type": "stage.remove", "user_id": "ada"},
    ],
    ids=lambda f: f["type"],
)
async def test_student_is_denied_instructor_actions(cls, frame):
    frame = {**frame, "id": "deny-1"}
    if "user_id" in frame:
        frame["user_id"] = cls["uid"][frame["user_id"]]
    ben = await open_socket(cls, "ben")
    try:
        labels = {"action": frame["type"]}
        before = await sample("classcast_actions_denied_total", labels)
        await ben.send(**frame)
        await ben.error("forbidden", ref="deny-1")
        assert await sample("classcast_actions_denied_total", labels) == before + 1
        await ben.ping()
    finally:
        await ben.close()
    assert not await database_sync_to_async(LiveSession.objects.exists)()
    assert not await database_sync_to_async(StageMembership.objects.exists)()


async def test_denied_actions_during_a_live_session(cls):
    ada = await open_socket(cls, "ada", page="console")
    ben = await open_socket(cls, "ben")
    try:
        await ada.send(type="session.start", id="s")
        await ada.expect("ack", ref="s")
        for frame in (
            {"type": "session.end"},
            {"type": "stage.invite", "user_id": cls["uid"]["ben"]},
            {"type": "hand.lower", "user_id": cls["uid"]["cleo"]},
            {"type": "stage.mute", "kind": "audio", "muted": True, "user_id": cls["uid"]["ada"]},
            {"type": "recording.start"},
            {"type": "recording.stop"},
        ):
            before = await sample("classcast_actions_denied_total", {"action": frame["type"]})
            await ben.send(**frame, id="d")
            await ben.error("forbidden", ref="d")
            assert await sample("classcast_actions_denied_total", {"action": frame["type"]}) == before + 1
        # the instructor is not a student: raising a hand is refused too
        await ada.send(type="hand.raise", id="h")
        await ada.error("forbidden", ref="h")
        # a refusal that is not about permission is not counted as denied
        before = await sample("classcast_actions_denied_total", {"action": "stage.accept"})
        await ben.send(type="stage.accept", id="a")
        await ben.error("invalid_state", ref="a")
        assert await sample("classcast_actions_denied_total", {"action": "stage.accept"}) == before
        session = await database_sync_to_async(LiveSession.objects.get)()
        assert session.status == SessionStatus.LIVE
    finally:
        await ada.close()
        await ben.close()


# --- broadcasts ---------------------------------------------------------------------------------------------------

async def test_session_start_is_acked_and_broadcast(cls):
    ada = await open_socket(cls, "ada", page="console")
    ben = await open_socket(cls, "ben")
    try:
        await ada.send(type="session.start", id="start-1")
        assert await ada.expect("ack") == {"type": "ack", "ref": "start-1", "for": "session.start"}

        event = await ben.expect_event("session.started")
        assert event["event"]["actor_id"] == cls["uid"]["ada"]
        session = await database_sync_to_async(LiveSession.objects.get)()
        assert event["state"]["session"] == {
            "id": session.pk,
            "status": "live",
            "started_at": session.started_at.isoformat(),
        }
        assert [(p["user_id"], p["state"]) for p in event["state"]["stage"]] == [(cls["uid"]["ada"], "on_stage")]
        assert (await ada.expect_event("session.started"))["state"] == event["state"]

        await ada.send(type="session.start", id="start-2")
        await ada.error("invalid_state", ref="start-2")
    finally:
        await ada.close()
        await ben.close()


async def test_hand_raise_and_stage_through_the_socket(cls):
    ada = await open_socket(cls, "ada", page="console")
    ben = await open_socket(cls, "ben")
    try:
        await ada.send(type="session.start", id="s")
        await ada.expect("ack", ref="s")
        await ben.send(type="hand.raise", id="h")
        await ben.expect("ack", ref="h")
        event = await ada.expect_event("hand.raised")
        assert [h["user_id"] for h in event["state"]["hands"]] == [cls["uid"]["ben"]]

        await ada.send(type="stage.invite", user_id=cls["uid"]["ben"], id="i")
        await ada.expect("ack", ref="i", **{"for": "stage.invite"})
        event = await ben.expect_event("stage.invited")
        assert event["event"]["subject_id"] == cls["uid"]["ben"]
        await ben.send(type="stage.accept", id="a")
        await ben.expect("ack", ref="a")
        event = await ada.expect_event("stage.joined")
        assert event["state"]["hands"] == []
        assert {p["user_id"]: p["state"] for p in event["state"]["stage"]} == {
            cls["uid"]["ada"]: "on_stage",
            cls["uid"]["ben"]: "on_stage",
        }
        await ben.send(type="stage.mute", kind="audio", muted=True, id="m")
        await ben.expect("ack", ref="m")
        event = await ada.expect_event("stage.muted")
        assert event["event"]["data"] == {"kind": "audio", "muted": True}
    finally:
        await ada.close()
        await ben.close()


async def test_chat_reaches_the_other_sockets(cls):
    ada = await open_socket(cls, "ada", page="console")
    ben = await open_socket(cls, "ben")
    try:
        await ben.send(type="chat.send", text="anyone?", id="c0")
        await ben.error("invalid_state", ref="c0")  # not live yet
        await ada.send(type="session.start", id="s")
        await ada.expect("ack", ref="s")

        await ben.send(type="chat.send", text="  Hello, Ada  ", id="c1")
        await ben.expect("ack", ref="c1")
        chat = await ada.expect("chat")
        assert chat["message"]["user_id"] == cls["uid"]["ben"]
        assert chat["message"]["name"] == "Ben Okafor"
        assert chat["message"]["text"] == "Hello, Ada"
        assert (await ben.expect("chat"))["message"] == chat["message"]

        await ben.send(type="chat.send", text="x" * 1001, id="c2")
        await ben.error("invalid_field", ref="c2")
    finally:
        await ada.close()
        await ben.close()


# --- rate limiting --------------------------------------------------------------------------------------------------

async def test_flood_is_rate_limited_and_the_socket_survives(cls, settings):
    settings.CLASSCAST_WS_RATE_PER_S = 5  # a burst of 10, then 5 a second
    ben = await open_socket(cls, "ben")
    try:
        count = 60
        for i in range(count):
            await ben.send(type="ping", id=str(i))
        replies = []
        while len(replies) < count:
            message = await ben.receive()
            if message["type"] in ("pong", "error"):
                replies.append(message)
        pongs = [m for m in replies if m["type"] == "pong"]
        limited = [m for m in replies if m["type"] == "error"]
        assert all(m["code"] == "rate_limited" for m in limited), limited
        assert len(pongs) >= 10  # the burst always goes through
        assert limited, "a flood of 60 frames was not limited"
        # after a pause the socket answers again
        for attempt in range(40):
            await asyncio.sleep(0.5)
            await ben.send(type="ping", id=f"after-{attempt}")
            message = await ben.receive()
            while message["type"] not in ("pong", "error"):
                message = await ben.receive()
            if message["type"] == "pong":
                assert message["ref"] == f"after-{attempt}"
                break
            assert message["code"] == "rate_limited", message
        else:
            raise AssertionError("the socket stayed rate limited")
    finally:
        await ben.close()


# --- media: rtc.join, offers and answers -------------------------------------------------------------------------------

def sdp_media_kinds(sdp: str) -> list[str]:
    return [line[2:].split(" ")[0] for line in sdp.replace("\r\n", "\n").split("\n") if line.startswith("m=")]


async def test_rtc_join_gets_an_offer_and_a_bad_answer_is_refused(cls):
    ada = await open_socket(cls, "ada", page="console")
    ben = await open_socket(cls, "ben")
    try:
        await ada.send(type="rtc.join", id="j0")
        await ada.error("invalid_state", ref="j0")  # nothing is live
        await ada.send(type="session.start", id="s")
        await ada.expect("ack", ref="s")

        await ada.send(type="rtc.join", id="j1")
        config = await ada.expect("rtc.config")
        assert config == {"type": "rtc.config", "ice_servers": []}
        offer = await ada.expect("rtc.offer")
        assert offer["pc"] == "publish"
        assert offer["sdp"].startswith("v=0")
        kinds = sdp_media_kinds(offer["sdp"])
        assert "audio" in kinds and "video" in kinds
        assert offer["tracks"] == {}
        # One video m-line per stage layer, each named with how the page should encode it.
        assert kinds.count("video") == len(offer["layers"]) == len(django_settings.CLASSCAST_STAGE_LAYERS.split(","))
        assert {layer["layer"] for layer in offer["layers"].values()} == {
            entry.split(":")[0].strip() for entry in django_settings.CLASSCAST_STAGE_LAYERS.split(",")
        }
        session = await database_sync_to_async(LiveSession.objects.get)()
        assert session.media_node  # the class is pinned to a node

        # syntactically plausible, but not an answer to this offer
        before = await sample("classcast_signaling_errors_total", {"code": "invalid_sdp"})
        await ada.send(type="rtc.answer", pc="publish", sdp=BAD_SDP, id="a1")
        await ada.error("invalid_sdp")
        assert await sample("classcast_signaling_errors_total", {"code": "invalid_sdp"}) == before + 1
        await ada.ping()

        # another socket that never joined cannot answer
        await ben.send(type="rtc.answer", pc="publish", sdp=BAD_SDP, id="a2")
        await ben.error("invalid_state", ref="a2")
        await ben.send(type="rtc.candidate", pc="publish", candidate="candidate:1 1 udp 1 127.0.0.1 9 typ host", id="a3")
        await ben.error("invalid_state", ref="a3")
        await ben.ping()
    finally:
        await ada.close()
        await ben.close()


async def test_rtc_answer_before_join_is_invalid_state(cls):
    ada = await open_socket(cls, "ada", page="console")
    try:
        await ada.send(type="rtc.answer", pc="publish", sdp=BAD_SDP, id="early-0")
        await ada.error("invalid_state", ref="early-0")
        await ada.send(type="session.start", id="s")
        await ada.expect("ack", ref="s")
        await ada.send(type="rtc.answer", pc="publish", sdp=BAD_SDP, id="early")
        await ada.error("invalid_state", ref="early")
        await ada.ping()
    finally:
        await ada.close()


async def test_student_off_stage_cannot_join_media(cls):
    ada = await open_socket(cls, "ada", page="console")
    ben = await open_socket(cls, "ben")
    try:
        await ada.send(type="session.start", id="s")
        await ada.expect("ack", ref="s")
        before = await sample("classcast_actions_denied_total", {"action": "rtc.join"})
        await ben.send(type="rtc.join", id="j")
        await ben.error("forbidden", ref="j")
        assert await sample("classcast_actions_denied_total", {"action": "rtc.join"}) == before + 1
        # invited is not yet on stage
        await ada.send(type="stage.invite", user_id=cls["uid"]["ben"], id="i")
        await ada.expect("ack", ref="i")
        await ben.send(type="rtc.join", id="j2")
        await ben.error("forbidden", ref="j2")
        await ben.ping()
    finally:
        await ada.close()
        await ben.close()


async def test_student_on_stage_joins_media_and_is_removed(cls):
    ada = await open_socket(cls, "ada", page="console")
    ben = await open_socket(cls, "ben")
    try:
        await ada.send(type="session.start", id="s")
        await ada.expect("ack", ref="s")
        await ada.send(type="stage.invite", user_id=cls["uid"]["ben"], id="i")
        await ada.expect("ack", ref="i")
        await ben.send(type="stage.accept", id="a")
        await ben.expect("ack", ref="a")

        await ben.send(type="rtc.join", id="j")
        await ben.expect("rtc.config")
        offer = await ben.expect("rtc.offer")
        assert offer["pc"] == "publish"
        assert {"audio", "video"} <= set(sdp_media_kinds(offer["sdp"]))

        await ada.send(type="stage.remove", user_id=cls["uid"]["ben"], id="r")
        await ada.expect("ack", ref="r")
        closed = await ben.expect("rtc.closed")
        assert closed == {"type": "rtc.closed", "reason": "removed"}
        # with the peer connection gone, an answer has nowhere to go
        await ben.send(type="rtc.answer", pc="publish", sdp=BAD_SDP, id="late")
        await ben.error("invalid_state", ref="late")
        await ben.send(type="rtc.join", id="j2")
        await ben.error("forbidden", ref="j2")
        await ben.ping()
    finally:
        await ada.close()
        await ben.close()


async def test_service_token_may_use_media_messages(cls):
    ada = await open_socket(cls, "ada", page="console")
    service = await open_socket(cls, None, token=service_token_issue(classroom_id=cls["id"], purpose="egress"))
    try:
        await service.send(type="rtc.answer", pc="subscribe", sdp=BAD_SDP, id="x")
        await service.error("invalid_state", ref="x")  # allowed to ask, but nothing joined yet
        await service.send(type="rtc.join", id="j0")
        await service.error("invalid_state", ref="j0")  # nothing is live
        await ada.send(type="session.start", id="s")
        await ada.expect("ack", ref="s")

        await service.send(type="rtc.join", max_height=180, id="j1")  # e.g. a compositor's tile
        await service.expect("rtc.config")
        offer = await service.expect("rtc.offer")
        assert offer["pc"] == "subscribe"  # a subscriber never publishes
        await service.send(type="stats.report", join_ms=120, tracks=[], id="st")
        await service.send(type="rtc.leave", id="l")
        await service.ping()
    finally:
        await ada.close()
        await service.close()


async def test_ending_the_session_closes_media_connections(cls):
    ada = await open_socket(cls, "ada", page="console")
    ben = await open_socket(cls, "ben")
    try:
        await ada.send(type="session.start", id="s")
        await ada.expect("ack", ref="s")
        await ada.send(type="rtc.join", id="j")
        await ada.expect("rtc.offer")

        await ada.send(type="session.end", id="e")
        await ada.expect("ack", ref="e")
        assert await ada.expect("rtc.closed") == {"type": "rtc.closed", "reason": "session_ended"}
        event = await ben.expect_event("session.ended")
        assert event["state"]["session"] is None
        await ada.send(type="rtc.answer", pc="publish", sdp=BAD_SDP, id="late")
        await ada.error("invalid_state", ref="late")

        # a new session: the instructor joins again from the same socket
        await ada.send(type="session.start", id="s2")
        await ada.expect("ack", ref="s2")
        await ada.send(type="rtc.join", id="j2")
        offer = await ada.expect("rtc.offer")
        assert offer["pc"] == "publish"
    finally:
        await ada.close()
        await ben.close()


async def test_leaving_the_stage_closes_the_media_connection(cls):
    ada = await open_socket(cls, "ada", page="console")
    ben = await open_socket(cls, "ben")
    try:
        await ada.send(type="session.start", id="s")
        await ada.expect("ack", ref="s")
        await ada.send(type="stage.invite", user_id=cls["uid"]["ben"], id="i")
        await ada.expect("ack", ref="i")
        await ben.send(type="stage.accept", id="a")
        await ben.expect("ack", ref="a")
        await ben.send(type="rtc.join", id="j")
        await ben.expect("rtc.offer")

        await ben.send(type="stage.leave", id="l")
        await ben.expect("ack", ref="l")
        assert await ben.expect("rtc.closed") == {"type": "rtc.closed", "reason": "left"}
        await ben.ping()
    finally:
        await ada.close()
        await ben.close()


async def test_a_second_tab_takes_over_publishing(cls):
    ada = await open_socket(cls, "ada", page="console")
    try:
        await ada.send(type="session.start", id="s")
        await ada.expect("ack", ref="s")
        await ada.send(type="rtc.join", id="j")
        await ada.expect("rtc.offer")

        second = await open_socket(cls, "ada", page="console")
        try:
            await second.send(type="rtc.join", id="j2")
            offer = await second.expect("rtc.offer")
            assert offer["pc"] == "publish"
            assert await ada.expect("rtc.closed") == {"type": "rtc.closed", "reason": "replaced"}
            await ada.ping()
        finally:
            await second.close()
    finally:
        await ada.close()


async def test_stats_report_is_observed_once_per_media_connection_for_join_time(cls):
    labels = {"source": "browser"}
    ada = await open_socket(cls, "ada", page="console")
    try:
        await ada.send(type="session.start", id="s")
        await ada.expect("ack", ref="s")
        await ada.send(type="rtc.join", id="j")
        await ada.expect("rtc.offer")
        before = await sample("classcast_join_seconds_count", labels)
        report = {"type": "stats.report", "join_ms": 850, "rtt_ms": 20,
                  "tracks": [{"kind": "video", "direction": "inbound", "bitrate_bps": 500_000, "jitter_ms": 4,
                              "packet_loss": 0.01, "fps": 20}]}
        await ada.send(**report, id="r1")
        await ada.send(**report, id="r2")
        await ada.ping()  # both reports were handled before the pong
        assert await sample("classcast_join_seconds_count", labels) == before + 1
        bad = {**report, "tracks": [{"kind": "video", "direction": "sideways"}]}
        await ada.send(**bad, id="r3")
        await ada.error("invalid_field", ref="r3")
        # a new media connection measures its own join
        await ada.send(type="rtc.join", id="j2")
        await ada.expect("rtc.offer")
        await ada.send(type="stats.report", join_ms=900, id="r4")
        await ada.ping()
        assert await sample("classcast_join_seconds_count", labels) == before + 2
    finally:
        await ada.close()
