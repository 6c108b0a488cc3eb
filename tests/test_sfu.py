"""The media node's Room with real aiortc clients in-process: negotiation, forwarding, leaving, errors."""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from sfu.observer import RoomObserver
from sfu.room import SETUP_TIMEOUT_S, NegotiationError, PeerSpec, Room, UnknownPeerError

pytestmark = [pytest.mark.slow, pytest.mark.once]  # pure media: the deployment mode does not matter


class Client:
    """A stand-in for a browser: answers the node's offers on a publish and a subscribe connection."""

    def __init__(self, room: Room, peer_id: str, *, publish: bool, make_track=None) -> None:
        self.make_track = make_track or (lambda kind: AudioStreamTrack() if kind == "audio" else VideoStreamTrack())
        self.room = room
        self.peer_id = peer_id
        self.publish = publish
        self.pcs: dict[str, RTCPeerConnection] = {}
        self.tracks: dict[str, dict[str, Any]] = {}
        self.messages: list[dict[str, Any]] = []
        self.offers = 0
        self.on_subscribe_offer = None  # called with the subscribe connection after each offer is applied

    async def deliver(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        if message["type"] == "media.offer" and message["sdp"]:
            self.offers += 1
            asyncio.ensure_future(self._answer(message))

    async def _answer(self, message: dict[str, Any]) -> None:
        name = message["pc"]
        pc = self.pcs.get(name)
        if pc is None:
            pc = self.pcs[name] = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=message["sdp"], type="offer"))
        if name == "publish":
            for transceiver in pc.getTransceivers():
                transceiver.sender.replaceTrack(self.make_track(transceiver.kind))
                transceiver.direction = "sendonly"
        else:
            self.tracks = message["tracks"]
            if self.on_subscribe_offer is not None:
                self.on_subscribe_offer(pc)
        await pc.setLocalDescription(await pc.createAnswer())
        async with self.room.lock:
            await self.room.answer(self.peer_id, name, pc.localDescription.sdp)

    def receiver_track(self, user_id: int, kind: str):
        sub = self.pcs.get("subscribe")
        if sub is None:
            return None
        for transceiver in sub.getTransceivers():
            info = self.tracks.get(transceiver.mid)
            if info and info["user_id"] == user_id and info["kind"] == kind:
                return transceiver.receiver.track
        return None

    async def close(self) -> None:
        for pc in self.pcs.values():
            await pc.close()


