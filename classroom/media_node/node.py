"""The media node process: reads its channel on the channel layer and drives one `Room` per session.

Runs inside the web process on the embedded default (`media_node_ensure_started`), or on its own with
`python manage.py media_node` when the channel layer is Redis, so web processes and media nodes scale
apart. It registers itself in the database with a heartbeat; sessions are pinned to a live node.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import aioice.ice
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCIceServer
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from sfu import SfuError
from sfu.layers import layers_parse
from rtc.pacer import PacerConfig
from sfu.observer import RoomObserver
from sfu.quality import PeerQuality
from sfu.room import PeerSpec, Room

from .. import metrics
from ..services.media import media_node_channel, media_node_heartbeat, media_node_remove

log = logging.getLogger("classcast.media_node")


class MetricsObserver(RoomObserver):
    """The SFU's measurements as this process's Prometheus metrics (`source="server"`)."""

    def __init__(self) -> None:
        self._participants: dict[str, tuple[str, str]] = {}  # peer id -> (session, participant) labels

    def call_setup(self, *, result: str) -> None:
        metrics.CALL_SETUPS.labels(result=result).inc()

    def joined(self, *, seconds: float) -> None:
        metrics.JOIN_SECONDS.labels(source="server").observe(seconds)

    def rtt(self, *, seconds: float) -> None:
        metrics.RTT_SECONDS.labels(source="server").observe(seconds)

    def jitter(self, *, kind: str, seconds: float) -> None:
        metrics.JITTER_SECONDS.labels(source="server", kind=kind).observe(seconds)

    def loss(self, *, kind: str, ratio: float) -> None:
        metrics.PACKET_LOSS.labels(source="server", kind=kind).observe(ratio)

    def bitrate(self, *, direction: str, bps: float) -> None:
        metrics.BITRATE_BPS.labels(source="server", direction=direction, kind="all").observe(bps)

    def inbound_fps(self, *, fps: float) -> None:
        metrics.INBOUND_FPS.observe(fps)

    def peer_quality(self, *, session_id: int, quality: PeerQuality) -> None:
        who = f"user-{quality.user_id}" if quality.user_id is not None else f"service-{quality.name}"
        labels = self._participants[quality.peer_id] = (str(session_id), who)
        for direction, leg in (("up", quality.up), ("down", quality.down)):
            if leg is None:
                continue
            if leg.loss is not None:
                metrics.PARTICIPANT_LOSS.labels(*labels, direction).set(leg.loss)
                metrics.LEG_LOSS.labels(direction).observe(leg.loss)
            if leg.jitter_ms is not None:
                metrics.PARTICIPANT_JITTER.labels(*labels, direction).set(leg.jitter_ms / 1000)
            if leg.kbps is not None:
                metrics.PARTICIPANT_BITRATE.labels(*labels, direction).set(leg.kbps * 1000)
            if leg.rtt_ms is not None:
                metrics.PARTICIPANT_RTT.labels(*labels).set(leg.rtt_ms / 1000)

    def peer_left(self, *, session_id: int, peer_id: str) -> None:
        labels = self._participants.pop(peer_id, None)
        if labels is None:
            return
        for gauge, directions in (
            (metrics.PARTICIPANT_LOSS, ("up", "down")), (metrics.PARTICIPANT_JITTER, ("up", "down")),
            (metrics.PARTICIPANT_BITRATE, ("up", "down")), (metrics.PARTICIPANT_RTT, (None,)),
        ):
            for direction in directions:
                try:
                    gauge.remove(*labels, *([direction] if direction else []))
                except KeyError:
                    pass  # that figure was never measured for them

    def layer(self, *, session_id: int, subscriber: str, publisher: str, layer: str | None, height: int) -> None:
        labels = (str(session_id), subscriber, publisher)
        if layer is None:
            try:
                metrics.STAGE_LAYER.remove(*labels)
            except KeyError:
                pass  # never had one
        else:
            metrics.STAGE_LAYER.labels(*labels).set(height)


METRICS_OBSERVER = MetricsObserver()


def rtc_configuration() -> RTCConfiguration:
    """The node's own ICE servers: the static list only, never TURN. A media node is the reachable end
    (browsers relay to it), as in LiveKit and Jitsi; an unreachable TURN server would also cost aioice
    a 5 s allocation wait inside every setLocalDescription, and node credentials would expire."""
    servers = [
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in settings.CLASSCAST_ICE_SERVERS
    ]
    # An explicit (possibly empty) list: aiortc would otherwise reach for a public STUN server.
    # max-bundle: with aiortc's default (balanced) a second video transceiver is left on a transport
    # that is stopped when the answer bundles everything onto the first, and never sends.
    return RTCConfiguration(iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


def ice_host_addresses_pin(addresses: list[str]) -> None:
    """aioice has no option to choose the interfaces it gathers host candidates on; this is the seam.
    With CLASSCAST_ICE_HOST_ADDRESSES set, those addresses (loopback allowed) are the only ones offered."""
    if addresses:
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(addresses)


class MediaNode:
    def __init__(self, *, node_id: str, capacity: int) -> None:
        self.node_id = node_id
        self.channel = media_node_channel(node_id)
        self.capacity = capacity
        self.layer = get_channel_layer()
        self.rooms: dict[int, Room] = {}
        self.rtc_config = rtc_configuration()
        self.stage_layers = layers_parse(settings.CLASSCAST_STAGE_LAYERS)  # a bad setting fails here, at start
        self._stopping = asyncio.Event()

    @property
    def peer_count(self) -> int:
        return sum(len(room.peers) for room in self.rooms.values())

    async def run(self) -> None:
        ice_host_addresses_pin(settings.CLASSCAST_ICE_HOST_ADDRESSES)
        await self._heartbeat()
        beat = asyncio.ensure_future(self._heartbeat_loop())
        stats = asyncio.ensure_future(self._stats_loop())
        log.info("media node started", extra={"node_id": self.node_id, "channel": self.channel})
        try:
            while not self._stopping.is_set():
                message = await self.layer.receive(self.channel)
                task = asyncio.ensure_future(self.dispatch(message))
                task.add_done_callback(_log_failure)
                await asyncio.sleep(0)  # let the task take its room's lock in arrival order
        finally:
            beat.cancel()
            stats.cancel()
            for room in list(self.rooms.values()):
                await room.close(reason="node_stopped")
            await database_sync_to_async(media_node_remove)(node_id=self.node_id)

    def stop(self) -> None:
        self._stopping.set()

    async def dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        session_id = message.get("session_id")
        room = self._room(session_id, create=kind == "media.join")
        if room is None:
            if kind in ("media.answer", "media.candidate") and message.get("peer_id"):
                await self._error(message["peer_id"], "not_joined", "there is no media connection for this socket")
            return
        async with room.lock:
            try:
                if kind == "media.join":
                    await room.join(
                        PeerSpec(
                            peer_id=message["peer_id"],
                            session_id=session_id,
                            user_id=message.get("user_id"),
                            name=message.get("name", ""),
                            role=message.get("role", ""),
                            publish=bool(message.get("publish")),
                            hidden=bool(message.get("hidden")),
                            muted=tuple(k for k in message.get("muted", ()) if k in ("audio", "video")),
                            max_height=message.get("max_height"),
                        )
                    )
                elif kind == "media.answer":
                    await room.answer(message["peer_id"], message["pc"], message["sdp"])
                elif kind == "media.candidate":
                    await room.candidate(
                        message["peer_id"],
                        message["pc"],
                        message["candidate"],
                        message.get("sdpMid"),
                        message.get("sdpMLineIndex"),
                    )
                elif kind == "media.leave":
                    await room.leave(message["peer_id"], reason=message.get("reason", "left"), notify=False)
                elif kind == "media.mute":
                    room.mute_user(message["user_id"], kind=message["kind"], muted=bool(message["muted"]))
                elif kind == "media.kick":
                    await room.kick_user(message["user_id"], reason=message.get("reason", "removed"))
                elif kind == "media.end":
                    await room.close(reason=message.get("reason", "session_ended"))
                else:
                    log.warning("unknown media node message %r", kind)
            except SfuError as exc:
                if message.get("peer_id"):
                    await self._error(message["peer_id"], exc.code, str(exc))
            finally:
                if not room.peers:
                    self.rooms.pop(session_id, None)
        self._gauge_peers()

    def _room(self, session_id: Any, *, create: bool) -> Room | None:
        if not isinstance(session_id, int):
            return None
        room = self.rooms.get(session_id)
        if room is None and create:
            room = self.rooms[session_id] = Room(
                session_id=session_id, rtc_config=self.rtc_config, send=self.layer.send,
                video_codec=settings.CLASSCAST_VIDEO_CODEC, udp_receive_buffer=settings.CLASSCAST_UDP_RECEIVE_BUFFER,
                observer=METRICS_OBSERVER, layers=self.stage_layers,
                pacing=PacerConfig(factor=settings.CLASSCAST_STAGE_PACING_FACTOR)
                if settings.CLASSCAST_STAGE_PACING_FACTOR > 0 else None,
                start_bitrate_kbps=settings.CLASSCAST_STAGE_START_BITRATE_KBPS,
                transport_cc=settings.CLASSCAST_STAGE_TRANSPORT_CC,
            )
        return room

    async def _quality_send(self, room: Room) -> None:
        """Every stage member's page learns how each participant's links are doing (tile indicators)."""
        snapshot = room.quality_snapshot()
        if not snapshot:
            return
        message = {"type": "media.quality", "session_id": room.session_id, "participants": snapshot}
        for peer_id, peer in list(room.peers.items()):
            if not peer.spec.hidden:
                await self.layer.send(peer_id, message)

    async def _error(self, channel: str, code: str, text: str) -> None:
        await self.layer.send(channel, {"type": "media.error", "code": code, "message": text})

    def _gauge_peers(self) -> None:
        counts: dict[str, int] = {}
        for room in self.rooms.values():
            for peer in room.peers.values():
                for _, pc in peer.pcs():
                    counts[pc.connectionState] = counts.get(pc.connectionState, 0) + 1
        for state in ("new", "connecting", "connected", "disconnected", "failed", "closed"):
            metrics.PEER_CONNECTIONS.labels(state=state).set(counts.get(state, 0))

    async def _heartbeat(self) -> None:
        await database_sync_to_async(media_node_heartbeat)(
            node_id=self.node_id, peers=self.peer_count, capacity=self.capacity
        )

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(settings.CLASSCAST_MEDIA_NODE_HEARTBEAT_S)
            try:
                await self._heartbeat()
            except Exception:
                log.exception("media node heartbeat failed")

    async def _stats_loop(self) -> None:
        """Every participant's legs, for /metrics and the stage pages' tile indicators: more often than
        the database heartbeat, so a teacher sees a student's link go bad within a few seconds."""
        while True:
            await asyncio.sleep(settings.CLASSCAST_MEDIA_NODE_STATS_S)
            try:
                total_in = total_out = 0.0
                for room in list(self.rooms.values()):
                    rate_in, rate_out = await room.stats_collect()
                    total_in += rate_in
                    total_out += rate_out
                    await self._quality_send(room)
                metrics.NODE_BITRATE_BPS.labels(direction="inbound").set(total_in)
                metrics.NODE_BITRATE_BPS.labels(direction="outbound").set(total_out)
                self._gauge_peers()
            except Exception:
                log.exception("media node stats collection failed")


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("media node message failed", exc_info=task.exception())


_embedded: tuple[asyncio.AbstractEventLoop, asyncio.Task[None], MediaNode] | None = None


async def media_node_ensure_started() -> None:
    """Start the embedded media node on this event loop once (the web process's own node)."""
    global _embedded
    loop = asyncio.get_running_loop()
    if _embedded is not None and _embedded[0] is loop and not _embedded[1].done():
        return
    node = MediaNode(node_id=settings.CLASSCAST_MEDIA_NODE_ID, capacity=settings.CLASSCAST_MEDIA_NODE_CAPACITY)
    await node._heartbeat()  # registered before the first join asks for a node
    task = asyncio.ensure_future(node.run())
    task.add_done_callback(_log_failure)
    _embedded = (loop, task, node)
