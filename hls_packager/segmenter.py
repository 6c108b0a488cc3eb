"""FLV in, HLS out: one thread per publisher demuxes the FLV bytes with PyAV and remuxes the packets
(no re-encoding) into one MPEG-TS container per segment, written atomically, then the playlists.

Low-latency HLS: the segment's muxer writes into memory, and every ~1/3 s of media the bytes written so
far become a part file (`seg-<n>.part<k>.ts`) and the live playlist lists it at once. The segment file is
the concatenation of its parts, byte for byte, so players that know nothing of parts get the same media.

Blocking PyAV work runs in this thread, never on the event loop; the loop only appends bytes to the pipe.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import av

from . import PackagerError
from .playlist import LiveEdge, PartInfo, SegmentInfo, part_name, segment_name
from .segments import FolderHistory, PartCutter, SegmentCutter, wall_clock
from .storage import parts_remove, write_atomic, write_playlists

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
        part_target_s: float = 0.0,
    ) -> None:
        self.folder = folder
        self.history = history
        self.segment_duration_s = segment_duration_s
        self.part_target_s = part_target_s  # 0: no parts (plain HLS)
        self.live_window = live_window
        self.high_water_bytes = high_water_bytes
        self.on_segment = on_segment  # called in the segmenter thread
        self.error: BaseException | None = None
        self._pipe = FlvPipe()
        self._thread = threading.Thread(target=self._run, name=f"hls-segmenter:{folder.name}", daemon=True)
        self._done = threading.Event()

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        parts_remove(self.folder)  # a previous publisher's parts are no longer listed anywhere
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
                parts_remove(self.folder)  # the ended playlist lists whole segments only
            except BaseException as exc:  # noqa: BLE001
                self.error = self.error or exc
                log.exception("segmenter %s could not finish", self.folder)
            self._done.set()


# MPEG-TS costs little on video (big PES packets) but a lot on a weak link's rung: ffmpeg's defaults put
# every AAC frame (21 ms) in a PES of its own, one 188-byte packet mostly stuffing, and PAT+PMT ten times a
# second; 120k video + 48k AAC came out at 223 kbit/s, 186 with these options (the same media).
AUDIO_PES_S = 0.1  # AAC frames grouped into one PES: audio reaches a part at most this late (the muxer holds it)
ONCE_S = 3600.0  # a table period longer than any segment: written at the segment's start only


def mpegts_options(part_target_s: float) -> dict[str, str]:
    """Muxer options for one segment (part_target_s 0: plain HLS, no parts)."""
    return {
        # Every PES reaches _MuxedBytes as soon as it is written, so a part holds what was muxed before its cut.
        "flush_packets": "1",
        # max_delay (µs) lets audio wait for AUDIO_PES_S of frames (half of it, in ffmpeg) before its PES
        # goes out; a segment's close flushes the rest, so a segment is whole.
        "max_delay": str(int(2 * AUDIO_PES_S * 1_000_000)),
        "mpegts_copyts": "1",  # timestamps as they come (max_delay would shift them all by twice its value)
        # PAT+PMT: ffmpeg writes them before every keyframe (each segment's start) and otherwise this often:
        # about once per part, so every part holds the tables a demuxer starts from.
        "pat_period": f"{0.9 * part_target_s:.3f}" if part_target_s > 0 else str(ONCE_S),
        "sdt_period": str(ONCE_S),  # the DVB service table: no HLS player reads it
    }


class _MuxedBytes:
    """The muxer's output file: bytes accumulate in memory until the segmenter takes them as a part."""

    def __init__(self) -> None:
        self.pending = bytearray()

    def write(self, data: bytes) -> int:
        self.pending += data
        return len(data)

    def take(self) -> bytes:
        data = bytes(self.pending)
        self.pending.clear()
        return data


