"""The RTMP ingest server: one asyncio TCP port, many publishers, each authorized by its stream key.

URL shape: rtmp://<host>:<port>/<app>/<stream key>. resolve_key(app, key) names the output folder
(relative to output_dir) or refuses. Each accepted publisher feeds a Segmenter (a PyAV thread).
"""
from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import os
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from . import PackagerError, amf0, flv
from .config import PackagerConfig
from .errors import LimitError, ProtocolError, UnsafeFolderError
from .playlist import SegmentInfo
from .rtmp_chunks import (
    ACK, AUDIO, COMMAND_AMF0, COMMAND_AMF3, DATA_AMF0, HANDSHAKE_SIZE, SET_CHUNK_SIZE, SET_PEER_BANDWIDTH,
    USER_CONTROL, VIDEO, WINDOW_ACK_SIZE, ChunkParser, ChunkWriter, Message, control,
)
from .segmenter import Segmenter
from .ladder import rendition_key_split
from .storage import load_history, master_write, safe_folder

log = logging.getLogger(__name__)

ResolveKey = Callable[[str, str], Awaitable[str | None]]
SERVER_CHUNK_SIZE = 4096
SERVER_WINDOW = 2_500_000
PUBLISH_STREAM_ID = 1
# Refusal reasons (on_refused, stats()["refused_by_reason"]).
UNKNOWN_KEY, BAD_FOLDER, RESOLVER_ERROR, TOO_MANY_PUBLISHERS = "unknown_key", "bad_folder", "resolver_error", "too_many_publishers"
UNKNOWN_RENDITION = "unknown_rendition"
# Why a connection without an accepted publish was closed (on_connection_refused, stats()["connections_refused_by_reason"]).
TOO_MANY_FROM_IP = "too_many_from_ip"  # the address already has max_connections_per_ip publishing
PENDING_REPLACED = "pending_replaced"  # the oldest pending connection, closed to make room for a new one
AUTH_TIMEOUT = "auth_timeout"  # no accepted publish within handshake_timeout_s
PRE_AUTH_LIMIT = "pre_auth_limit"  # sent more than a client needs before publish, or did not read our answers
PRE_AUTH_READ = 4096  # read size before publish; after it, 64 KiB


