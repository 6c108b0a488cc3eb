"""Destinations of the encoded program: RTMP (FLV) and files. Encoded once, muxed per destination.

Each destination runs in its own thread behind a bounded queue, so a slow or failing one never blocks
the encoder or the others: when its queue is full while live, new packets are dropped (counted) and
the sink skips to the next keyframe; while it is not connected, only the newest packets are kept. A
dropped RTMP connection is retried with exponential backoff and resumes at the latest keyframe, in a
new FLV whose header carries the encoders' extradata (copied from the template streams).

A destination that refuses, cannot be reached or goes away is the user's problem (`user_error`: wrong
URL or key, server down); anything else is ours. Known limit: FFmpeg's RTMP client has no I/O timeout
through PyAV, so a server that accepts TCP and then never answers can hold that sink's thread (the
program and other sinks go on; `stop` gives up on it after its deadline), and an unreachable host
takes the OS's TCP connect timeout to be reported (the state stays `connecting` meanwhile).

A destination with an `address_check` is checked against the addresses its host resolves to right
before each connect (the probe then connects to those checked addresses); a refused one fails at once,
without retries. FFmpeg resolves the name once more when it connects, so a name whose answers change
within that moment is not caught here: an egress firewall on the worker is the complete answer."""
from __future__ import annotations

import errno
import ipaddress
import logging
import queue
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import av

from . import CompositorError
from .config import Destination
from .encoder import EncodedPacket

log = logging.getLogger("classcast.compositor.sinks")

CONNECTING, LIVE, RETRYING, FAILED, STOPPED = "connecting", "live", "retrying", "failed", "stopped"
USER_ERRNOS = {
    errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ETIMEDOUT, errno.ECONNRESET,
    errno.EPIPE, errno.ECONNABORTED, errno.EIO, errno.EACCES, errno.EPERM,
}


CONNECT_PROBE_S = 3.0  # a remote RTMP server that takes longer to accept is treated as unreachable
RW_TIMEOUT_US = 5_000_000  # FFmpeg gives up on a stalled RTMP read/write after 5 s

class SinkError(CompositorError):
    """A destination could not be opened or written."""

    def __init__(self, message: str, *, user_error: bool, retry: bool = True) -> None:
        super().__init__(message)
        self.user_error = user_error
        self.retry = retry  # False: trying again cannot help (the destination was refused by policy)


def redact(url: str) -> str:
    """The URL without its stream key (the last path component), for status and logs."""
    parts = urlsplit(url)
    if parts.scheme not in ("rtmp", "rtmps"):
        return url
    path = parts.path.rsplit("/", 1)[0] + "/***" if parts.path.count("/") > 1 else parts.path
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{path}"


def describe(exc: BaseException, destination: Destination) -> SinkError:
    """Tell a destination's failure (user error) from ours."""
    if isinstance(exc, SinkError):
        return exc
    where = redact(destination.url)
    if isinstance(exc, socket.gaierror):
        return SinkError(f"{where}: unknown host ({exc.strerror})", user_error=True)
    if isinstance(exc, OSError) and (exc.errno in USER_ERRNOS or isinstance(exc, (ConnectionError, TimeoutError))):
        reason = {errno.ECONNREFUSED: "connection refused (is an RTMP server listening there?)"}.get(
            exc.errno, exc.strerror or str(exc)
        )
        return SinkError(f"{where}: {reason}", user_error=destination.is_rtmp)
    if isinstance(exc, (av.FFmpegError, OSError)) and destination.is_rtmp:
        # the server spoke but refused us or broke the stream: bad app/key, or a server-side fault
        return SinkError(f"{where}: the RTMP server rejected or dropped the stream ({exc})", user_error=True)
    return SinkError(f"{where}: {exc.__class__.__name__}: {exc}", user_error=False)


