"""Record one received WebRTC track, as encoded, into a crash-safe Matroska/WebM file.

The caller (an asyncio event loop) hands over depacketized frames with `write`, which only enqueues;
a thread per track parses, orders and muxes them without re-encoding. Streams are set up from the
bitstream itself: VP8 size from its keyframe header, H.264 parameters from a raw-h264 template made
of the first IDR access unit, Opus from an OpusHead carried in a tiny in-memory Ogg template.

Crash safety: FFmpeg's Matroska muxer keeps the current cluster in memory and writes it whole when
the next one starts; `cluster_time_limit` closes clusters every second (a video keyframe also starts
one once 4 KiB are buffered) and `flush_packets` hands each closed cluster to the OS at once. Without
that flag the file's I/O buffer holds up to 256 KiB, half a minute of Opus: a SIGKILL would then lose
far more than the last second. Known limit: a cluster is only closed by the next frame, so during a
pause of the media the last second written stays in memory until media resumes or the writer closes."""
from __future__ import annotations

import io
import logging
import queue
import struct
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from rtc.keyframes import is_keyframe

from . import RecorderError

log = logging.getLogger("classcast.recorder.writer")

MS = Fraction(1, 1000)  # Matroska's native timestamp unit
CLUSTER_TIME_LIMIT_MS = 1000  # at most this much is lost when the process dies
CLUSTER_SIZE_LIMIT = 1 << 20
MAX_VIDEO_FRAME_MS = 1000  # a frame's estimated duration after a pause is capped at this
DEFAULT_VIDEO_FRAME_MS = 33  # duration of a lone first frame (30 fps)
CONTAINER_OPTIONS = {
    "cluster_time_limit": str(CLUSTER_TIME_LIMIT_MS),
    "cluster_size_limit": str(CLUSTER_SIZE_LIMIT),
    "flush_packets": "1",
}

# codec -> (kind, FFmpeg format, file suffix)
CODECS: dict[str, tuple[str, str, str]] = {
    "vp8": ("video", "webm", ".webm"),
    "opus": ("audio", "webm", ".webm"),
    "h264": ("video", "matroska", ".mkv"),
}
OPUS_HEAD = b"OpusHead" + struct.pack("<BBHIhB", 1, 2, 312, 48_000, 0, 0)
_STOP = object()


class TrackWriterError(RecorderError):
    """A track writer was asked for a codec, kind or clock it cannot record."""


@dataclass(frozen=True)
class TrackStats:
    frames: int = 0  # packets written
    bytes: int = 0
    keyframes: int = 0
    dropped: int = 0  # total of the three reasons below plus frames refused after an error or close
    first_ms: int | None = None  # pts of the first packet written
    end_ms: int | None = None  # last pts + its duration
    width: int | None = None
    height: int | None = None
    error: str = ""  # the muxing/opening failure that stopped the writer, if any
    opened: bool = False  # False: no usable frame arrived, so no file exists
    dropped_overflow: int = 0  # the queue was full
    dropped_order: int = 0  # duplicate, out-of-order or negative timestamps, empty frames
    dropped_waiting_keyframe: int = 0  # video before the first keyframe or after a gap


def track_suffix(*, codec: str) -> str:
    """The file suffix of a track recorded in `codec` (".webm" or ".mkv")."""
    return _spec(codec)[2]


def _spec(codec: str) -> tuple[str, str, str]:
    try:
        return CODECS[codec.lower()]
    except KeyError:
        raise TrackWriterError(f"cannot record codec {codec!r} (known: {', '.join(CODECS)})") from None


# ---- bitstream inspection (no decoding) ----