def client_address(peer: Any) -> str:
    """The address limits are counted per: the IP (IPv4-mapped IPv6 as IPv4), an IPv6 client's /64 (one
    host usually holds a whole /64), or '?' when the socket has no peer (counted together)."""
    try:
        ip = ipaddress.ip_address(peer[0].split("%", 1)[0])
    except (TypeError, IndexError, ValueError):
        return "?"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class IngestServer:
    def __init__(self, config: PackagerConfig, *, resolve_key: ResolveKey, events: Any = None) -> None:
        self.config = config
        self.resolve_key = resolve_key
        self.events = events
        self.port: int | None = None
        self.refused_total = 0
        self.refused_by_reason: dict[str, int] = {}
        self.connections_refused_by_reason: dict[str, int] = {}
        self.protocol_errors_total = 0
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        # Connections counted against the limits: pending ones in arrival order (oldest first), and per
        # address. A connection leaves them when it is closed, not when its task has finished.
        self._pending: dict[_Connection, None] = {}
        self._per_address: dict[str, int] = {}
        self._publishing: dict[str, _Connection] = {}
        self._folder_locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.config.output_dir.mkdir(parents=True, exist_ok=True)
        # The reader's own buffer stops taking from the socket past 2 x limit: small, so a client that has
        # not published yet can make us hold a few KiB there too, not 128 (the kernel keeps the rest).
        self._server = await asyncio.start_server(self._on_client, self.config.host, self.config.port, limit=2**13)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("RTMP ingest listening on %s:%s", self.config.host, self.port)

    async def close(self) -> None:
        """Stop accepting, end every publisher cleanly (their VOD playlists are written)."""
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*(c.stop("server_closed") for c in list(self._connections)), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> "IngestServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def stats(self) -> dict[str, Any]:
        return {
            "publishers": [c.publisher_stats() for c in self._publishing.values()],
            "refused_total": self.refused_total,
            "refused_by_reason": dict(self.refused_by_reason),
            "protocol_errors_total": self.protocol_errors_total,
            "connections": len(self._connections),
            "pending": len(self._pending),
            "pending_buffered_bytes": sum(c.held_bytes() for c in self._pending),
            "connections_refused_by_reason": dict(self.connections_refused_by_reason),
        }

    # --- internals ----------------------------------------------------------------------------------

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = client_address(writer.get_extra_info("peername"))
        if not self._make_room(address):
            self._connection_refused(address, TOO_MANY_FROM_IP)
            writer.transport.abort()
            return
        connection = _Connection(self, reader, writer, address)
        self._connections.add(connection)
        self._pending[connection] = None
        self._per_address[address] = self._per_address.get(address, 0) + 1
        try:
            await connection.run()
        finally:
            self._release(connection)
            self._connections.discard(connection)

    def _make_room(self, address: str) -> bool:
        """Close pending connections so a new one from `address` fits: that address's oldest while it is
        at its pending or total limit, then the oldest of all while the pool is full. False: the
        address is at its total limit with publishers alone (nothing pending of its own to close)."""
        config = self.config
        while True:
            own = [c for c in self._pending if c.address == address]
            total = self._per_address.get(address, 0)
            over_total = bool(config.max_connections_per_ip) and total >= config.max_connections_per_ip
            if not (len(own) >= config.max_pending_per_ip or over_total):
                break
            if not own:
                return False
            own[0].evict(PENDING_REPLACED)
        while len(self._pending) >= config.max_pending:
            next(iter(self._pending)).evict(PENDING_REPLACED)
        return True

    def _authorised(self, connection: "_Connection") -> None:
        self._pending.pop(connection, None)

    def _release(self, connection: "_Connection") -> None:
        """Stop counting a connection (idempotent): it is closed or closing."""
        self._pending.pop(connection, None)
        if connection.counted:
            connection.counted = False
            left = self._per_address.get(connection.address, 1) - 1
            if left > 0:
                self._per_address[connection.address] = left
            else:
                self._per_address.pop(connection.address, None)

    def _connection_refused(self, address: str, reason: str) -> None:
        self.connections_refused_by_reason[reason] = self.connections_refused_by_reason.get(reason, 0) + 1
        self._emit("on_connection_refused", address, reason)

    def _refuse(self, app: str, key: str, reason: str) -> None:
        self.refused_total += 1
        self.refused_by_reason[reason] = self.refused_by_reason.get(reason, 0) + 1
        self._emit("on_refused", app, key, reason)

    def _emit(self, name: str, *args: Any) -> None:
        """Call events.<name>(*args) if it exists; a coroutine result runs as a task. Never raises."""
        method = getattr(self.events, name, None) if self.events is not None else None
        if not callable(method):
            return
        try:
            result = method(*args)
        except Exception:  # noqa: BLE001 - an event handler's bug must not stop the ingest
            log.exception("events.%s failed", name)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("event handler failed", exc_info=task.exception())


@dataclass
class _Publish:
    folder: str
    app: str
    segmenter: Segmenter
    since: float = field(default_factory=time.time)
    video_codec: str | None = None
    audio_codec: str | None = None
    header_sent: bool = False


