"""The stage SFU: one `Room` per live session holding aiortc peer connections (no Django here).

Each stage member holds two peer connections, as LiveKit's clients do, and the media node always
offers, so there is never glare:

* `publish`: `recvonly` transceivers for the member's own microphone and camera, the camera once per
  video layer (`layers.py`: aiortc cannot demultiplex simulcast, so each layer has its own m-line and
  the offer tells the page which is which).
  Negotiated once and never again: aiortc 1.16's receivers stop decoding video after a renegotiation
  of their connection (measured: the decoder gets no frames once the answer to a re-offer applies).
* `subscribe`: one `sendonly` transceiver per track of every other publisher. Stage changes re-offer
  it; a transceiver freed by a leaving publisher is re-used through its `ForwardTrack`, and a
  re-offer asked for mid-negotiation follows the answer.

Media is forwarded without decoding or re-encoding (`forwarding.py`): the publish receivers' encoded
frames are tapped before aiortc's decoder and handed, as packets, to every subscriber's sender. One
video codec (`video_codec`, VP8 by default, or H.264) is negotiated on every connection, so any
publisher's frames fit any subscriber's transceiver.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp

from rtc.encoded_tap import (
    BudgetedNackGenerator,
    DeadlineJitterBuffer,
    ice_receive_buffer,
    loss_timing,
    opus_fec_negotiate,
    receiver_audio_passthrough,
    receiver_nack_budget,
    receiver_remb_rewrite,
    receiver_request_keyframe,
    receiver_tap,
    receiver_video_deadline,
    sender_feedback_tap,
    video_start_bitrate_negotiate,
)
from rtc.pacer import Pacer, PacerConfig
from rtc.pacing import connection_pace
from rtc.transport_feedback import TransportFeedbackSender, offer_transport_cc

from . import SfuError
from .forwarding import ForwardTrack, PublishedLayers, PublishedTrack
from .layers import LayerConfig, StageLayersConfig
from .observer import RoomObserver
from .quality import LegCounters, PeerQuality, downlink_quality, uplink_quality

log = logging.getLogger("classcast.sfu")

Send = Callable[[str, dict[str, Any]], Awaitable[None]]
KINDS = ("audio", "video")
SETUP_TIMEOUT_S = 30.0
ADAPT_INTERVAL_S = 0.5  # choosers also run between feedback: a layer that goes quiet is left within this
TRACE_INTERVAL_S = 2.0  # the layer trace (DEBUG) of every publisher and subscriber
# One layer unless the adapter passes a ladder (the media node passes CLASSCAST_STAGE_LAYERS).
ONE_LAYER = StageLayersConfig(layers=(LayerConfig("f", 360, 1.0, 1_200_000, 30),))


class NegotiationError(SfuError):
    code = "invalid_sdp"


class UnknownPeerError(SfuError):
    code = "not_joined"


@dataclass(frozen=True)
class PeerSpec:
    peer_id: str  # the signaling consumer's channel name: where offers and errors go
    session_id: int
    user_id: int | None
    name: str
    role: str
    publish: bool
    hidden: bool = False
    muted: tuple[str, ...] = ()  # kinds muted when joining (the stage's record)
    max_height: int | None = None  # egress: the layer that fits its tile; None: hidden peers get the top


PUBLISH = "publish"
SUBSCRIBE = "subscribe"


@dataclass
class Peer:
    spec: PeerSpec
    pub: RTCPeerConnection | None = None
    sub: RTCPeerConnection | None = None
    # What this member publishes, per kind, once its track arrived (sources[kind] exists from the offer).
    published: dict[str, PublishedTrack | PublishedLayers] = field(default_factory=dict)
    sources: dict[str, PublishedTrack | PublishedLayers] = field(default_factory=dict)
    outbound: dict[tuple[str, str], RTCRtpTransceiver] = field(default_factory=dict)
    # Our own handle on each subscribe sender's source: aiortc drops sender.track when it stops.
    switches: dict[RTCRtpTransceiver, ForwardTrack] = field(default_factory=dict)
    muted: set[str] = field(default_factory=set)
    frames_prev: dict[str, tuple[float, int]] = field(default_factory=dict)
    negotiating: bool = False
    pending: bool = False
    connected: bool = False
    requested_at: float = field(default_factory=time.monotonic)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    lost_prev: dict[int, tuple[int, int]] = field(default_factory=dict)
    up: LegCounters = field(default_factory=LegCounters)
    down: LegCounters = field(default_factory=LegCounters)
    quality: PeerQuality | None = None
    pacer: Pacer | None = None  # in front of the subscribe connection, when the room paces
    feedback: TransportFeedbackSender | None = None  # transport-wide feedback on the publish connection
    # Each published video receiver's hole deadline and NACK budget, timed to the member's round trip.
    loss_timers: list[tuple[DeadlineJitterBuffer, BudgetedNackGenerator]] = field(default_factory=list)

    def pcs(self) -> list[tuple[str, RTCPeerConnection]]:
        return [(name, pc) for name, pc in ((PUBLISH, self.pub), (SUBSCRIBE, self.sub)) if pc is not None]

    def describe(self) -> dict[str, Any]:
        return {"user_id": self.spec.user_id, "name": self.spec.name, "role": self.spec.role}


class Room:
    """Every peer connection of one live session on this node."""

    def __init__(
        self, *, session_id: int, rtc_config: RTCConfiguration, send: Send, video_codec: str = "vp8",
        udp_receive_buffer: int = 0, observer: RoomObserver | None = None, layers: StageLayersConfig = ONE_LAYER,
        pacing: PacerConfig | None = None, start_bitrate_kbps: int = 0, transport_cc: bool = True,
    ) -> None:
        self.session_id = session_id
        # Publishers' browsers estimate their own uplink from transport-wide feedback (as in a direct
        # call); False: from the REMB of aiortc's receive-side estimator.
        self.transport_cc = transport_cc
        self.pacing = pacing  # None: every packet leaves at once, as aiortc sends it
        self.layers = layers
        self._adapting: asyncio.Task[None] | None = None
        self.observer = observer or RoomObserver()
        self.rtc_config = rtc_config
        self.udp_receive_buffer = udp_receive_buffer  # bytes per publisher socket; 0 keeps the kernel's
        self.send = send
        opus_fec_negotiate()  # before the preferences: they must carry the same codec parameters
        video_start_bitrate_negotiate(start_bitrate_kbps)
        self.codecs = {"audio": codec_preferences("audio", "opus"), "video": codec_preferences("video", video_codec)}
        self.peers: dict[str, Peer] = {}
        # FIFO: signaling for one room is applied in arrival order (answer before its candidates).
        self.lock = asyncio.Lock()

    # --- signaling entry points (called with self.lock held) ----------------------------------------

    async def join(self, spec: PeerSpec) -> None:
        if spec.peer_id in self.peers:
            await self.leave(spec.peer_id, reason="rejoined", notify=False)
        if spec.publish:
            # One publishing connection per person: a second tab takes over from the first.
            for other in list(self.peers.values()):
                if other.spec.publish and other.spec.user_id == spec.user_id:
                    await self.leave(other.spec.peer_id, reason="replaced")
        peer = Peer(spec=spec, muted=set(spec.muted))
        self.peers[spec.peer_id] = peer
        peer.tasks.append(asyncio.ensure_future(self._setup_deadline(peer)))
        log.info("peer joined", extra=self._log_extra(peer))
        if spec.publish:
            pub = peer.pub = self._new_pc(peer, PUBLISH)
            pub.on("track", lambda track: self._on_track(peer, track))
            audio = self._published_track(peer, pub, "audio")
            receiver_audio_passthrough(audio[1].receiver)  # forwarded as it arrives, never held behind a loss
            peer.sources["audio"] = audio[0]
            video = [self._published_track(peer, pub, "video") for _ in self.layers.layers]
            layered = peer.sources["video"] = PublishedLayers(self.layers, [track for track, _ in video])
            for index, ((_, transceiver), layer) in enumerate(zip(video, self.layers.layers)):
                # With transport-wide feedback the browser's own estimate rules its uplink; our REMB then
                # only carries the subscribers' caps (2x a layer's maximum: no cap of ours).
                own = (lambda bps, m=2 * layer.max_bitrate_bps: m) if self.transport_cc else (lambda bps: bps)
                receiver_remb_rewrite(
                    transceiver.receiver, rewrite=lambda bps, i=index, own=own: layered.remb_for(i, own(bps))
                )
            offer = await pub.createOffer()
            if self.transport_cc:
                offer = RTCSessionDescription(sdp=offer_transport_cc(offer.sdp), type="offer")
                peer.feedback = TransportFeedbackSender(pub)
            await pub.setLocalDescription(offer)
            if self.udp_receive_buffer:  # a publisher's media arrives here; subscribers only send RTCP
                ice_receive_buffer(pub, size=self.udp_receive_buffer)
            # Which m-line carries which layer, and how the page should encode it.
            described = {
                transceiver.mid: {"layer": layer.name, "scale_down_by": layer.scale_down_by,
                                  "max_bitrate_bps": layer.max_bitrate_bps, "max_fps": layer.max_fps}
                for (_, transceiver), layer in zip(video, self.layers.layers)
            }
            await self._send_safely(
                spec.peer_id,
                {"type": "media.offer", "pc": PUBLISH, "sdp": pub.localDescription.sdp, "tracks": {}, "layers": described},
            )
        attached = False
        for other in self.peers.values():
            if other is not peer:
                for kind, track in other.published.items():
                    attached = self._attach(peer, other, kind, track) or attached
        if attached:
            await self._negotiate(peer)
        elif not spec.publish:
            # A subscriber with nothing to receive yet still gets a (media-less) offer, so it knows
            # it joined; its first track arrives with the next offer.
            await self._send_safely(spec.peer_id, {"type": "media.offer", "pc": SUBSCRIBE, "sdp": None, "tracks": {}})

    def _published_track(self, peer: Peer, pub: RTCPeerConnection, kind: str) -> tuple[PublishedTrack, RTCRtpTransceiver]:
        transceiver = pub.addTransceiver(kind, direction="recvonly")
        transceiver.setCodecPreferences(self.codecs[kind])
        source = PublishedTrack(
            kind, muted=kind in peer.muted, request_keyframe=lambda r=transceiver.receiver: receiver_request_keyframe(r)
        )
        # The node decodes nothing: frames go from the receiver straight to the subscribers.
        receiver_tap(transceiver.receiver, on_frame=source.on_frame, decode=False)
        if kind == "video":  # a lost packet is asked for a few times and waited for half a second at most
            peer.loss_timers.append((
                receiver_video_deadline(transceiver.receiver, on_gap=source.on_gap),
                receiver_nack_budget(transceiver.receiver),
            ))
        return source, transceiver

    def _new_pc(self, peer: Peer, name: str) -> RTCPeerConnection:
        pc = RTCPeerConnection(self.rtc_config)
        pc.on("connectionstatechange", lambda: self._on_state(peer, name, pc))
        return pc

    async def answer(self, peer_id: str, pc_name: str, sdp: str) -> None:
        peer = self._peer(peer_id)
        pc = peer.pub if pc_name == PUBLISH else peer.sub
        if pc is None or pc.signalingState != "have-local-offer":
            raise NegotiationError(f"no {pc_name} offer is waiting for an answer")
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        except Exception as exc:  # aiortc raises ValueError, KeyError... for bad SDP
            raise NegotiationError(f"the answer could not be applied ({exc.__class__.__name__}: {exc})") from None
        if pc_name == PUBLISH:
            if peer.feedback is not None and peer.feedback.start(sdp):
                peer.tasks.append(peer.feedback.task)
            return
        peer.negotiating = False
        if peer.pending:
            peer.pending = False
            await self._negotiate(peer)

    async def candidate(
        self, peer_id: str, pc_name: str, candidate: str, sdp_mid: str | None, sdp_mline_index: int | None
    ) -> None:
        peer = self._peer(peer_id)
        pc = peer.pub if pc_name == PUBLISH else peer.sub
        if pc is None or pc.remoteDescription is None:
            raise NegotiationError(f"the {pc_name} connection has no answer yet; send candidates after it")
        if not candidate:
            return  # end-of-candidates: aioice keeps checking what it has
        try:
            parsed = candidate_from_sdp(candidate.removeprefix("a=").removeprefix("candidate:"))
        except Exception:
            raise NegotiationError("the ICE candidate could not be parsed") from None
        parsed.sdpMid = sdp_mid
        parsed.sdpMLineIndex = sdp_mline_index if sdp_mline_index is not None else (0 if sdp_mid is None else None)
        await pc.addIceCandidate(parsed)

    async def leave(self, peer_id: str, *, reason: str, notify: bool = True) -> None:
        peer = self.peers.pop(peer_id, None)
        if peer is None:
            return
        for other in self.peers.values():
            if self._detach(other, peer_id):
                self._schedule(self._negotiate_locked(other))
        for switch in peer.switches.values():
            switch.stop()
        for source in peer.sources.values():
            source.end()
        for task in peer.tasks:
            task.cancel()
        if not peer.connected:
            self.observer.call_setup(result="abandoned")
        self.observer.peer_left(session_id=self.session_id, peer_id=peer_id)
        for _, pc in peer.pcs():
            await pc.close()
        log.info("peer left", extra={**self._log_extra(peer), "reason": reason})
        if notify:
            await self._send_safely(peer_id, {"type": "media.closed", "session_id": self.session_id, "reason": reason})

    def mute_user(self, user_id: int, *, kind: str, muted: bool) -> None:
        """Stop (or resume) forwarding one kind of a publisher's media, whatever their browser does."""
        for peer in self.peers.values():
            if peer.spec.user_id == user_id and peer.spec.publish:
                (peer.muted.add if muted else peer.muted.discard)(kind)
                if kind in peer.sources:
                    peer.sources[kind].set_muted(muted)

    async def kick_user(self, user_id: int, *, reason: str) -> None:
        for peer in list(self.peers.values()):
            if peer.spec.user_id == user_id and not peer.spec.hidden:
                await self.leave(peer.spec.peer_id, reason=reason)

    async def close(self, *, reason: str) -> None:
        for peer_id in list(self.peers):
            await self.leave(peer_id, reason=reason)
        if self._adapting is not None:
            self._adapting.cancel()

    # --- media wiring ------------------------------------------------------------------------------

    def _on_track(self, peer: Peer, track: MediaStreamTrack) -> None:
        kind = track.kind
        if kind in peer.published:
            return  # another layer of the camera already published
        source = peer.published[kind] = peer.sources[kind]
        for other in self.peers.values():
            if other is not peer and self._attach(other, peer, kind, source):
                self._schedule(self._negotiate_locked(other))

    def _attach(self, sub: Peer, pub: Peer, kind: str, source: PublishedTrack | PublishedLayers) -> bool:
        key = (pub.spec.peer_id, kind)
        if key in sub.outbound:
            return False
        if sub.sub is None:
            sub.sub = self._new_pc(sub, SUBSCRIBE)
        used = set(sub.outbound.values())
        free = next((t for t in sub.switches if t.kind == kind and t not in used and not t.stopped), None)
        if free is None:
            forward = ForwardTrack(kind)
            free = sub.sub.addTransceiver(forward, direction="sendonly")
            free.setCodecPreferences(self.codecs[kind])
            # PLI/FIR and REMB from this subscriber go to whichever publisher the transceiver carries;
            # REMB and loss also choose the layer it gets.
            sender_feedback_tap(
                free.sender, on_keyframe_request=forward.request_keyframe,
                on_remb=lambda bps, f=forward, s=sub: (f.feedback_remb(bps), self._pace(s)),
                on_loss=lambda fraction, f=forward, s=sub: (f.feedback_loss(fraction), self._pace(s)),
            )
            # Chromium's REMB is its whole connection's: each video track this subscriber gets has a share.
            forward.share = lambda s=sub: sum(1 for (_, k) in s.outbound if k == "video")
            forward.uplink = lambda now, s=sub: _sending_bps(s, now)
            sub.switches[free] = forward
        forward = sub.switches[free]
        if kind == "video":
            if sub.spec.max_height is not None:
                forward.pinned = self.layers.fitting(sub.spec.max_height)
            elif sub.spec.hidden:
                forward.pinned = 0  # the recorder: the best there is (egress links are the data centre's)
            forward.on_layer = lambda name, s=sub, p=pub: self.observer.layer(
                session_id=self.session_id, subscriber=_who(s), publisher=_who(p), layer=name,
                height=next((layer.height for layer in self.layers.layers if layer.name == name), 0))
            self._adapt_start()
        forward.switch(source)
        free.direction = "sendonly"
        sub.outbound[key] = free
        return True

    def _detach(self, sub: Peer, pub_peer_id: str) -> bool:
        changed = False
        for kind in KINDS:
            transceiver = sub.outbound.pop((pub_peer_id, kind), None)
            if transceiver is None:
                continue
            sub.switches[transceiver].switch(None)
            sub.switches[transceiver].on_layer = None
            transceiver.direction = "inactive"  # kept, with its sender loop alive, for the next publisher
            changed = True
        return changed

    def _adapt_start(self) -> None:
        if self._adapting is None or self._adapting.done():
            self._adapting = asyncio.ensure_future(self._adapt_loop())
            self._adapting.add_done_callback(_log_task_error)

    async def _adapt_loop(self) -> None:
        """Choosers run on feedback; this runs them between, e.g. for egress (which sends none) when a
        layer goes quiet. Ends with the room's last peer."""
        traced = 0.0
        while self.peers:
            now = time.monotonic()
            for peer in list(self.peers.values()):
                for forward in list(peer.switches.values()):
                    forward.adapt(now)
            if log.isEnabledFor(logging.DEBUG) and now - traced >= TRACE_INTERVAL_S:
                traced = now
                self._trace_layers(now)
            await asyncio.sleep(ADAPT_INTERVAL_S)

    def _trace_layers(self, now: float) -> None:
        """What each publisher's layers bring and what each subscriber gets: why a picture is what it is."""
        for peer in self.peers.values():
            video = peer.sources.get("video")
            if isinstance(video, PublishedLayers):
                log.debug("layers in", extra={**self._log_extra(peer), "layers": video.describe(now)})
            for (pub_id, kind), transceiver in peer.outbound.items():
                if kind == "video":
                    forward = peer.switches[transceiver]
                    log.debug("layer out", extra={**self._log_extra(peer), "publisher": pub_id,
                                                  **forward.describe(now)})

    # --- negotiation -------------------------------------------------------------------------------

    async def _negotiate_locked(self, peer: Peer) -> None:
        async with self.lock:
            if self.peers.get(peer.spec.peer_id) is peer:
                await self._negotiate(peer)

    async def _negotiate(self, peer: Peer) -> None:
        if peer.negotiating:
            peer.pending = True
            return
        pc = peer.sub
        if pc is None or pc.signalingState == "closed":
            return  # it is leaving
        peer.negotiating = True
        await pc.setLocalDescription(await pc.createOffer())
        if self.pacing is not None:
            if peer.pacer is None:
                peer.pacer = Pacer(self.pacing)
            connection_pace(pc, peer.pacer)  # again after each offer: new transceivers, new payload types
        tracks = {
            transceiver.mid: {**self.peers[pub_id].describe(), "kind": kind}
            for (pub_id, kind), transceiver in peer.outbound.items()
            if pub_id in self.peers and transceiver.mid is not None
        }
        await self._send_safely(
            peer.spec.peer_id,
            {"type": "media.offer", "pc": SUBSCRIBE, "sdp": pc.localDescription.sdp, "tracks": tracks},
        )

    def _pace(self, sub: Peer) -> None:
        """The subscriber's connection is paced at the lowest estimate of its video tracks (its browser's
        REMB, lowered by the loss it reports), but never below what the layers it is given (or about to
        be) bring: pacing smooths bursts and budgets retransmissions; choosing layers is what fits the
        average rate to the link. A receive-side estimate only grows to ~1.5x what arrives, so pacing
        under the chosen layers would starve every move up."""
        if sub.pacer is None:
            return
        now = time.monotonic()
        videos = [forward for forward in sub.switches.values() if forward.kind == "video"]
        estimates = [bps for forward in videos if (bps := forward.link.bps(now)) is not None]
        if not estimates:
            return
        need = sum(
            max((layer.rate.bps(now) for layer in (forward.source, forward.pending) if layer is not None), default=0.0)
            for forward in videos
        )
        sub.pacer.set_estimate(max(min(estimates), need))

    # --- connection state and stats ----------------------------------------------------------------

    def _on_state(self, peer: Peer, name: str, pc: RTCPeerConnection) -> None:
        state = pc.connectionState
        if state in ("failed", "closed"):
            log.info("connection %s", state, extra={**self._log_extra(peer), "pc": name})
        # A join is set up once its first connection (publish, or subscribe for watchers) connects.
        if state == "connected" and not peer.connected:
            peer.connected = True
            self.observer.call_setup(result="success")
            self.observer.joined(seconds=time.monotonic() - peer.requested_at)
        elif state == "failed":
            if not peer.connected:
                self.observer.call_setup(result="failure")
                peer.connected = True  # counted once
            self._schedule(self._leave_locked(peer.spec.peer_id, "connection_failed"))
        elif state == "closed" and self.peers.get(peer.spec.peer_id) is peer:
            # Closed by the other side (aiortc shuts down once every DTLS transport got close_notify),
            # e.g. the browser's page went away with a web process that died before telling us:
            # free its tracks now, so nobody joining meanwhile is handed a dead publisher.
            self._schedule(self._leave_locked(peer.spec.peer_id, "connection_closed"))
        self._schedule(self._send_safely(peer.spec.peer_id, {"type": "media.state", "pc": name, "state": state}))

    async def _setup_deadline(self, peer: Peer) -> None:
        await asyncio.sleep(SETUP_TIMEOUT_S)
        if not peer.connected:
            self.observer.call_setup(result="timeout")
            peer.connected = True
            await self._leave_locked(peer.spec.peer_id, "setup_timeout")

    async def _leave_locked(self, peer_id: str, reason: str) -> None:
        async with self.lock:
            await self.leave(peer_id, reason=reason)

    async def stats_collect(self) -> tuple[float, float]:
        """Observe RTT, jitter, loss and bitrate of every peer; returns (inbound, outbound) bits/s."""
        total_in = total_out = 0.0
        for peer in list(self.peers.values()):
            reports = {name: await pc.getStats() for name, pc in peer.pcs() if pc.connectionState == "connected"}
            if not reports:
                continue
            now = time.monotonic()
            up = uplink_quality(reports[PUBLISH].values(), peer.up, now=now) if PUBLISH in reports else None
            down = downlink_quality(reports[SUBSCRIBE].values(), peer.down, now=now) if SUBSCRIBE in reports else None
            spec = peer.spec
            peer.quality = PeerQuality(
                peer_id=spec.peer_id, user_id=spec.user_id, name=spec.name, hidden=spec.hidden, up=up, down=down
            )
            self.observer.peer_quality(session_id=self.session_id, quality=peer.quality)
            rtt_ms = next((leg.rtt_ms for leg in (down, up) if leg is not None and leg.rtt_ms), None)
            give_up_s, retry_s = loss_timing(rtt_ms / 1000 if rtt_ms else None)
            for buffer, nacks in peer.loss_timers:
                buffer.give_up_s, nacks.retry_s, nacks.max_age_s = give_up_s, retry_s, give_up_s
            # The peer's bitrates are its legs' (media in on its publish connection, out on its subscribe one).
            rate_in = up.kbps * 1000 if up is not None and up.kbps is not None else None
            rate_out = down.kbps * 1000 if down is not None and down.kbps is not None else None
            for direction, rate in (("inbound", rate_in), ("outbound", rate_out)):
                if rate is not None:
                    self.observer.bitrate(direction=direction, bps=rate)
            total_in += rate_in or 0.0
            total_out += rate_out or 0.0
            for stat in (value for report in reports.values() for value in report.values()):
                if stat.type == "remote-inbound-rtp" and stat.roundTripTime is not None:
                    self.observer.rtt(seconds=stat.roundTripTime)
                elif stat.type == "inbound-rtp":
                    clock = 48_000 if stat.kind == "audio" else 90_000
                    self.observer.jitter(kind=stat.kind, seconds=stat.jitter / clock)
                    prev = peer.lost_prev.get(stat.ssrc)
                    if prev is not None:
                        received = stat.packetsReceived - prev[0]
                        lost = max(0, stat.packetsLost - prev[1])
                        if received + lost > 0:
                            self.observer.loss(kind=stat.kind, ratio=lost / (received + lost))
                    peer.lost_prev[stat.ssrc] = (stat.packetsReceived, stat.packetsLost)
            video = peer.published.get("video")
            if video is not None:
                prev = peer.frames_prev.get("video")
                if prev is not None and now > prev[0]:
                    self.observer.inbound_fps(fps=(video.frames - prev[1]) / (now - prev[0]))
                peer.frames_prev["video"] = (now, video.frames)
        return total_in, total_out

    def quality_snapshot(self) -> list[dict[str, Any]]:
        """Every visible participant's legs as last collected: what stage pages show on each tile."""
        return [p.quality.as_dict() for p in self.peers.values() if p.quality is not None and not p.spec.hidden]

    # --- helpers -----------------------------------------------------------------------------------

    def _peer(self, peer_id: str) -> Peer:
        peer = self.peers.get(peer_id)
        if peer is None:
            raise UnknownPeerError("there is no media connection for this socket; send rtc.join first")
        return peer

    def _schedule(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        task.add_done_callback(_log_task_error)

    async def _send_safely(self, channel: str, message: dict[str, Any]) -> None:
        try:
            await self.send(channel, message)
        except Exception:  # a full or gone channel must not break the room
            log.warning("could not reach %s", channel, exc_info=True)

    def _log_extra(self, peer: Peer) -> dict[str, Any]:
        return {"session_id": self.session_id, "user_id": peer.spec.user_id, "peer_id": peer.spec.peer_id}


def codec_preferences(kind: str, name: str) -> list[Any]:
    """The one codec of `kind` every connection negotiates (plus RTX for video retransmissions)."""
    wanted = {f"{kind}/{name}".lower(), "video/rtx"}
    codecs = [c for c in RTCRtpSender.getCapabilities(kind).codecs if c.mimeType.lower() in wanted]
    if not any(c.mimeType.lower() != "video/rtx" for c in codecs):
        raise ValueError(f"aiortc cannot send {kind} codec {name!r}")
    return codecs


def _sending_bps(peer: Peer, now: float) -> float:
    """What a member's browser gets through to us: every layer and its audio, as the node measures it."""
    tracks = [t for source in peer.published.values()
              for t in (source.tracks if isinstance(source, PublishedLayers) else [source])]
    return sum(t.rate.bps(now) for t in tracks)


def _who(peer: Peer) -> str:
    return str(peer.spec.user_id) if peer.spec.user_id is not None else peer.spec.name or peer.spec.peer_id


def _log_task_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("media node task failed", exc_info=task.exception())
