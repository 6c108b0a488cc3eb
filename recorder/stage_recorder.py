"""Per-track recording of the stage: a hidden subscriber whose received encoded frames go, untouched,
into one file per participant, kind and stay on stage (someone who leaves and comes back gets a new
file, not a gap). Nothing is decoded: the subscriber's encoded-frame tap hands each frame to that
track's `TrackWriter`, which muxes it on its own thread.

Timeline: every offset counts from the recording's t=0 (`RecorderConfig.started_at`). A file's own t=0
is the moment its participant came on stage (or the recording started, if later), so `start_ms` in the
manifest agrees with the event log; the first frame sits at the offset it arrived at, and later frames
follow their RTP timestamps, so audio and video of one person stay within a frame of each other.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rtc.stage_client import StageClientConfig, StageSubscriber

from .writer import TrackWriter

log = logging.getLogger("classcast.recorder")
ON_STAGE = "on_stage"
EXTENSIONS = {"vp8": "webm", "opus": "webm", "h264": "mkv"}
RESYNC_S = 1.0  # RTP time may drift from arrival time by jitter, never by this much


@dataclass(frozen=True)
class RecorderConfig:
    folder: Path  # the recording's spool folder; track files go under folder/tracks
    started_at: datetime  # t=0 of the recording (aware, UTC)
    taken_names: frozenset[str] = frozenset()  # files of earlier runs of this recording (kept, never reused)
    poll_s: float = 0.25
    keyframe_retry_s: float = 1.0


@dataclass
class _TrackFile:
    name: str
    mid: str
    user_id: int
    participant_name: str
    participant_role: str
    kind: str
    codec: str
    since: datetime | None
    start_ms: int
    first_media_ms: int
    clock_rate: int
    first_ts: int
    lead: int  # first frame's timestamp in the file, clock units (arrival - file start)
    writer: TrackWriter
    end_ms: int | None = None
    final: dict[str, Any] = field(default_factory=dict)
    keyframe_asked_at: float = 0.0
    resyncs: int = 0

    def report(self) -> dict[str, Any]:
        stats = self.writer.stats()
        return {
            "name": self.name, "kind": self.kind, "codec": self.codec, "user_id": self.user_id,
            "participant_name": self.participant_name, "participant_role": self.participant_role,
            "start_ms": self.start_ms, "first_media_ms": self.first_media_ms, "end_ms": self.end_ms,
            "frames": stats.frames, "bytes": stats.bytes, "dropped": stats.dropped, "error": stats.error,
            "opened": stats.opened, "resyncs": self.resyncs,
        }


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class StageRecorder:
    def __init__(
        self, signaling: StageClientConfig, config: RecorderConfig, *, subscriber: StageSubscriber | None = None
    ) -> None:
        self.config = config
        self.subscriber = subscriber or StageSubscriber(signaling, decode=False)
        self.subscriber.on_encoded = self._on_frame
        self.subscriber.decode = False
        self._open: dict[str, _TrackFile] = {}  # by mid
        self._closed: list[_TrackFile] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._taken = set(config.taken_names)
        self._stopping = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def joined(self) -> bool:
        return self.subscriber.joined.is_set()

    def now_ms(self) -> int:
        return round((time.time() - self.config.started_at.timestamp()) * 1000)

    async def run(self) -> None:
        """Record until `stop()` or until the class connection closes (its error propagates)."""
        self._loop = asyncio.get_running_loop()
        (self.config.folder / "tracks").mkdir(parents=True, exist_ok=True)
        joined = asyncio.ensure_future(self.subscriber.run())
        try:
            while not joined.done() and not self._stopping.is_set():
                self._sync()
                await self._ask_keyframes()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.config.poll_s)
        finally:
            for mid in list(self._open):
                self._end(mid)
            if self._closing:
                await asyncio.gather(*self._closing, return_exceptions=True)
            await self.subscriber.leave(joined)
        if not self._stopping.is_set():
            joined.result()

    async def stop(self) -> None:
        self._stopping.set()

    def files(self) -> list[dict[str, Any]]:
        """Every file this run wrote or is writing, for the job's row."""
        return [f.report() for f in [*self._closed, *self._open.values()]]

    def stats(self) -> dict[str, Any]:
        files = self.files()
        return {
            "joined": self.joined,
            "tracks_open": len(self._open),
            "files": len(files),
            "frames": sum(f["frames"] for f in files),
            "bytes": sum(f["bytes"] for f in files),
            "dropped": sum(f["dropped"] for f in files),
            "errors": [f"{f['name']}: {f['error']}" for f in files if f["error"]],
        }

    # --- stage following -------------------------------------------------------------------------

    def _stage(self) -> dict[int, dict[str, Any]]:
        return {
            int(m["user_id"]): m
            for m in self.subscriber.state.get("stage") or []
            if m.get("state", ON_STAGE) == ON_STAGE and "user_id" in m
        }

    def _sync(self) -> None:
        """Close the files of tracks that left the stage (or whose transceiver now carries someone else)."""
        stage = self._stage()
        tracks = self.subscriber.tracks
        for mid, current in list(self._open.items()):
            track = tracks.get(mid)
            member = stage.get(current.user_id)
            gone = track is None or track.user_id != current.user_id or member is None
            if not gone and _parse_time(member.get("since")) != current.since:
                gone = True  # left and came back between two polls: a new stay, a new file
            if gone:
                self._end(mid)

    async def _ask_keyframes(self) -> None:
        """A video file starts with a keyframe: until its writer has one, ask the sender (PLI)."""
        now = time.monotonic()
        for mid, current in list(self._open.items()):
            if current.kind != "video" or current.writer.stats().opened:
                continue
            if now - current.keyframe_asked_at >= self.config.keyframe_retry_s:
                current.keyframe_asked_at = now
                with contextlib.suppress(Exception):
                    await self.subscriber.request_keyframe(mid)

    def _end(self, mid: str) -> None:
        current = self._open.pop(mid)
        self._closed.append(current)

        async def close() -> None:
            stats = await asyncio.to_thread(current.writer.close)
            current.end_ms = current.start_ms + stats.end_ms if stats.opened else None
            log.info("track file closed: %s (%d frames)", current.name, stats.frames)

        task = asyncio.ensure_future(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # --- frames (event loop thread: hand off only) --------------------------------------------------

    def _on_frame(self, mid: str, codec: str, data: bytes, timestamp: int, clock_rate: int) -> None:
        if self._stopping.is_set():
            return
        current = self._open.get(mid)
        if current is None:
            current = self._begin(mid, codec, timestamp, clock_rate)
            if current is None:
                return
        ts = current.lead + (timestamp - current.first_ts)
        wall = round((self.now_ms() - current.start_ms) * current.clock_rate / 1000)
        if abs(ts - wall) > current.clock_rate * RESYNC_S:
            # The sender's timestamps jumped (a new source behind the same track, a reset): follow
            # the arrival clock from here rather than leave a gap of hours or stack frames up.
            current.first_ts, current.lead, ts = timestamp, wall, wall
            current.resyncs += 1
        if ts >= 0:
            current.writer.write(data, timestamp=ts)

    def _begin(self, mid: str, codec: str, timestamp: int, clock_rate: int) -> _TrackFile | None:
        track = self.subscriber.tracks.get(mid)
        member = self._stage().get(track.user_id) if track is not None else None
        if track is None or member is None or codec not in EXTENSIONS:
            return None  # not (or no longer) on stage, or a codec we do not record
        now_ms = self.now_ms()
        since = _parse_time(member.get("since"))
        since_ms = round((since.timestamp() - self.config.started_at.timestamp()) * 1000) if since else now_ms
        start_ms = min(max(0, since_ms), now_ms)
        name = self._name(track.user_id, track.kind, EXTENSIONS[codec])
        current = _TrackFile(
            name=name, mid=mid, user_id=track.user_id, participant_name=str(member.get("name") or track.name),
            participant_role=str(member.get("role") or track.role), kind=track.kind, codec=codec, since=since,
            start_ms=start_ms, first_media_ms=now_ms, clock_rate=clock_rate, first_ts=timestamp,
            lead=round((now_ms - start_ms) * clock_rate / 1000),
            writer=TrackWriter(self.config.folder / name, kind=track.kind, codec=codec, clock_rate=clock_rate),
        )
        self._open[mid] = current
        log.info("track file opened: %s (on stage at +%d ms, media at +%d ms)", name, start_ms, now_ms)
        return current

    def _name(self, user_id: int, kind: str, ext: str) -> str:
        n = 1
        while (name := f"tracks/u{user_id}-{kind}-{n}.{ext}") in self._taken:
            n += 1
        self._taken.add(name)
        return name
