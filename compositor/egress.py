"""Async glue from the stage to the program: a hidden `StageSubscriber` joins the class, one reader task
per stage track pushes decoded frames into the `Program`, and the stage (members, order, names, muted
cameras) is followed by polling the subscriber's class state, so changes reach the program within
`poll_s`. Only frame hand-off happens on the event loop; all media work runs in the program's threads."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from aiortc.mediastreams import MediaStreamError

from .config import Participant
from .program import Program
from rtc.stage_client import StageClientConfig, StageSubscriber, StageTrack

log = logging.getLogger("classcast.egress")
ON_STAGE = "on_stage"


class Subscriber(Protocol):
    tracks: dict[str, StageTrack]
    state: dict[str, Any]

    async def run(self) -> None: ...

    async def close(self) -> None: ...

    async def leave(self, running: "asyncio.Future[None]") -> None: ...


def stage_participants(state: dict[str, Any], tracks: dict[str, StageTrack]) -> list[Participant]:
    """Who the program shows, in stage order: members on stage per the class state, then anyone whose
    tracks we receive before the state says so. A member with a muted camera gets their name card."""
    out: dict[int, Participant] = {}
    for member in state.get("stage") or []:
        if member.get("state", ON_STAGE) != ON_STAGE or "user_id" not in member:
            continue
        uid = int(member["user_id"])
        out[uid] = Participant(uid, str(member.get("name", "")), str(member.get("role", "student")),
                               video_muted=bool(member.get("video_muted", False)))
    for track in tracks.values():
        if track.user_id not in out:
            out[track.user_id] = Participant(track.user_id, track.name, track.role or "student")
    return list(out.values())


class StageCompositor:
    def __init__(
        self,
        config: StageClientConfig,
        program: Program,
        *,
        subscriber: Subscriber | None = None,
        poll_s: float = 0.25,
    ) -> None:
        self.program = program
        self.poll_s = poll_s
        self.subscriber: Subscriber = subscriber or StageSubscriber(config)
        if isinstance(self.subscriber, StageSubscriber):
            self.subscriber.on_tracks = self._on_tracks
        self._readers: dict[str, tuple[StageTrack, asyncio.Task[None]]] = {}
        self._stopping = asyncio.Event()
        self._participants: list[Participant] | None = None

    async def run(self) -> None:
        """Follow the stage until `stop()` or until the class connection closes (its error propagates)."""
        joined = asyncio.ensure_future(self.subscriber.run())
        try:
            while not joined.done() and not self._stopping.is_set():
                self._on_tracks(dict(self.subscriber.tracks))  # also catches tracks set without a callback
                self._sync_stage()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.poll_s)
        finally:
            for _, task in self._readers.values():
                task.cancel()
            await asyncio.gather(*(task for _, task in self._readers.values()), return_exceptions=True)
            self._readers.clear()
            await self.subscriber.leave(joined)
        if not self._stopping.is_set():
            joined.result()  # the connection closed by itself: raise what closed it

    async def stop(self) -> None:
        self._stopping.set()

    def _sync_stage(self) -> None:
        participants = stage_participants(self.subscriber.state, self.subscriber.tracks)
        if participants != self._participants:
            self._participants = participants
            self.program.set_participants(participants)

    def _on_tracks(self, tracks: dict[str, StageTrack]) -> None:
        for mid in list(self._readers):
            current = tracks.get(mid)
            track, task = self._readers[mid]
            if current is None or current.track is not track.track:  # left, or renegotiated
                task.cancel()
                del self._readers[mid]
        for mid, track in tracks.items():
            if mid not in self._readers and track.kind in ("audio", "video"):
                self._readers[mid] = (track, asyncio.ensure_future(self._read(track)))
        self._sync_stage()

    async def _read(self, track: StageTrack) -> None:
        push = self.program.push_video if track.kind == "video" else self.program.push_audio
        try:
            while True:
                push(track.user_id, await track.track.recv())
        except MediaStreamError:
            log.info("stage track ended: user %s %s", track.user_id, track.kind)
