"""The RTMP chunk stream: an incremental parser (bytes in -> whole messages out) and a writer.

Pure (no sockets), so framing, limits and garbage handling are tested by feeding bytes. Timestamps follow
FFmpeg's reading (a type-3 chunk that starts a new message adds the previous timestamp field again),
which is what FFmpeg/PyAV/OBS-style writers produce.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .errors import LimitError, ProtocolError

# Message type ids (RTMP spec 5.4, 7.1).
SET_CHUNK_SIZE, ABORT, ACK, USER_CONTROL, WINDOW_ACK_SIZE, SET_PEER_BANDWIDTH = 1, 2, 3, 4, 5, 6
AUDIO, VIDEO, DATA_AMF3, COMMAND_AMF3, DATA_AMF0, COMMAND_AMF0 = 8, 9, 15, 17, 18, 20
HANDSHAKE_SIZE = 1536
MAX_CHUNK_SIZE = 0x7FFFFFFF
MAX_OPEN_CHUNK_STREAMS = 32  # chunk streams with a message half-received at once


@dataclass(frozen=True)
class Message:
    type_id: int
    stream_id: int
    timestamp: int  # ms
    payload: bytes


@dataclass
class _ChunkStream:
    timestamp: int = 0
    ts_field: int = 0  # the last timestamp/delta field read (FFmpeg's ts_field)
    length: int = 0
    type_id: int = 0
    stream_id: int = 0
    extended: bool = False
    body: bytearray = field(default_factory=bytearray)
    started: bool = False  # a header of type 0 was seen (types 1-3 need one before them)


class ChunkParser:
    """Feed received bytes; get whole messages. Protocol-control messages that change framing
    (set chunk size, abort) are applied here and also returned, so the session can see them.

    `push` + `next_message` parse one message at a time, so limits changed between two messages (the
    server raises them once a publish is accepted) apply to the very next chunk header."""

    def __init__(self, *, max_message_bytes: int, max_pending_bytes: int | None = None) -> None:
        self.chunk_size = 128
        self._buf = bytearray()
        self._pos = 0  # parsed up to here; trimmed at the next push
        self._streams: dict[int, _ChunkStream] = {}
        self._pending = 0  # bytes of half-received messages, over all chunk streams
        self.set_limits(max_message_bytes=max_message_bytes, max_pending_bytes=max_pending_bytes)

    def set_limits(self, *, max_message_bytes: int, max_pending_bytes: int | None = None) -> None:
        """One message's length, and half-received bytes over all chunk streams (default: 2 messages)."""
        self.max_message_bytes = max_message_bytes
        self.max_pending_bytes = 2 * max_message_bytes if max_pending_bytes is None else max_pending_bytes

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf) - self._pos + self._pending

    def push(self, data: bytes) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_message(self) -> Message | None:
        """The next whole message from the bytes pushed so far, or None until more arrive."""
        out: list[Message] = []
        while not out:
            parsed = self._parse_chunk(self._pos, out)
            if parsed is None:
                return None
            self._pos = parsed
        return out[0]

    def feed(self, data: bytes) -> list[Message]:
        self.push(data)
        out: list[Message] = []
        while (message := self.next_message()) is not None:
            out.append(message)
        return out

    def _parse_chunk(self, pos: int, out: list[Message]) -> int | None:
        """Parse one chunk at pos; return the position after it, or None if more bytes are needed."""
        buf = self._buf
        end = len(buf)
        if pos >= end:
            return None
        first = buf[pos]
        fmt, csid = first >> 6, first & 0x3F
        pos += 1
        if csid == 0:
            if pos + 1 > end:
                return None
            csid = 64 + buf[pos]
            pos += 1
        elif csid == 1:
            if pos + 2 > end:
                return None
            csid = 64 + buf[pos] + (buf[pos + 1] << 8)
            pos += 2
        header_size = (11, 7, 3, 0)[fmt]
        if pos + header_size > end:
            return None
        cs = self._streams.get(csid)
        if cs is None:
            if fmt != 0:
                raise ProtocolError(f"chunk type {fmt} on chunk stream {csid} before any type-0 header")
            if len(self._streams) >= MAX_OPEN_CHUNK_STREAMS:
                self._forget_idle_streams()
                if len(self._streams) >= MAX_OPEN_CHUNK_STREAMS:
                    raise ProtocolError("too many chunk streams")
            cs = _ChunkStream()
        new_message = not cs.body
        ts_field = cs.ts_field
        length, type_id, stream_id = cs.length, cs.type_id, cs.stream_id
        if fmt <= 2:
            ts_field = int.from_bytes(buf[pos : pos + 3], "big")
        if fmt <= 1:
            length = int.from_bytes(buf[pos + 3 : pos + 6], "big")
            type_id = buf[pos + 6]
        if fmt == 0:
            stream_id = struct.unpack_from("<I", buf, pos + 7)[0]
        pos += header_size
        extended = ts_field >= 0xFFFFFF if fmt <= 2 else cs.extended
        if extended:
            if pos + 4 > end:
                return None
            if fmt <= 2:
                ts_field = struct.unpack_from(">I", buf, pos)[0]
            pos += 4
        if not new_message and fmt != 3:
            raise ProtocolError(f"new chunk header on chunk stream {csid} in the middle of a message")
        if length > self.max_message_bytes:
            raise LimitError(f"message of {length} bytes is over the limit of {self.max_message_bytes}")
        take = min(self.chunk_size, length - len(cs.body))
        if pos + take > end:
            return None
        # The whole chunk is here: commit the header state.
        if new_message:
            if fmt == 0:
                timestamp = ts_field
            else:
                if not cs.started:
                    raise ProtocolError(f"chunk type {fmt} on chunk stream {csid} before any type-0 header")
                timestamp = (cs.timestamp + ts_field) & 0xFFFFFFFF
            cs.timestamp, cs.ts_field = timestamp, ts_field
            cs.length, cs.type_id, cs.stream_id, cs.extended = length, type_id, stream_id, extended
            cs.started = cs.started or fmt == 0
        if self._pending + take > self.max_pending_bytes:
            raise LimitError(f"over {self.max_pending_bytes} half-received message bytes")
        self._streams[csid] = cs
        cs.body += buf[pos : pos + take]
        self._pending += take
        pos += take
        if len(cs.body) == cs.length:
            message = Message(cs.type_id, cs.stream_id, cs.timestamp, bytes(cs.body))
            self._pending -= len(cs.body)
            cs.body.clear()
            self._apply(message)
            out.append(message)
        return pos

    def _apply(self, message: Message) -> None:
        if message.type_id == SET_CHUNK_SIZE:
            if len(message.payload) < 4:
                raise ProtocolError("short set-chunk-size")
            size = struct.unpack(">I", message.payload[:4])[0] & 0x7FFFFFFF
            if size < 1:
                raise ProtocolError("chunk size 0")
            self.chunk_size = size
        elif message.type_id == ABORT:
            if len(message.payload) < 4:
                raise ProtocolError("short abort")
            cs = self._streams.get(struct.unpack(">I", message.payload[:4])[0])
            if cs is not None:
                self._pending -= len(cs.body)
                cs.body.clear()

    def _forget_idle_streams(self) -> None:
        for csid in [k for k, cs in self._streams.items() if not cs.body]:
            del self._streams[csid]


class ChunkWriter:
    """Messages -> chunks: a type-0 header then type-3 continuations (the server sends little)."""

    def __init__(self) -> None:
        self.chunk_size = 128

    def encode(self, csid: int, message: Message) -> bytes:
        if not 2 <= csid <= 63:
            raise ValueError("the server uses one-byte chunk stream ids")
        ts = message.timestamp
        ext = ts >= 0xFFFFFF
        header = bytes([csid]) + (0xFFFFFF if ext else ts).to_bytes(3, "big") + len(message.payload).to_bytes(3, "big")
        header += bytes([message.type_id]) + struct.pack("<I", message.stream_id)
        extended = struct.pack(">I", ts) if ext else b""
        parts = [header + extended]
        payload = message.payload
        for offset in range(0, max(len(payload), 1), self.chunk_size):
            if offset:
                parts.append(bytes([0xC0 | csid]) + extended)
            parts.append(payload[offset : offset + self.chunk_size])
        return b"".join(parts)


def control(type_id: int, payload: bytes) -> Message:
    return Message(type_id, 0, 0, payload)