def vp8_keyframe_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) if `data` is a VP8 keyframe, else None (RFC 6386 section 9.1)."""
    if len(data) < 10 or data[0] & 1 or data[3:6] != b"\x9d\x01\x2a":
        return None
    width, height = struct.unpack_from("<HH", data, 6)
    return width & 0x3FFF, height & 0x3FFF


def h264_is_keyframe(data: bytes) -> bool:
    """Whether an Annex-B access unit holds an IDR slice (NAL type 5)."""
    return is_keyframe("h264", data)


def opus_packet_ms(data: bytes) -> int | None:
    """Duration of an Opus packet from its TOC byte (RFC 6716 section 3.1), in ms; None if malformed."""
    if not data:
        return None
    config, code = data[0] >> 3, data[0] & 3
    if config < 12:  # SILK: 10, 20, 40, 60 ms
        samples = (480, 960, 1920, 2880)[config & 3]
    elif config < 16:  # hybrid: 10, 20 ms
        samples = (480, 960)[config & 1]
    else:  # CELT: 2.5, 5, 10, 20 ms
        samples = (120, 240, 480, 960)[config & 3]
    if code == 3:
        if len(data) < 2:
            return None
        count = data[1] & 0x3F
    else:
        count = 1 if code == 0 else 2
    return max(1, round(samples * count / 48)) if count else None


# ---- stream templates: codec parameters without an encoder ----

def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _OGG_CRC_TABLE[((crc >> 24) ^ byte) & 0xFF]
    return crc


def _ogg_crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        r = i << 24
        for _ in range(8):
            r = ((r << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if r & 0x80000000 else (r << 1) & 0xFFFFFFFF
        table.append(r)
    return tuple(table)


_OGG_CRC_TABLE = _ogg_crc_table()


def _ogg_page(payload: bytes, *, sequence: int, flags: int, granule: int) -> bytes:
    lacing = bytes([255] * (len(payload) // 255) + [len(payload) % 255])
    header = b"OggS" + bytes([0, flags]) + struct.pack("<qIII", granule, 1, sequence, 0)
    page = header + bytes([len(lacing)]) + lacing + payload
    return page[:22] + struct.pack("<I", _ogg_crc(page)) + page[26:]


def _opus_template_ogg() -> bytes:
    """An Ogg Opus stream of one silent packet: FFmpeg's Ogg demuxer turns it into an Opus stream with
    our OpusHead as extradata, 48 kHz stereo, which `add_stream_from_template` copies without an
    encoder (PyAV offers no other way to set a codec-less stream's extradata)."""
    tags = b"OpusTags" + struct.pack("<I", 0) + struct.pack("<I", 0)
    return (
        _ogg_page(OPUS_HEAD, sequence=0, flags=2, granule=0)
        + _ogg_page(tags, sequence=1, flags=0, granule=0)
        + _ogg_page(b"\xf8", sequence=2, flags=4, granule=960 + 312)  # one 20 ms silent (DTX) frame
    )


def _add_stream(container: Any, *, codec: str, first: bytes) -> tuple[Any, int | None, int | None]:
    """Add the output stream for `codec`, built from the first usable frame; returns (stream, w, h)."""
    if codec == "vp8":
        size = vp8_keyframe_size(first)
        assert size is not None
        return container.add_mux_stream("vp8", width=size[0], height=size[1]), size[0], size[1]
    template_bytes, template_format = (
        (first, "h264") if codec == "h264" else (_opus_template_ogg(), "ogg")
    )
    with av.open(io.BytesIO(template_bytes), format=template_format) as template:
        stream = container.add_stream_from_template(template.streams[0])
    if codec == "h264":
        return stream, stream.codec_context.width or None, stream.codec_context.height or None
    return stream, None, None


# ---- the writer ----

class _Counts:
    """Mutable counters behind TrackStats; guarded by TrackWriter._lock."""

    def __init__(self) -> None:
        self.frames = self.bytes = self.keyframes = self.dropped_other = 0
        self.dropped_overflow = self.dropped_order = self.dropped_waiting_keyframe = 0
        self.first_ms: int | None = None
        self.end_ms: int | None = None
        self.width: int | None = None
        self.height: int | None = None
        self.error = ""
        self.opened = False

    def snapshot(self) -> TrackStats:
        return TrackStats(
            frames=self.frames, bytes=self.bytes, keyframes=self.keyframes,
            dropped=self.dropped_other + self.dropped_overflow + self.dropped_order + self.dropped_waiting_keyframe,
            first_ms=self.first_ms, end_ms=self.end_ms, width=self.width, height=self.height,
            error=self.error, opened=self.opened, dropped_overflow=self.dropped_overflow,
            dropped_order=self.dropped_order, dropped_waiting_keyframe=self.dropped_waiting_keyframe,
        )


class TrackWriter:
    """One track -> one file. `write` never blocks; `close` drains, writes the trailer and joins."""

    def __init__(self, path: Path, *, kind: str, codec: str, clock_rate: int, queue_max: int = 4000) -> None:
        codec = codec.lower()
        expected_kind, self._format, _ = _spec(codec)
        if kind != expected_kind:
            raise TrackWriterError(f"codec {codec!r} is {expected_kind}, not {kind!r}")
        if clock_rate <= 0:
            raise TrackWriterError(f"clock_rate must be positive, got {clock_rate}")
        if queue_max < 1:
            raise TrackWriterError(f"queue_max must be at least 1, got {queue_max}")
        self.path = Path(path)
        self.kind, self.codec, self.clock_rate = kind, codec, clock_rate
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_max)
        self._lock = threading.Lock()
        self._counts = _Counts()
        self._closing = False
        self._failed = False
        self._gap = False  # a frame was dropped on overflow: video must resume at a keyframe
        # owned by the writer thread
        self._container: Any = None
        self._stream: Any = None
        self._last_ms: int | None = None
        self._last_ts: int | None = None
        self._frame_ms = DEFAULT_VIDEO_FRAME_MS
        self._need_keyframe = kind == "video"
        self._thread = threading.Thread(target=self._run, name=f"track-writer {self.path.name}", daemon=True)
        self._thread.start()

    # -- caller side (event loop thread) --

    def write(self, data: bytes, *, timestamp: int) -> None:
        """Enqueue one encoded frame; `timestamp` in 1/clock_rate from the file's t=0. Never blocks."""
        with self._lock:
            if self._closing or self._failed:
                self._counts.dropped_other += 1
                return
            try:
                self._queue.put_nowait((bytes(data), int(timestamp), self._gap))
                self._gap = False
            except queue.Full:
                self._counts.dropped_overflow += 1
                self._gap = True

    def stats(self) -> TrackStats:
        with self._lock:
            return self._counts.snapshot()

    def close(self) -> TrackStats:
        """Write what is queued, finish the file (duration, cues) and stop the thread. Idempotent."""
        with self._lock:
            already = self._closing
            self._closing = True
        if not already:
            self._queue.put(_STOP)  # may wait for the thread to make room: never called on the loop
        self._thread.join()
        return self.stats()

    # -- writer thread --

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            if self._failed:
                with self._lock:
                    self._counts.dropped_other += 1
                continue
            try:
                self._handle(*item)
            except Exception as exc:  # disk full, bad path, muxer refusal: report, never raise
                self._fail(exc)
        self._finish()

    def _fail(self, exc: BaseException) -> None:
        log.warning("recording %s failed: %s", self.path, exc)
        with self._lock:
            self._failed = True
            self._counts.error = self._counts.error or f"{exc.__class__.__name__}: {exc}"
            self._counts.dropped_other += 1
        self._finish()

    def _finish(self) -> None:
        container, self._container = self._container, None
        if container is None:
            return
        try:
            container.close()
        except Exception as exc:
            with self._lock:
                self._failed = True
                self._counts.error = self._counts.error or f"{exc.__class__.__name__}: {exc}"

    def _handle(self, data: bytes, timestamp: int, gap: bool) -> None:
        if gap and self.kind == "video":
            self._need_keyframe = True
        ms = (timestamp * 2000 + self.clock_rate) // (2 * self.clock_rate)  # nearest ms
        late = self._last_ts is not None and (timestamp <= self._last_ts or ms <= (self._last_ms or 0))
        if late or not data or timestamp < 0:  # Matroska needs strictly increasing timestamps
            with self._lock:
                self._counts.dropped_order += 1
            return
        keyframe = True
        if self.kind == "video":
            keyframe = vp8_keyframe_size(data) is not None if self.codec == "vp8" else h264_is_keyframe(data)
            if self._need_keyframe and not keyframe:
                with self._lock:
                    self._counts.dropped_waiting_keyframe += 1
                return
        if self._container is None and not self._open(data):
            with self._lock:
                self._counts.dropped_waiting_keyframe += 1
            return
        duration = self._duration_ms(data, ms)
        packet = av.Packet(data)
        packet.stream = self._stream
        packet.time_base = MS
        packet.pts = packet.dts = ms
        packet.duration = duration
        packet.is_keyframe = keyframe
        self._container.mux(packet)
        self._need_keyframe = False
        self._last_ts, self._last_ms = timestamp, ms
        with self._lock:
            c = self._counts
            c.frames += 1
            c.bytes += len(data)
            c.keyframes += 1 if keyframe and self.kind == "video" else 0
            c.first_ms = ms if c.first_ms is None else c.first_ms
            c.end_ms = ms + duration

    def _duration_ms(self, data: bytes, ms: int) -> int:
        if self.kind == "audio":
            return opus_packet_ms(data) or 20
        if self._last_ms is not None:  # the previous gap is the best guess for this frame
            self._frame_ms = min(ms - self._last_ms, MAX_VIDEO_FRAME_MS)
        return self._frame_ms

    def _open(self, first: bytes) -> bool:
        """Open the file for the first usable frame; False if that frame cannot describe the stream
        (an IDR whose parameter sets FFmpeg cannot parse): the next keyframe gets its chance."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        container = av.open(str(self.path), "w", format=self._format, container_options=CONTAINER_OPTIONS)
        try:  # the file itself is only created when the header is written, on the first mux
            stream, width, height = _add_stream(container, codec=self.codec, first=first)
            stream.time_base = MS
        except (av.FFmpegError, IndexError) as exc:
            container.close()
            log.info("recording %s: first keyframe unusable (%s), waiting for the next", self.path, exc)
            return False
        except BaseException:
            container.close()
            raise
        self._container, self._stream = container, stream
        with self._lock:
            self._counts.opened = True
            self._counts.width, self._counts.height = width, height
        return True