class DestinationSink:
    def __init__(
        self,
        destination: Destination,
        *,
        video_template: av.video.stream.VideoStream | None,
        audio_template: av.audio.stream.AudioStream,
        queue_packets: int = 512,
        audio_key: str = "",
        backoff_s: tuple[float, float] = (0.5, 10.0),
        drain_s: float = 5.0,
    ) -> None:
        self.destination = destination
        self._templates = (video_template, audio_template)
        self._audio_key = audio_key  # whose AAC it carries: "" the program's, else its rung's own
        self._queue: queue.Queue[EncodedPacket] = queue.Queue(maxsize=queue_packets)
        self.backoff_s = backoff_s
        self.drain_s = drain_s
        self._stopping = threading.Event()  # finish what is queued, then close
        self._abort = threading.Event()  # close now
        self._resync = threading.Event()  # packets were dropped: restart at the next keyframe
        self._lock = threading.Lock()
        self.state = CONNECTING
        self.error: str | None = None
        self.user_error = False
        self.bytes_out = 0
        self.packets_out = 0
        self.reconnects = 0
        self.dropped_packets = 0
        self._thread = threading.Thread(target=self._run, name=f"sink-{destination.id}", daemon=True)

    # --- the encoder's side (never blocks) ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def wants(self, packet: EncodedPacket) -> bool:
        """The AAC it carries (the program's, or its rung's own) and the video of its rung (none for audio only)."""
        if packet.kind == "audio":
            return packet.rendition == self._audio_key
        return self._templates[0] is not None and packet.rendition == self.destination.rendition

    def _starts_stream(self, packet: EncodedPacket) -> bool:
        """Where a (re)connected sink may begin: a video keyframe, or any AAC frame for audio only."""
        if self._templates[0] is None:
            return packet.kind == "audio"
        return packet.kind == "video" and packet.is_keyframe

    def offer(self, packet: EncodedPacket) -> None:
        if self._stopping.is_set():
            return
        try:
            self._queue.put_nowait(packet)
            return
        except queue.Full:
            pass
        if self.state == LIVE:
            self.dropped_packets += 1
            self._resync.set()
            return
        try:  # not connected: keep the newest packets, the sink restarts at the latest keyframe anyway
            self._queue.get_nowait()
            self._queue.put_nowait(packet)
        except (queue.Empty, queue.Full):
            pass

    def request_stop(self) -> None:
        self._stopping.set()

    def stop(self, *, timeout_s: float | None = None) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(self.drain_s if timeout_s is None else timeout_s)
        if self._thread.is_alive():
            self._abort.set()
            self._thread.join(2.0)
            if self._thread.is_alive():
                log.warning("sink %s did not stop in time; leaving its thread", self.destination.id)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "state": self.state,
                "error": self.error,
                "user_error": self.user_error,
                "bytes_out": self.bytes_out,
                "packets_out": self.packets_out,
                "reconnects": self.reconnects,
                "dropped_packets": self.dropped_packets,
                "url": redact(self.destination.url),
            }

    # --- the sink's thread ---------------------------------------------------------------------------------

    def _set(self, state: str, *, error: SinkError | None = None) -> None:
        with self._lock:
            self.state = state
            if error is not None:
                self.error, self.user_error = str(error), error.user_error
            elif state == LIVE:
                self.error, self.user_error = None, False

    def _run(self) -> None:
        failures = 0
        while not (self._stopping.is_set() or self._abort.is_set()):
            self._set(CONNECTING)
            container = None
            live_since = None
            try:
                container = self._open()
                live_since = time.monotonic()
                self._pump(container)
                break  # stopped cleanly
            except Exception as exc:  # noqa: BLE001 - every failure is reported in the status
                err = describe(exc, self.destination)
                log.warning("destination %s: %s", self.destination.id, err)
                if live_since is not None and time.monotonic() - live_since >= 10.0:
                    failures = 0  # it worked for a while: start the backoff again from the bottom
                failures += 1
                retry = err.retry and self.destination.is_rtmp and (
                    self.destination.max_retries is None or failures <= self.destination.max_retries
                )
                self._set(RETRYING if retry else FAILED, error=err)
                if not retry:
                    return
                delay = min(self.backoff_s[1], self.backoff_s[0] * 2 ** (failures - 1))
                if self._stopping.wait(delay):
                    break
                with self._lock:
                    self.reconnects += 1
            finally:
                if container is not None:
                    self._close(container)
        if self.state != FAILED:
            self._set(STOPPED)

    def _open(self) -> av.container.OutputContainer:
        dest = self.destination
        if dest.is_rtmp:
            host, port = urlsplit(dest.url).hostname or "", dest.port
            # Resolve first for a clear "unknown host" and for the address check. PyAV holds the GIL
            # while FFmpeg connects, which would freeze every thread of the job (aiortc's loop too), so
            # a remote host is probed here first, where waiting releases the GIL; loopback is not probed
            # (FFmpeg's single-shot `listen` mode would take the probe for the publisher), and
            # rw_timeout bounds the rest.
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
            if dest.address_check is not None:
                refusal = dest.address_check(host=host, port=port, addresses=addresses)
                if refusal:
                    raise SinkError(f"{redact(dest.url)}: {refusal}", user_error=True, retry=False)
            if not all(ipaddress.ip_address(address).is_loopback for address in addresses):
                _probe(addresses, port)
            container = av.open(
                dest.url, mode="w", format=dest.format or "flv", options={"rw_timeout": str(RW_TIMEOUT_US)}
            )
        else:
            container = av.open(dest.path, mode="w", format=dest.format)
        try:
            video, audio = self._templates
            if video is not None:
                container.add_stream_from_template(video, opaque=True)
            container.add_stream_from_template(audio, opaque=True)
            container.start_encoding()  # connects (RTMP handshake + publish) and writes the header
        except BaseException:
            self._close(container)
            raise
        return container

    def _backlog_from_latest_keyframe(self) -> list[EncodedPacket]:
        backlog: list[EncodedPacket] = []
        while True:
            try:
                backlog.append(self._queue.get_nowait())
            except queue.Empty:
                break
        starts = [i for i, p in enumerate(backlog) if self._starts_stream(p)]
        return backlog[starts[-1] :] if starts else []

    def _pump(self, container: av.container.OutputContainer) -> None:
        video_stream = container.streams.video[0] if container.streams.video else None
        audio_stream = container.streams.audio[0]
        self._resync.clear()
        pending = self._backlog_from_latest_keyframe()
        waiting_for_keyframe = not pending
        self._set(LIVE)
        while not self._abort.is_set():
            if pending:
                packet = pending.pop(0)
            else:
                try:
                    packet = self._queue.get(timeout=0.2)
                except queue.Empty:
                    if self._stopping.is_set():
                        return
                    continue
            if self._resync.is_set():
                self._resync.clear()
                waiting_for_keyframe = True
            if waiting_for_keyframe:
                if not self._starts_stream(packet):
                    continue
                waiting_for_keyframe = False
            container.mux(packet.to_av(video_stream if packet.kind == "video" else audio_stream))
            with self._lock:
                self.bytes_out += len(packet.data)
                self.packets_out += 1

    def _close(self, container: av.container.OutputContainer) -> None:
        try:
            container.close()
        except Exception as exc:  # noqa: BLE001 - a broken connection can fail its trailer too
            log.info("destination %s: closing: %s", self.destination.id, exc)


def _probe(addresses: tuple[str, ...], port: int) -> None:
    """TCP-connect to the first of these (already checked) addresses that answers; raise the last error.
    Not by name: the name could resolve elsewhere a second time."""
    error: OSError | None = None
    for address in addresses:
        try:
            socket.create_connection((address, port), timeout=CONNECT_PROBE_S).close()
            return
        except OSError as exc:
            error = exc
    if error is not None:
        raise error