class _SegmentWriter:
    """The segment being written: one mpegts container writing into memory; with low latency its bytes
    are cut into part files as they come, and the whole segment is written when it is cut."""

    def __init__(self, owner: Segmenter) -> None:
        self.owner = owner
        self.cutter = SegmentCutter(owner.segment_duration_s)
        self.low_latency = owner.part_target_s > 0
        self.part_cutter = PartCutter(owner.part_target_s)
        self.container: av.container.OutputContainer | None = None
        self.out_streams: dict[int, av.stream.Stream] = {}
        self.inputs: list[av.stream.Stream] = []
        self.index = -1
        self.output = _MuxedBytes()
        self.chunks: list[bytes] = []  # the segment so far (its parts' bytes)
        self.parts: list[PartInfo] = []
        self.part_independent: bool | None = None  # does the part being written start on a keyframe
        self.listed_parts: collections.deque[tuple[int, int]] = collections.deque()  # (index, parts) of closed segments
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
            paces_parts = is_video or video is None
            if self.container is None:
                if not boundary:
                    continue  # a segment must start on a keyframe
                if self.anchor is None:
                    self.anchor = (datetime.now(timezone.utc), t)
                self.open_segment(t)
            elif boundary and self.cutter.should_cut(t, keyframe=True, on_grid=video is None):
                self.close_segment(final=False, end_s=t)
                self.open_segment(t)
            elif self.low_latency and paces_parts and self.part_cutter.should_cut(t):
                self.cut_part(t)
            if paces_parts and self.part_independent is None:
                self.part_independent = boundary
            if is_video:
                self.last_video = (self.last_video[1], t)
            duration = float(packet.duration * packet.time_base) if packet.duration else 0.0
            self.end_s = max(self.end_s, t + duration)
            packet.stream = self.out_streams[packet.stream.index]
            assert self.container is not None
            self.container.mux(packet)

    def open_segment(self, t: float) -> None:
        self.index = self.owner.history.take_index()
        self.container = av.open(self.output, "w", format="mpegts", options=mpegts_options(self.owner.part_target_s))
        self.out_streams = {s.index: self.container.add_stream_from_template(s) for s in self.inputs}
        self.cutter.begin(t)
        self.part_cutter.begin(t)
        self.chunks, self.parts, self.part_independent = [], [], None
        self.end_s = t

    def cut_part(self, t: float) -> None:
        """The bytes muxed since the last cut become part k of this segment, listed at once."""
        self.add_part(self.output.take(), t - self.part_cutter.start_s)
        self.part_cutter.begin(t)
        self.part_independent = None
        self.publish_edge()

    def add_part(self, data: bytes, duration_s: float) -> None:
        self.chunks.append(data)
        if not self.low_latency:
            return
        name = part_name(self.index, len(self.parts))
        write_atomic(self.owner.folder / name, data)
        self.parts.append(PartInfo(name, max(duration_s, 0.001), bool(self.part_independent)))

    def edge(self, *, hint_index: int, open_parts: bool) -> LiveEdge | None:
        if not self.low_latency:
            return None
        assert self.anchor is not None
        parts = tuple(self.parts) if open_parts else ()
        start = self.cutter.start_s or 0.0
        return LiveEdge(
            part_target_s=self.owner.part_target_s,
            parts=parts,
            hint=part_name(hint_index, len(parts)),
            program_date_time=wall_clock(self.anchor[0], self.anchor[1], start) if parts else None,
            discontinuity=self.owner.history.pending_discontinuity,
        )

    def publish_edge(self) -> None:
        owner = self.owner
        write_playlists(
            owner.folder, owner.history, window=owner.live_window, target_s=owner.segment_duration_s, ended=False,
            edge=self.edge(hint_index=self.index, open_parts=True), archive=False,
        )

    def close_segment(self, *, final: bool, end_s: float | None = None) -> None:
        if self.container is None:
            return
        self.container.close()
        self.container = None
        start = self.cutter.start_s or 0.0
        if end_s is None:  # the last segment: up to the end of its last frame
            previous, last = self.last_video
            frame = last - previous if 0 < last - previous < 1 else 0.0
            end_s = max(self.end_s, last + frame)
        duration = max(end_s - start, 0.001)
        self.add_part(self.output.take(), end_s - self.part_cutter.start_s)
        owner = self.owner
        write_atomic(owner.folder / segment_name(self.index), b"".join(self.chunks))
        assert self.anchor is not None
        info = owner.history.add(self.index, duration, wall_clock(self.anchor[0], self.anchor[1], start), tuple(self.parts))
        self.chunks, self.parts = [], []
        self.forget_old_parts(info)
        if not final:
            # The next segment starts with the packet that cut this one: hint at its first part.
            edge = self.edge(hint_index=owner.history.next_index, open_parts=False)
            write_playlists(owner.folder, owner.history, window=owner.live_window, target_s=owner.segment_duration_s, ended=False, edge=edge)
        owner.on_segment(info)

    def forget_old_parts(self, info: SegmentInfo) -> None:
        """Part files of segments whose parts are no longer listed go (two segments later than that, for
        players still fetching them); the segment file holds the same bytes."""
        if not info.parts:
            return
        self.listed_parts.append((info.index, len(info.parts)))
        while len(self.listed_parts) > LiveEdge.parts_segments + 2:
            index, count = self.listed_parts.popleft()
            for k in range(count):
                (self.owner.folder / part_name(index, k)).unlink(missing_ok=True)
