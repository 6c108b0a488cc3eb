"""FLV in, HLS out: one thread per publisher demuxes the FLV bytes with PyAV and remuxes the packets
(no re-encoding) into one MPEG-TS container per segment, written atomically, then the playlists.

Blocking PyAV work runs in this thread, never on the event loop; the loop only appends bytes to the pipe.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import av

from . import PackagerError
from .playlist import SegmentInfo, segment_name
from .segments import FolderHistory, SegmentCutter, wall_clock
from .storage import write_playlists

log = logging.getLogger(__name__)


class SegmenterFailed(PackagerError):
    """The segmenter thread stopped on an error (e.g. media it cannot remux)."""


class FlvPipe:
    """Bytes from the event loop to PyAV's blocking read() in the segmenter thread."""

    def __init__(self) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._cond = threading.Condition()
        self._eof = False
        self.size = 0

    def put(self, data: bytes) -> None:
        with self._cond:
            if self._eof:
                return
            self._chunks.append(data)
            self.size += len(data)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def read(self, n: int = -1) -> bytes:
        with self._cond:
            while not self._chunks and not self._eof:
                self._cond.wait()
            if not self._chunks:
                return b""
            # Hand over everything queued (up to n) at once: fewer wake-ups and read calls.
            parts, taken = [], 0
            while self._chunks and (n <= 0 or taken < n):
                chunk = self._chunks.popleft()
                if 0 < n < taken + len(chunk):
                    self._chunks.appendleft(chunk[n - taken :])
                    chunk = chunk[: n - taken]
                parts.append(chunk)
                taken += len(chunk)
            self.size -= taken
            return b"".join(parts)


class Segmenter:
    def __init__(
        self,
        folder: Path,
        history: FolderHistory,
        *,
        segment_duration_s: float,
        live_window: int,
        high_water_bytes: int,
        on_segment: Callable[[SegmentInfo], None],
    ) -> None:
        self.folder = folder
        self.history = history
        self.segment_duration_s = segment_duration_s
        self.live_window = live_window
        self.high_water_bytes = high_water_bytes
        self.on_segment = on_segment  # called in the segmenter thread
        self.error: BaseException | None = None
        self._pipe = FlvPipe()
        self._thread = threading.Thread(target=self._run, name=f"hls-segmenter:{folder.name}", daemon=True)
        self._done = threading.Event()

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.history.begin_publish()
        self._thread.start()

    async def write(self, data: bytes) -> None:
        """Queue FLV bytes; waits (so the socket is not read) while the thread is behind."""
        if self.error is not None or self._done.is_set():
            raise SegmenterFailed(f"segmenter stopped: {self.error!r}")
        self._pipe.put(data)
        while self._pipe.size > self.high_water_bytes and not self._done.is_set():
            await asyncio.sleep(0.02)

    async def finish(self) -> None:
        """End of input: the last segment is cut, playlists get ENDLIST and the VOD playlist is written."""
        self._pipe.close()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    # --- the thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        writer = _SegmentWriter(self)
        try:
            with av.open(self._pipe, "r", format="flv", options={"analyzeduration": "1000000"}) as source:
                writer.remux(source)
        except av.FFmpegError as exc:
            # A publisher cut mid-tag or sending undecodable data ends here; what was cut stays cut.
            log.info("segmenter %s: input ended with %s", self.folder, exc)
        except BaseException as exc:  # noqa: BLE001 - reported to the session, never lost
            self.error = exc
            log.exception("segmenter %s failed", self.folder)
        finally:
            self._pipe.close()
            try:
                writer.close_segment(final=True)
                if self.history.segments:
                    write_playlists(self.folder, self.history, window=self.live_window, target_s=self.segment_duration_s, ended=True)
            except BaseException as exc:  # noqa: BLE001
                self.error = self.error or exc
                log.exception("segmenter %s could not finish", self.folder)
            self._done.set()


class _SegmentWriter:
    """The segment being written: one mpegts container, renamed into place when it is cut."""

    def __init__(self, owner: Segmenter) -> None:
        self.owner = owner
        self.cutter = SegmentCutter(owner.segment_duration_s)
        self.container: av.container.OutputContainer | None = None
        self.out_streams: dict[int, av.stream.Stream] = {}
        self.inputs: list[av.stream.Stream] = []
        self.index = -1
        self.tmp_path: Path | None = None
        self.anchor: tuple[datetime, float] | None = None
        self.last_video: tuple[float, float] = (0.0, 0.0)  # (previous, last) video packet times
        self.end_s = 0.0

    def remux(self, source: av.container.InputContainer) -> None:
        video = next(iter(source.streams.video), None)
        audio = next(iter(source.streams.audio), None)
        self.inputs = [s for s in (video, audio) if s is not None]
        if not self.inputs:
            return
        for packet in source.demux(self.inputs):
            if packet.dts is None:
                continue  # the demuxer's flush packet
            t = float((packet.pts if packet.pts is not None else packet.dts) * packet.time_base)
            is_video = packet.stream is video
            boundary = packet.is_keyframe if is_video else video is None
            if self.container is None:
                if not boundary:
                    continue  # a segment must start on a keyframe
                if self.anchor is None:
                    self.anchor = (datetime.now(timezone.utc), t)
                self.open_segment(t)
            elif boundary and self.cutter.should_cut(t, keyframe=True):
                self.close_segment(final=False, end_s=t)
                self.open_segment(t)
            if is_video:
                self.last_video = (self.last_video[1], t)
            duration = float(packet.duration * packet.time_base) if packet.duration else 0.0
            self.end_s = max(self.end_s, t + duration)
            packet.stream = self.out_streams[packet.stream.index]
            assert self.container is not None
            self.container.mux(packet)

    def open_segment(self, t: float) -> None:
        self.index = self.owner.history.take_index()
        self.tmp_path = self.owner.folder / f".{segment_name(self.index)}.tmp"
        self.container = av.open(str(self.tmp_path), "w", format="mpegts")
        self.out_streams = {s.index: self.container.add_stream_from_template(s) for s in self.inputs}
        self.cutter.begin(t)
        self.end_s = t

    def close_segment(self, *, final: bool, end_s: float | None = None) -> None:
        if self.container is None or self.tmp_path is None:
            return
        self.container.close()
        self.container = None
        start = self.cutter.start_s or 0.0
        if end_s is None:  # the last segment: up to the end of its last frame
            previous, last = self.last_video
            frame = last - previous if 0 < last - previous < 1 else 0.0
            end_s = max(self.end_s, last + frame)
        duration = max(end_s - start, 0.001)
        os.replace(self.tmp_path, self.owner.folder / segment_name(self.index))
        assert self.anchor is not None
        info = self.owner.history.add(self.index, duration, wall_clock(self.anchor[0], self.anchor[1], start))
        owner = self.owner
        write_playlists(owner.folder, owner.history, window=owner.live_window, target_s=owner.segment_duration_s, ended=False)
        owner.on_segment(info)
