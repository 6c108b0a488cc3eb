"""The class socket `/ws/classes/<id>/`: a thin adapter between browsers, services and the media node.

Every frame is validated by `message_parse`; state changes go through services; SDP and ICE go to the
session's media node over the channel layer and its offers come back here. Refusals are error
events (`{"type": "error", "code", "message", "ref"}`) and the socket stays usable.

Access is re-read from the database when the person's membership or account changes (the
`classroom.access` event of services/membership.py), before every action, and every
CLASSCAST_WS_ACCESS_RECHECK_S: someone who may no longer see the class is told so in words, leaves
the media connection and is closed with 4403; a changed role gets a fresh welcome. A non-member is
refused with 4403 whether or not the class exists. A person's sockets in this process share one
message budget and are capped per class (signaling/ratelimit.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Callable
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
import json

from .. import metrics
from ..errors import ClassroomError, InvalidState, NotAllowed
from ..models import Classroom
from ..notify import class_group, user_group
from ..permissions import Actor, can_manage_session, can_view_class
from ..selectors import actor_current, actor_get, chat_history, class_members, class_state, display_name
from ..selectors import session_live_get, stage_member_muted
from ..services import broadcast, chat, hands, recordings, sessions, stage
from ..services.ice import ice_servers_for
from ..services.media import media_node_for_session
from ..services.presence import presence_enter, presence_leave
from ..services.tokens import ServiceIdentity, service_token_verify
from .messages import Message, MessageError, message_parse
from .ratelimit import SocketBudgets, TokenBucket

log = logging.getLogger("classcast.signaling")

PAGES = ("console", "class", "watch")
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403  # not a member, or no such class (a non-member cannot tell the two apart)
CLOSE_NOT_FOUND = 4404  # no such class, told only to staff (who may see every class) and service tokens
CLOSE_TOO_MANY_SOCKETS = 4429
NO_LONGER_MEMBER = "You are no longer a member of this class."
# stats.report: the browser reports every 2 s; more often is dropped quietly (no error to show).
STATS_REPORT_EVERY_S = 2.0
STATS_REPORT_BURST = 2

# Every person's sockets in this process: one shared message budget, a cap per class.
BUDGETS = SocketBudgets()

# message type -> service call; each takes (classroom_id, actor, fields)
ACTIONS: dict[str, Callable[[int, Actor, dict[str, Any]], Any]] = {
    "session.start": lambda c, a, f: sessions.session_start(classroom_id=c, actor=a),
    "session.end": lambda c, a, f: sessions.session_end(classroom_id=c, actor=a),
    "hand.raise": lambda c, a, f: hands.hand_raise(classroom_id=c, actor=a),
    "hand.lower": lambda c, a, f: hands.hand_lower(classroom_id=c, actor=a, user_id=f.get("user_id")),
    "stage.invite": lambda c, a, f: stage.stage_invite(classroom_id=c, actor=a, user_id=f["user_id"]),
    "stage.remove": lambda c, a, f: stage.stage_remove(classroom_id=c, actor=a, user_id=f["user_id"]),
    "stage.accept": lambda c, a, f: stage.stage_accept(classroom_id=c, actor=a),
    "stage.decline": lambda c, a, f: stage.stage_decline(classroom_id=c, actor=a),
    "stage.leave": lambda c, a, f: stage.stage_leave(classroom_id=c, actor=a),
    "stage.mute": lambda c, a, f: stage.stage_mute(
        classroom_id=c, actor=a, kind=f["kind"], muted=f["muted"], user_id=f.get("user_id")
    ),
    "chat.send": lambda c, a, f: chat.chat_post(classroom_id=c, actor=a, text=f["text"]),
    "broadcast.start": lambda c, a, f: broadcast.broadcast_start(classroom_id=c, actor=a),
    "broadcast.stop": lambda c, a, f: broadcast.broadcast_stop(classroom_id=c, actor=a),
    "broadcast.layout": lambda c, a, f: broadcast.broadcast_layout_set(
        classroom_id=c, actor=a, layout=f["layout"], focus_user_id=f.get("user_id")
    ),
    "destination.add": lambda c, a, f: broadcast.destination_add(classroom_id=c, actor=a, name=f["name"], url=f["url"]),
    "destination.remove": lambda c, a, f: broadcast.destination_remove(
        classroom_id=c, actor=a, destination_id=f["destination_id"]
    ),
    "stream_key.rotate": lambda c, a, f: broadcast.stream_key_rotate(classroom_id=c, actor=a),
    "recording.start": lambda c, a, f: recordings.recording_start(classroom_id=c, actor=a),
    "recording.stop": lambda c, a, f: recordings.recording_stop(classroom_id=c, actor=a),
}
def _message_bucket() -> TokenBucket:
    return TokenBucket(rate_per_s=settings.CLASSCAST_WS_RATE_PER_S, burst=settings.CLASSCAST_WS_RATE_PER_S * 2)


NETWORK_BOUND = frozenset({"destination.add"})
SERVICE_ALLOWED = {"rtc.join", "rtc.answer", "rtc.candidate", "rtc.leave", "ping", "stats.report"}


class ClassConsumer(AsyncWebsocketConsumer):
    classroom_id: int
    actor: Actor | None = None
    service: ServiceIdentity | None = None
    media: tuple[str, int] | None = None  # (media node channel, session id) while a peer connection exists
    joined: bool = False  # in the class's groups and presence
    revoked: bool = False  # told it may no longer see the class; closing
    budget_user: int | None = None  # holds a slot in BUDGETS
    access_task: asyncio.Task[None] | None = None

    # --- connection --------------------------------------------------------------------------------

    async def connect(self) -> None:
        self.classroom_id = int(self.scope["url_route"]["kwargs"]["classroom_id"])
        query = parse_qs(self.scope.get("query_string", b"").decode())
        self.page = query.get("page", ["class"])[0]
        if self.page not in PAGES:
            self.page = "class"
        self.stats_bucket = TokenBucket(rate_per_s=1 / STATS_REPORT_EVERY_S, burst=STATS_REPORT_BURST)
        self.join_reported = False  # join_ms counts once per media connection
        token = query.get("token", [""])[0]
        user = self.scope.get("user")
        class_exists = database_sync_to_async(Classroom.objects.filter(pk=self.classroom_id).exists)
        if not token and (user is None or not user.is_authenticated):
            # Before the class lookup, so anonymous sockets cannot probe which class ids exist.
            return await self._refuse(CLOSE_UNAUTHENTICATED, "unauthenticated")
        if token:
            try:
                self.service = service_token_verify(token=token, classroom_id=self.classroom_id)
            except NotAllowed as exc:
                log.warning("service token refused: %s", exc, extra={"class_id": self.classroom_id})
                return await self._refuse(CLOSE_UNAUTHENTICATED, "bad_token")
            if not await class_exists():
                return await self._refuse(CLOSE_NOT_FOUND, "no_class")
            self.page = "service"
            # A service socket keeps a budget of its own: it is no person's.
            self.bucket = _message_bucket()
        else:
            self.actor = await database_sync_to_async(actor_get)(user=user, classroom_id=self.classroom_id)
            if not can_view_class(self.actor):
                # The same answer whether the class exists or not: ids tell a non-member nothing.
                log.warning("non-member refused", extra={"class_id": self.classroom_id, "user_id": user.pk})
                return await self._refuse(CLOSE_FORBIDDEN, "not_member")
            if not await class_exists():  # only staff get here for a class that does not exist
                return await self._refuse(CLOSE_NOT_FOUND, "no_class")
            bucket = BUDGETS.open(
                user=user.pk,
                classroom=self.classroom_id,
                max_sockets=settings.CLASSCAST_WS_MAX_SOCKETS_PER_USER,
                bucket=_message_bucket,
            )
            if bucket is None:
                return await self._refuse_too_many()
            self.bucket, self.budget_user = bucket, user.pk
        if settings.CLASSCAST_MEDIA_NODE_EMBEDDED:
            from ..media_node.node import media_node_ensure_started

            await media_node_ensure_started()
        await self.channel_layer.group_add(class_group(self.classroom_id), self.channel_name)
        if self.actor is not None:
            await self.channel_layer.group_add(user_group(self.actor.user_id), self.channel_name)
        await self.accept()
        self.joined = True
        await database_sync_to_async(presence_enter)(
            classroom_id=self.classroom_id,
            user_id=self.actor.user_id if self.actor else None,
            channel_name=self.channel_name,
            page=self.page,
            hidden=self.service is not None,
        )
        await self._send(await database_sync_to_async(self._welcome)())
        if self.actor is not None and settings.CLASSCAST_WS_ACCESS_RECHECK_S > 0:
            self.access_task = asyncio.ensure_future(self._access_watch())

    async def _refuse(self, code: int, reason: str) -> None:
        metrics.SOCKETS_REFUSED.labels(reason=reason).inc()
        await self.close(code=code)

    async def _refuse_too_many(self) -> None:
        # Accepted first: a close before the handshake reaches a browser as a bare failure, not as words.
        limit = settings.CLASSCAST_WS_MAX_SOCKETS_PER_USER
        metrics.SOCKETS_REFUSED.labels(reason="too_many_sockets").inc()
        await self.accept()
        await self._error(
            "too_many_sockets",
            f"This class is already open in {limit} tabs or windows of yours; close one and reload this page.",
        )
        await self.close(code=CLOSE_TOO_MANY_SOCKETS, reason="too many sockets")

    def _welcome(self) -> dict[str, Any]:
        state = class_state(classroom_id=self.classroom_id)
        user = self.scope.get("user")
        welcome: dict[str, Any] = {
            "type": "welcome",
            "class_id": self.classroom_id,
            "state": state,
            "limits": {"max_message_bytes": settings.CLASSCAST_WS_MAX_MESSAGE_BYTES},
        }
        if self.actor is not None:
            welcome["me"] = {
                "user_id": self.actor.user_id,
                "name": display_name(user),
                "role": self.actor.role or "staff",
                "can_manage": can_manage_session(self.actor),
            }
            welcome["chat"] = chat_history(session_id=state["session"]["id"]) if state["session"] else []
            if can_manage_session(self.actor):
                welcome["members"] = class_members(classroom_id=self.classroom_id)
        else:
            welcome["me"] = {"user_id": None, "name": self.service.name, "role": "service", "can_manage": False}
        return welcome

    async def disconnect(self, code: int) -> None:
        if self.access_task is not None:
            self.access_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.access_task
            self.access_task = None
        if self.budget_user is not None:
            BUDGETS.close(user=self.budget_user, classroom=self.classroom_id)
            self.budget_user = None
        await self._leave_class("socket_closed")

    async def _leave_class(self, reason: str) -> None:
        """Out of the media connection, the class's groups and its presence (once)."""
        if not self.joined:
            return
        self.joined = False
        await self._media_leave(reason)
        await self.channel_layer.group_discard(class_group(self.classroom_id), self.channel_name)
        if self.actor is not None:
            await self.channel_layer.group_discard(user_group(self.actor.user_id), self.channel_name)
        await database_sync_to_async(presence_leave)(channel_name=self.channel_name)

    # --- access: re-read, and revoked -----------------------------------------------------------------

    async def _access_recheck(self) -> bool:
        """Re-read who this person is in the class; False (and the socket closing) when they may no
        longer see it. A changed role or staff flag takes effect at once, with a fresh welcome."""
        if self.revoked:
            return False
        actor = await database_sync_to_async(actor_current)(user_id=self.actor.user_id, classroom_id=self.classroom_id)
        if actor is None or not can_view_class(actor):
            await self._revoke()
            return False
        if actor != self.actor:
            log.info("role changed", extra={"class_id": self.classroom_id, "user_id": actor.user_id})
            self.actor = actor
            await self._send(await database_sync_to_async(self._welcome)())
        return True

    async def _revoke(self) -> None:
        if self.revoked:
            return
        self.revoked = True  # from here on nothing of the class reaches this socket
        log.warning(
            "access revoked on an open socket", extra={"class_id": self.classroom_id, "user_id": self.actor.user_id}
        )
        metrics.SIGNALING_ERRORS.labels(code="not_member").inc()
        error = {"type": "error", "code": "not_member", "message": NO_LONGER_MEMBER, "ref": None}
        await self.send(text_data=json.dumps(error))
        await self._leave_class("not_member")
        await self.close(code=CLOSE_FORBIDDEN, reason="no longer a member")

    async def _access_watch(self) -> None:
        """The backstop for changes that send no signal (QuerySet.update, raw SQL, another process
        on the in-memory channel layer)."""
        while not self.revoked:
            await asyncio.sleep(settings.CLASSCAST_WS_ACCESS_RECHECK_S)
            try:
                await self._access_recheck()
            except Exception:
                log.exception("access re-check failed", extra={"class_id": self.classroom_id})

    async def classroom_access(self, event: dict[str, Any]) -> None:
        """services/membership.py: this person's membership or account changed."""
        if self.actor is None or not self.joined or event.get("classroom_id") not in (None, self.classroom_id):
            return
        await self._access_recheck()

    # --- inbound frames ----------------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.revoked:
            return
        if text_data is None:
            return await self._error("malformed", "binary frames are not accepted")
        if not self.bucket.take():
            return await self._error("rate_limited", "too many messages; slow down")
        try:
            message = message_parse(text_data, max_bytes=settings.CLASSCAST_WS_MAX_MESSAGE_BYTES)
        except MessageError as exc:
            return await self._error(exc.code, exc.detail, exc.ref)
        metrics.SIGNALING_MESSAGES.labels(type=message.type).inc()
        if self.service is not None and message.type not in SERVICE_ALLOWED:
            return await self._error("forbidden", "a service participant only subscribes to media", message.ref)
        try:
            if self.actor is not None and (message.type in ACTIONS or message.type == "rtc.join"):
                # Re-read the role: someone removed from the class loses its rights at once.
                if not await self._access_recheck():
                    return
            await self._handle(message)
        except NotAllowed as exc:
            metrics.ACTIONS_DENIED.labels(action=message.type).inc()
            log.warning(
                "action denied: %s",
                message.type,
                extra={"class_id": self.classroom_id, "user_id": self.actor.user_id if self.actor else None},
            )
            await self._error(exc.code, exc.message, message.ref)
        except ClassroomError as exc:
            await self._error(exc.code, exc.message, message.ref)
        except Exception:
            # Our fault, not the sender's: say so, keep the socket (and its presence) alive.
            log.exception("signaling message failed: %s", message.type, extra={"class_id": self.classroom_id})
            await self._error("internal", "something went wrong on our side; try again", message.ref)

    async def _handle(self, message: Message) -> None:
        action = ACTIONS.get(message.type)
        if action is not None:
            # An action that may wait on the network (destination.add resolves a host name) gets a thread
            # of its own: the shared one serves every socket's database calls in this process.
            await database_sync_to_async(action, thread_sensitive=message.type not in NETWORK_BOUND)(
                self.classroom_id, self.actor, message.fields
            )
            await self._send({"type": "ack", "ref": message.ref, "for": message.type})
        elif message.type == "rtc.join":
            await self._media_join(max_height=message.fields.get("max_height"))
        elif message.type == "rtc.answer":
            await self._media_forward("media.answer", **message.fields)
        elif message.type == "rtc.candidate":
            await self._media_forward("media.candidate", **message.fields)
        elif message.type == "rtc.leave":
            await self._media_leave("left")
        elif message.type == "stats.report":
            self._stats_observe(message.fields)
        elif message.type == "ping":
            await self._send({"type": "pong", "ref": message.ref})

    # --- media -------------------------------------------------------------------------------------

    async def _media_join(self, *, max_height: int | None = None) -> None:
        session = await database_sync_to_async(session_live_get)(classroom_id=self.classroom_id)
        if session is None:
            raise InvalidState("the class is not live")
        publish, muted = False, []
        if self.actor is not None:
            muted = await database_sync_to_async(stage_member_muted)(session_id=session.pk, user_id=self.actor.user_id)
            if muted is None:
                raise NotAllowed("only people on stage join the call; watchers see the broadcast")
            publish = True
        channel = await database_sync_to_async(media_node_for_session)(session_id=session.pk)
        if self.media is not None and self.media[1] != session.pk:
            await self._media_leave("new_session")
        self.media = (channel, session.pk)
        self.join_reported = False
        user = self.scope.get("user")
        who = f"user-{self.actor.user_id}" if self.actor else f"service-{self.service.name}"
        await self._send({"type": "rtc.config", "ice_servers": await database_sync_to_async(ice_servers_for)(user=who)})
        await self.channel_layer.send(
            channel,
            {
                "type": "media.join",
                "session_id": session.pk,
                "peer_id": self.channel_name,
                "user_id": self.actor.user_id if self.actor else None,
                "name": display_name(user) if self.actor else self.service.name,
                "role": (self.actor.role or "staff") if self.actor else "service",
                "publish": publish,
                "hidden": self.service is not None,
                "muted": muted,
                # Only egress picks its layer; a member's own link decides theirs.
                "max_height": max_height if self.service is not None else None,
            },
        )
        log.info("media join", extra={"class_id": self.classroom_id, "session_id": session.pk})

    async def _media_forward(self, kind: str, **fields: Any) -> None:
        if self.media is None:
            raise InvalidState("there is no media connection for this socket; send rtc.join first")
        channel, session_id = self.media
        await self.channel_layer.send(
            channel, {"type": kind, "session_id": session_id, "peer_id": self.channel_name, **fields}
        )

    async def _media_leave(self, reason: str) -> None:
        if self.media is None:
            return
        channel, session_id = self.media
        self.media = None
        await self.channel_layer.send(
            channel, {"type": "media.leave", "session_id": session_id, "peer_id": self.channel_name, "reason": reason}
        )

    def _stats_observe(self, fields: dict[str, Any]) -> None:
        """A browser's own measurements into /metrics: only from a socket with a media connection, at
        most one report per STATS_REPORT_EVERY_S (extra ones are dropped without an error), the join
        time once per media connection; the message type bounds every number (messages.py)."""
        if self.media is None:
            return  # nothing of ours to measure: a report now is made up (or late), not counted
        first_join = "join_ms" in fields and not self.join_reported
        if not first_join and not self.stats_bucket.take():
            return
        if first_join:
            self.join_reported = True
            metrics.JOIN_SECONDS.labels(source="browser").observe(fields["join_ms"] / 1000)
        if "rtt_ms" in fields:
            metrics.RTT_SECONDS.labels(source="browser").observe(fields["rtt_ms"] / 1000)
        for track in fields.get("tracks", []):
            kind, direction = track["kind"], track["direction"]
            if "bitrate_bps" in track:
                metrics.BITRATE_BPS.labels(source="browser", direction=direction, kind=kind).observe(track["bitrate_bps"])
            if direction == "inbound":
                if "jitter_ms" in track:
                    metrics.JITTER_SECONDS.labels(source="browser", kind=kind).observe(track["jitter_ms"] / 1000)
                if "packet_loss" in track:
                    metrics.PACKET_LOSS.labels(source="browser", kind=kind).observe(track["packet_loss"])

    # --- channel layer events (group `class.<id>` and the media node) ----------------------------------

    async def classroom_event(self, event: dict[str, Any]) -> None:
        await self._send({"type": "event", "event": event["event"], "state": event.get("state")})

    async def classroom_chat(self, event: dict[str, Any]) -> None:
        await self._send({"type": "chat", "message": event["message"]})

    async def classroom_presence(self, event: dict[str, Any]) -> None:
        await self._send({"type": "presence", "participants": event["participants"]})

    async def media_offer(self, event: dict[str, Any]) -> None:
        offer = {"type": "rtc.offer", "pc": event["pc"], "sdp": event["sdp"], "tracks": event["tracks"]}
        if "layers" in event:  # publish: which m-line carries which video layer
            offer["layers"] = event["layers"]
        await self._send(offer)

    async def media_state(self, event: dict[str, Any]) -> None:
        await self._send({"type": "rtc.state", "pc": event["pc"], "state": event["state"]})

    async def media_closed(self, event: dict[str, Any]) -> None:
        if self.media is None or self.media[1] != event.get("session_id"):
            return  # about a connection this socket already left (an earlier session's)
        self.media = None
        await self._send({"type": "rtc.closed", "reason": event["reason"]})

    async def media_quality(self, event: dict[str, Any]) -> None:
        if self.media is None or self.media[1] != event.get("session_id"):
            return
        await self._send({"type": "rtc.quality", "participants": event["participants"]})

    async def media_error(self, event: dict[str, Any]) -> None:
        await self._error(event["code"], event["message"])

    # --- helpers -----------------------------------------------------------------------------------

    async def _send(self, payload: dict[str, Any]) -> None:
        if self.revoked:
            return  # a broadcast or reply already on its way when access went
        await self.send(text_data=json.dumps(payload, cls=DjangoJSONEncoder))

    async def _error(self, code: str, text: str, ref: str | None = None) -> None:
        metrics.SIGNALING_ERRORS.labels(code=code).inc()
        await self._send({"type": "error", "code": code, "message": text, "ref": ref})
