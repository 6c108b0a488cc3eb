"""The egress side of the stage: join a class as a hidden, subscribe-only participant.

Uses the same socket API as a browser (`/ws/classes/<id>/?token=<service token>`): asks for the
stage with `rtc.join`, answers the media node's `subscribe` offers, and keeps the current set of
stage tracks by mid. Egress workers (compositor, recorder) read `StageSubscriber.tracks`; they run
in any process on any machine, and the media node does not care (as LiveKit Egress and Jibri do).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

import websockets
from aiortc import MediaStreamTrack, RTCBundlePolicy, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from . import RtcError
from .encoded_tap import ice_receive_buffer, receiver_estimator_off, receiver_request_keyframe, receiver_tap

log = logging.getLogger("classcast.egress")


class StageConnectionError(RtcError):
    """The class socket refused us or went away."""


@dataclass(frozen=True)
class StageClientConfig:
    ws_url: str  # ws(s)://host/ws/classes/<id>/?token=<service token>
    origin: str  # the site's own origin (the socket checks it like a browser's)
    open_timeout_s: float = 10.0
    udp_receive_buffer: int = 0  # bytes of kernel buffer for the stage's media; 0 keeps the kernel's
    # Frames a track's decoder may have waiting before the oldest go (video: up to the next keyframe,
    # which is asked for): a starved decoder then shows the stage late by half a second, not by seconds.
    decoder_backlog_frames: int = 15
    # The stage's video layer to receive: the highest no taller than this (None: the highest there is).
    max_height: int | None = None


@dataclass(frozen=True)
class StageTrack:
    mid: str
    user_id: int
    name: str
    role: str
    kind: str
    track: MediaStreamTrack


TracksCallback = Callable[[dict[str, StageTrack]], None]
# (mid, codec, payload, RTP timestamp from 0, clock rate): encoded frames as received, see encoded_tap
EncodedCallback = Callable[[str, str, bytes, int, int], None]


class StageSubscriber:
    def __init__(
        self,
        config: StageClientConfig,
        *,
        on_tracks: TracksCallback | None = None,
        on_encoded: EncodedCallback | None = None,
        decode: bool = True,
    ) -> None:
        """`on_encoded` receives every track's encoded frames; with `decode=False` nothing is decoded
        (the tracks' `recv()` then never yields a frame), which is all a recorder needs."""
        self.config = config
        self.on_tracks = on_tracks
        self.on_encoded = on_encoded
        self.decode = decode
        self.pc: RTCPeerConnection | None = None
        self.rtc_config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        self.tracks: dict[str, StageTrack] = {}
        self.state: dict[str, Any] = {}
        self.joined = asyncio.Event()
        self.closed_reason: str | None = None
        self._ws: Any = None

    async def run(self) -> None:
        """Connect, join, and follow the stage until the socket or the media connection closes."""
        try:
            async with websockets.connect(
                self.config.ws_url,
                origin=self.config.origin,
                open_timeout=self.config.open_timeout_s,
                max_size=4 * 1024 * 1024,
            ) as ws:
                self._ws = ws
                async for raw in ws:
                    if not await self._handle(json.loads(raw)):
                        break
        except websockets.InvalidStatus as exc:
            raise StageConnectionError(f"the class socket refused the service token ({exc})") from None
        except (OSError, websockets.ConnectionClosedError) as exc:
            raise StageConnectionError(f"the class socket went away ({exc})") from None
        finally:
            self._ws = None
            if self.pc is not None:
                await self.pc.close()

    async def leave(self, running: "asyncio.Future[None]", *, timeout_s: float = 5.0) -> None:
        """End `running` (this subscriber's `run()`) politely: rtc.leave, then wait for the peer
        connection to close by itself. Cancelling aiortc mid-close leaves it waiting on events nobody
        sets; cancelling is the last resort, after `timeout_s`."""
        if running.done():
            return
        with contextlib.suppress(Exception):
            await self.close()
        try:
            await asyncio.wait_for(asyncio.shield(running), timeout_s)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - we are leaving anyway
            running.cancel()

    async def close(self) -> None:
        if self._ws is not None:
            await self._send("rtc.leave")
            await self._ws.close()

    async def _send(self, type_: str, **fields: Any) -> None:
        await self._ws.send(json.dumps({"type": type_, **fields}))

    async def _handle(self, msg: dict[str, Any]) -> bool:
        kind = msg.get("type")
        if kind == "welcome":
            self.state = msg.get("state") or {}
            await self._send("rtc.join", **({"max_height": self.config.max_height} if self.config.max_height else {}))
        elif kind == "event" and msg.get("state"):
            self.state = msg["state"]
        elif kind == "rtc.config":
            self.rtc_config = RTCConfiguration(
                iceServers=[
                    RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
                    for s in msg.get("ice_servers", [])
                ],
                bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
            )
        elif kind == "rtc.offer" and msg.get("pc") == "subscribe":
            await self._apply_offer(msg.get("sdp"), msg.get("tracks") or {})
            self.joined.set()
        elif kind == "rtc.closed":
            self.closed_reason = msg.get("reason")
            return False
        elif kind == "error":
            log.warning("class socket error %s: %s", msg.get("code"), msg.get("message"))
        return True

    async def _apply_offer(self, sdp: str | None, described: dict[str, dict[str, Any]]) -> None:
        if not sdp:
            return  # joined; nothing on stage to receive yet
        if self.pc is None:
            self.pc = RTCPeerConnection(self.rtc_config)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        for transceiver in self.pc.getTransceivers():
            receiver_estimator_off(transceiver.receiver)  # an egress job does not steer publishers' bitrates
        guarded = self.decode and self.config.decoder_backlog_frames > 0
        if self.on_encoded is not None or guarded:
            for transceiver in self.pc.getTransceivers():
                if transceiver.mid is not None:
                    receiver = transceiver.receiver
                    receiver_tap(
                        receiver,
                        on_frame=self._encoded_for(transceiver.mid) if self.on_encoded is not None else None,
                        decode=self.decode,
                        max_backlog=self.config.decoder_backlog_frames if guarded else 0,
                        on_backlog=lambda r=receiver: asyncio.ensure_future(receiver_request_keyframe(r)),
                    )
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        if self.config.udp_receive_buffer:  # the whole stage arrives on this one (bundled) socket
            ice_receive_buffer(self.pc, size=self.config.udp_receive_buffer)
        await self._send("rtc.answer", pc="subscribe", sdp=self.pc.localDescription.sdp)
        tracks = {}
        for transceiver in self.pc.getTransceivers():
            info = described.get(transceiver.mid or "")
            if info is not None and transceiver.receiver.track is not None:
                tracks[transceiver.mid] = StageTrack(
                    mid=transceiver.mid,
                    user_id=info["user_id"],
                    name=info.get("name", ""),
                    role=info.get("role", ""),
                    kind=info["kind"],
                    track=transceiver.receiver.track,
                )
        self.tracks = tracks
        if self.on_tracks is not None:
            self.on_tracks(dict(tracks))

    def _encoded_for(self, mid: str) -> Callable[[str, bytes, int, int], None]:
        callback = self.on_encoded
        assert callback is not None

        def on_frame(codec: str, data: bytes, timestamp: int, clock_rate: int) -> None:
            callback(mid, codec, data, timestamp, clock_rate)

        return on_frame

    async def request_keyframe(self, mid: str) -> bool:
        """Ask the media node for a keyframe on one track (a new recording file starts with one)."""
        if self.pc is None:
            return False
        for transceiver in self.pc.getTransceivers():
            if transceiver.mid == mid:
                return await receiver_request_keyframe(transceiver.receiver)
        return False