class _Connection:
    """One TCP client: handshake, commands, then media into a Segmenter."""

    def __init__(
        self, server: IngestServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str
    ) -> None:
        self.server = server
        self.config = server.config
        self.reader = reader
        self.writer = writer
        self.address = address
        self.counted = True  # in the server's per-address count
        # Until a publish is accepted the client may make us hold only a few KiB (see PackagerConfig).
        self.parser = ChunkParser(
            max_message_bytes=self.config.pre_auth_max_message_bytes,
            max_pending_bytes=self.config.pre_auth_max_message_bytes,
        )
        writer.transport.set_write_buffer_limits(high=self.config.pre_auth_max_message_bytes)
        self.out = ChunkWriter()
        self.app = ""
        self.connected = False
        self.bytes_in = 0
        self.ack_window = 0
        self.acked = 0
        self.publish: _Publish | None = None
        self.end_reason = "disconnected"
        self._closing = False
        self._finished = asyncio.Event()

    # --- life ----------------------------------------------------------------------------------------

    async def run(self) -> None:
        # One deadline for handshake + connect + publish, enforced from outside the reads: a client
        # that stops reading our answers cannot hold us in drain() past it either.
        auth_deadline = asyncio.get_running_loop().call_later(self.config.handshake_timeout_s, self._auth_expired)
        try:
            await self._handshake()
            while not self._closing:
                if self.publish is None:
                    data = await self.reader.read(PRE_AUTH_READ)
                else:
                    try:
                        data = await asyncio.wait_for(self.reader.read(65536), self.config.idle_timeout_s)
                    except asyncio.TimeoutError:
                        raise ProtocolError("timed out") from None
                if not data:
                    if self.parser.buffered_bytes and self.publish is None:
                        raise ProtocolError("connection cut mid-message")
                    break
                self.bytes_in += len(data)
                self.parser.push(data)
                tags: list[bytes] = []  # media of this read, handed to the segmenter in one piece
                while not self._closing and (message := self.parser.next_message()) is not None:
                    if self.publish is not None and message.type_id in (AUDIO, VIDEO, DATA_AMF0):
                        tags.append(self._flv_tag(self.publish, message))
                        continue
                    await self._handle(message)
                if tags and self.publish is not None:
                    await self.publish.segmenter.write(b"".join(tags))
                if self.publish is None and self.bytes_in > self.config.pre_auth_max_bytes:
                    raise LimitError(f"{self.bytes_in} bytes before publish")
                await self._send_ack_if_due()
        except (ProtocolError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
            if not self._closing:
                self.server.protocol_errors_total += 1
                self.end_reason = "protocol_error"
                log.info("RTMP client %s closed: %s", self._peer(), exc or type(exc).__name__)
                if isinstance(exc, LimitError) and self.publish is None:
                    self.end_reason = PRE_AUTH_LIMIT
                    self.server._connection_refused(self.address, PRE_AUTH_LIMIT)
        except PackagerError as exc:
            self.end_reason = "segmenter_error"
            log.warning("RTMP publisher %s stopped: %s", self._peer(), exc)
        except (ConnectionError, OSError):
            pass
        finally:
            auth_deadline.cancel()
            await self._end()

    def _auth_expired(self) -> None:
        if self.publish is None:
            self.evict(AUTH_TIMEOUT)

    def evict(self, reason: str) -> None:
        """Close a connection that has not published, now and without waiting (run() then ends it)."""
        self.server._release(self)
        if self._closing:
            return
        self.server._connection_refused(self.address, reason)
        self._closing = True
        self.end_reason = reason
        self.writer.transport.abort()  # pending reads see EOF, a pending drain() raises

    def held_bytes(self) -> int:
        """What this client makes us hold now: parser buffers, unread input, unsent answers."""
        transport = self.writer.transport
        unsent = transport.get_write_buffer_size() if not transport.is_closing() else 0
        return self.parser.buffered_bytes + len(getattr(self.reader, "_buffer", b"")) + unsent

    async def stop(self, reason: str) -> None:
        """Ended from outside (server close, a newer publisher of the same folder)."""
        if not self._closing:
            self._closing = True
            self.end_reason = reason
            self.writer.close()  # run() sees EOF or an error and ends the publish
            self.reader.feed_eof()
        await self._finished.wait()

    async def _end(self) -> None:
        self._closing = True
        self.server._release(self)
        try:
            publish = self.publish
            if publish is not None:
                # Stays in _publishing until its files are final: a returning publisher waits for that.
                await publish.segmenter.finish()
                if self.server._publishing.get(publish.folder) is self:
                    del self.server._publishing[publish.folder]
                self.publish = None
                self.server._emit("on_publish_end", publish.folder, self.end_reason)
        finally:
            self.writer.close()
            self._finished.set()

    def _peer(self) -> str:
        peer = self.writer.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if peer else "?"

    # --- handshake (simple: S1 carries zeros where digests would go; FFmpeg/OBS publishers accept it) ---

    async def _handshake(self) -> None:
        c0c1 = await self.reader.readexactly(1 + HANDSHAKE_SIZE)
        if c0c1[0] != 3:
            raise ProtocolError(f"RTMP version {c0c1[0]} (only 3, plain RTMP)")
        s1 = struct.pack(">II", 0, 0) + os.urandom(HANDSHAKE_SIZE - 8)
        self.writer.write(b"\x03" + s1 + c0c1[1:])  # S0 S1 S2 (S2 echoes C1)
        await self.reader.readexactly(HANDSHAKE_SIZE)  # C2 (the deadline covers a client that reads nothing)
        self.bytes_in += 1 + 2 * HANDSHAKE_SIZE

    # --- messages ------------------------------------------------------------------------------------

    async def _handle(self, message: Message) -> None:
        kind = message.type_id
        if kind in (AUDIO, VIDEO):
            raise ProtocolError("media before publish")
        elif kind in (COMMAND_AMF0, COMMAND_AMF3):
            payload = message.payload[1:] if kind == COMMAND_AMF3 else message.payload
            await self._command(amf0.decode_all(payload))
        elif kind == WINDOW_ACK_SIZE and len(message.payload) >= 4:
            self.ack_window = struct.unpack(">I", message.payload[:4])[0]
        elif kind == USER_CONTROL and len(message.payload) >= 6 and message.payload[:2] == b"\x00\x06":
            self._send(2, control(USER_CONTROL, b"\x00\x07" + message.payload[2:6]))  # ping -> pong
        # SET_CHUNK_SIZE and ABORT were applied by the parser; ACK, bandwidth and the rest need nothing.

    def _flv_tag(self, publish: _Publish, message: Message) -> bytes:
        tag_type = {AUDIO: flv.TAG_AUDIO, VIDEO: flv.TAG_VIDEO}.get(message.type_id, flv.TAG_SCRIPT)
        if tag_type == flv.TAG_VIDEO and publish.video_codec is None:
            publish.video_codec = flv.video_codec(message.payload)
        elif tag_type == flv.TAG_AUDIO and publish.audio_codec is None:
            publish.audio_codec = flv.audio_codec(message.payload)
        data = flv.tag(tag_type, message.timestamp, message.payload)
        if not publish.header_sent:
            data, publish.header_sent = flv.FILE_HEADER + data, True
        return data

    async def _command(self, values: list[Any]) -> None:
        if len(values) < 2 or not isinstance(values[0], str):
            raise ProtocolError("malformed command")
        name, tid = values[0], values[1] if isinstance(values[1], (int, float)) else 0
        args = values[2:]
        if name == "connect":
            if self.connected:  # each answer is larger than the command: no amplification
                raise ProtocolError("connect twice")
            self.connected = True
            props = args[0] if args and isinstance(args[0], dict) else {}
            self.app = str(props.get("app", "")).strip("/")
            self._send(2, control(WINDOW_ACK_SIZE, struct.pack(">I", SERVER_WINDOW)))
            self._send(2, control(SET_PEER_BANDWIDTH, struct.pack(">IB", SERVER_WINDOW, 2)))
            self._send(2, control(SET_CHUNK_SIZE, struct.pack(">I", SERVER_CHUNK_SIZE)))
            self.out.chunk_size = SERVER_CHUNK_SIZE
            self._invoke(
                "_result", tid, {"fmsVer": "FMS/3,0,1,123", "capabilities": 31},
                {"level": "status", "code": "NetConnection.Connect.Success", "description": "Connection succeeded.", "objectEncoding": 0},
            )
        elif name in ("releaseStream", "FCPublish"):
            self._invoke("_result", tid, None, amf0.UNDEFINED_VALUE)
        elif name == "createStream":
            self._invoke("_result", tid, None, PUBLISH_STREAM_ID)
        elif name == "publish":
            raw = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
            await self._publish(raw.split("?", 1)[0])
        elif name in ("FCUnpublish", "deleteStream", "closeStream"):
            if self.publish is not None:
                self.end_reason = "unpublished"
                self._closing = True
        elif name == "play":
            self._status("error", "NetStream.Play.Failed", "This server only takes publishers.")
            self._closing = True
        await self._drain()

    async def _drain(self) -> None:
        """Before publish a client that leaves our answers unread is cut off instead of waited for."""
        if self.publish is None and self.writer.transport.get_write_buffer_size() > self.config.pre_auth_max_message_bytes:
            raise LimitError("answers not read before publish")
        await self.writer.drain()

    async def _publish(self, key: str) -> None:
        server = self.server
        if self.publish is not None:
            raise ProtocolError("publish twice on one connection")
        base_key, rendition = rendition_key_split(key)
        ladder = {r.name: r for r in self.config.ladder}
        if rendition is not None and rendition not in ladder:
            return self._refuse(key, UNKNOWN_RENDITION)
        try:
            folder = await _maybe_await(server.resolve_key(self.app, base_key))
        except Exception:  # noqa: BLE001 - the resolver's failure refuses this key, nothing more
            log.exception("resolve_key failed")
            return self._refuse(key, RESOLVER_ERROR)
        if folder is None:
            return self._refuse(key, UNKNOWN_KEY)
        if rendition is not None and isinstance(folder, str):
            folder = f"{folder}/{rendition}"  # each rung in a folder of its own under the master playlist
        try:
            path = safe_folder(self.config.output_dir, folder)
        except UnsafeFolderError as exc:
            log.warning("refused folder from resolve_key: %s", exc)
            return self._refuse(key, BAD_FOLDER)
        if self._closing:  # closed while the key was resolved (deadline, replaced while pending)
            return
        lock = server._folder_locks.setdefault(folder, asyncio.Lock())
        async with lock:
            previous = server._publishing.get(folder)
            if previous is not None:
                await previous.stop("replaced")  # the same stream came back before its old TCP died
            if self._closing:
                return
            if len(server._publishing) >= self.config.max_publishers:
                return self._refuse(key, TOO_MANY_PUBLISHERS)
            history = await asyncio.to_thread(load_history, path)
            loop = asyncio.get_running_loop()

            def on_segment(info: SegmentInfo) -> None:  # segmenter thread -> event loop
                loop.call_soon_threadsafe(server._emit, "on_segment", folder, info.name, info.duration_s)

            segmenter = Segmenter(
                path, history, segment_duration_s=self.config.segment_duration_s, live_window=self.config.live_window,
                high_water_bytes=self.config.pipe_high_water_bytes, on_segment=on_segment,
                part_target_s=self.config.part_target_s,
            )
            await asyncio.to_thread(segmenter.start)
            if rendition is not None:
                await asyncio.to_thread(master_write, path.parent, self.config.ladder)
            self.publish = _Publish(folder=folder, app=self.app, segmenter=segmenter)
            server._publishing[folder] = self
        # Authorised: out of the pending pool, and the publisher's limits from here on.
        server._authorised(self)
        self.parser.set_limits(max_message_bytes=self.config.max_message_bytes)
        self.writer.transport.set_write_buffer_limits()
        self._send(2, control(USER_CONTROL, struct.pack(">HI", 0, PUBLISH_STREAM_ID)))  # StreamBegin
        self._status("status", "NetStream.Publish.Start", f"{key[:4]}... is now published.")
        server._emit("on_publish_start", folder)

    def _refuse(self, key: str, reason: str) -> None:
        self._status("error", "NetStream.Publish.BadName", "Stream key refused.")
        self._closing = True
        self.end_reason = reason
        self.server._refuse(self.app, key, reason)

    # --- sending ---------------------------------------------------------------------------------------

    def _send(self, csid: int, message: Message) -> None:
        if not self.writer.is_closing():
            self.writer.write(self.out.encode(csid, message))

    def _invoke(self, name: str, tid: float, *args: Any) -> None:
        self._send(3, Message(COMMAND_AMF0, 0, 0, amf0.encode(name, tid, *args)))

    def _status(self, level: str, code: str, description: str) -> None:
        info = {"level": level, "code": code, "description": description}
        self._send(5, Message(COMMAND_AMF0, PUBLISH_STREAM_ID, 0, amf0.encode("onStatus", 0, None, info)))

    async def _send_ack_if_due(self) -> None:
        if self.ack_window and self.bytes_in - self.acked >= self.ack_window:
            self.acked = self.bytes_in
            self._send(2, control(ACK, struct.pack(">I", self.bytes_in & 0xFFFFFFFF)))

    def publisher_stats(self) -> dict[str, Any]:
        publish = self.publish
        assert publish is not None
        return {
            "folder": publish.folder,
            "app": publish.app,
            "since": publish.since,
            "bytes_in": self.bytes_in,
            "video_codec": publish.video_codec,
            "audio_codec": publish.audio_codec,
            "segments": len(publish.segmenter.history.segments),
            "peer": self._peer(),
        }


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value