async def wait_for(predicate, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def join(
    room: Room, clients: dict[str, Client], peer_id: str, user_id: int, *, publish: bool = True, make_track=None,
    on_subscribe_offer=None,
) -> Client:
    client = clients[peer_id] = Client(room, peer_id, publish=publish, make_track=make_track)
    client.on_subscribe_offer = on_subscribe_offer
    async with room.lock:
        await room.join(
            PeerSpec(peer_id=peer_id, session_id=1, user_id=user_id, name=f"user {user_id}", role="student", publish=publish)
        )
    return client


async def test_two_publishers_receive_each_other_and_a_leave_frees_everything(room_and_clients):
    room, clients = room_and_clients
    a = await join(room, clients, "a", 1)
    b = await join(room, clients, "b", 2)
    await wait_for(lambda: a.receiver_track(2, "video") is not None and b.receiver_track(1, "video") is not None)
    frame = await asyncio.wait_for(a.receiver_track(2, "video").recv(), timeout=20)
    assert frame.width == 640 and frame.height == 480
    frame = await asyncio.wait_for(b.receiver_track(1, "audio").recv(), timeout=20)
    assert frame.sample_rate == 48000
    # Publish connections are negotiated once; only subscribe connections are re-offered.
    assert sum(1 for m in a.messages if m["type"] == "media.offer" and m["pc"] == "publish") == 1

    b_pcs = [pc for _, pc in room.peers["b"].pcs()]
    async with room.lock:
        await room.leave("b", reason="left")
    assert "b" not in room.peers
    assert all(pc.connectionState == "closed" for pc in b_pcs)
    await wait_for(lambda: not a.tracks or all(info["user_id"] != 2 for info in a.tracks.values()))
    peer_a = room.peers["a"]
    assert not any(key[0] == "b" for key in peer_a.outbound)
    # Freed transceivers stay for re-use and carry nobody.
    assert all(switch.source is None for switch in peer_a.switches.values())
    assert all(t.direction == "inactive" for t in peer_a.sub.getTransceivers())
    await a.close()
    await b.close()
    async with room.lock:
        await room.close(reason="test_over")
    assert room.peers == {}


async def test_subscriber_only_peer_gets_stage_and_sends_nothing(room_and_clients):
    room, clients = room_and_clients
    a = await join(room, clients, "a", 1)
    w = await join(room, clients, "w", None, publish=False)
    await wait_for(lambda: w.receiver_track(1, "video") is not None)
    assert "publish" not in w.pcs
    frame = await asyncio.wait_for(w.receiver_track(1, "video").recv(), timeout=20)
    assert frame.width == 640
    await a.close()
    await w.close()
    async with room.lock:
        await room.close(reason="test_over")


async def test_kick_closes_that_users_connections_and_tells_them(room_and_clients):
    room, clients = room_and_clients
    a = await join(room, clients, "a", 1)
    b = await join(room, clients, "b", 2)
    await wait_for(lambda: b.receiver_track(1, "video") is not None)
    async with room.lock:
        await room.kick_user(2, reason="removed")
    assert "b" not in room.peers
    assert {"type": "media.closed", "session_id": 1, "reason": "removed"} in b.messages
    await a.close()
    await b.close()
    async with room.lock:
        await room.close(reason="test_over")


async def test_bad_answers_and_unknown_peers_are_refused(room_and_clients):
    room, clients = room_and_clients
    a = await join(room, clients, "a", 1)
    await wait_for(lambda: room.peers["a"].pub.signalingState == "stable")
    with pytest.raises(NegotiationError):
        await room.answer("a", "publish", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n")
    with pytest.raises(NegotiationError):
        await room.answer("a", "subscribe", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n")
    with pytest.raises(UnknownPeerError):
        await room.answer("nobody", "publish", "v=0\r\n")
    with pytest.raises(NegotiationError):
        await room.candidate("a", "publish", "candidate:garbage", "0", 0)
    await a.close()
    async with room.lock:
        await room.close(reason="test_over")


async def frames_from(client: Client, user_id: int, kind: str = "video", count: int = 3) -> int:
    await wait_for(lambda: client.receiver_track(user_id, kind) is not None)
    track = client.receiver_track(user_id, kind)
    for _ in range(count):
        await asyncio.wait_for(track.recv(), timeout=20)
    return count


async def test_three_publishers_each_receive_both_others(room_and_clients):
    room, clients = room_and_clients
    members = [await join(room, clients, f"p{i}", i) for i in (1, 2, 3)]
    for me, client in zip((1, 2, 3), members):
        for other in {1, 2, 3} - {me}:
            assert await frames_from(client, other) == 3, f"user {me} gets no video from user {other}"
    for client in members:
        await client.close()
    async with room.lock:
        await room.close(reason="test_over")


async def test_a_rejoining_publisher_is_received_again_on_the_reused_transceiver(room_and_clients):
    room, clients = room_and_clients
    a = await join(room, clients, "a", 1)
    await join(room, clients, "b", 2)
    await frames_from(a, 2)
    async with room.lock:
        await room.leave("b", reason="left")
    await clients["b"].close()
    transceivers_before = len(room.peers["a"].sub.getTransceivers())
    b2 = await join(room, clients, "b2", 2)
    await wait_for(lambda: any(info["user_id"] == 2 for info in a.tracks.values()))
    assert await frames_from(a, 2, count=5) == 5
    assert await frames_from(a, 2, kind="audio", count=5) == 5
    # The freed transceivers were re-used rather than new m-lines added.
    assert len(room.peers["a"].sub.getTransceivers()) == transceivers_before
    await a.close()
    await b2.close()
    async with room.lock:
        await room.close(reason="test_over")


async def test_a_muted_publisher_is_not_forwarded_whatever_its_client_sends(room_and_clients):
    room, clients = room_and_clients
    a = await join(room, clients, "a", 1)
    b = await join(room, clients, "b", 2)
    assert await frames_from(a, 2, kind="audio", count=3) == 3
    room.mute_user(2, kind="audio", muted=True)  # b's client keeps sending audio regardless
    audio = a.receiver_track(2, "audio")
    await asyncio.sleep(0.5)  # let what was already in flight arrive
    while not audio._queue.empty():
        audio._queue.get_nowait()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(audio.recv(), timeout=1.5)
    assert await frames_from(a, 2, kind="video", count=3) == 3  # only the muted kind stops
    room.mute_user(2, kind="audio", muted=False)
    assert await frames_from(a, 2, kind="audio", count=3) == 3
    await a.close()
    await b.close()
    async with room.lock:
        await room.close(reason="test_over")


async def test_a_member_who_joins_muted_stays_muted(room_and_clients):
    room, clients = room_and_clients
    a = await join(room, clients, "a", 1)
    client = clients["m"] = Client(room, "m", publish=True)
    async with room.lock:
        await room.join(PeerSpec(peer_id="m", session_id=1, user_id=3, name="m", role="student", publish=True, muted=("video",)))
    assert await frames_from(a, 3, kind="audio", count=3) == 3
    await wait_for(lambda: a.receiver_track(3, "video") is not None)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(a.receiver_track(3, "video").recv(), timeout=2)
    await a.close()
    await client.close()
    async with room.lock:
        await room.close(reason="test_over")


class RecordingObserver(RoomObserver):
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def call_setup(self, **kw: Any) -> None:
        self.calls.append(("call_setup", kw))

    def joined(self, **kw: Any) -> None:
        self.calls.append(("joined", kw))

    def bitrate(self, **kw: Any) -> None:
        self.calls.append(("bitrate", kw))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [kw for n, kw in self.calls if n == name]


async def test_what_a_room_measures_leaves_through_its_observer(room_with):
    """The SFU imports no metrics: setups, join times and bitrates reach whatever observer it is given."""
    observer = RecordingObserver()
    room, clients = room_with(observer=observer)
    a = await join(room, clients, "a", 1)
    await join(room, clients, "b", 2)
    await wait_for(lambda: len(observer.named("call_setup")) == 2)
    assert observer.named("call_setup") == [{"result": "success"}] * 2
    assert all(0 < kw["seconds"] < SETUP_TIMEOUT_S for kw in observer.named("joined"))
    await wait_for(lambda: a.receiver_track(2, "video") is not None)
    await room.stats_collect()  # the first collection sets the baseline of byte counts
    await asyncio.sleep(0.5)
    await room.stats_collect()
    directions = {kw["direction"] for kw in observer.named("bitrate")}
    assert directions == {"inbound", "outbound"}
