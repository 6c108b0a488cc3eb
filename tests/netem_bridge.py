"""A userspace netem: forwards IP packets between two TUN devices with, per direction, random loss,
a rate cap behind a byte-limited drop-tail queue, delay, jitter and outages.

This kernel has no `netem` qdisc, so `tests.netlab` puts one TUN device in a network namespace, the
other in the host namespace, and runs this program between them. Stdlib only (no Django): TUN devices
are opened with one `TUNSETIFF` ioctl, which is all python-pytun would have added.

    python tests/netem_bridge.py --host fd:5 --ns fd:6 [--up JSON] [--down JSON] [--seed N]
    python tests/netem_bridge.py --host tunh --ns tunn --netns NAME     # open by name (setns)

"up" is the namespace -> host direction, "down" host -> namespace. Control: one JSON object per line
on stdin ({"op": "set", "up": {...}, "down": {...}} | {"op": "stats"}), one JSON reply per line on
stdout. EOF on stdin stops the bridge, so it never outlives the process that started it.
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import heapq
import json
import math
import os
import random
import select
import struct
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, fields
from typing import Any

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
# epoll rounds timeouts up to whole milliseconds: releasing this early centres the error on zero.
EARLY_S = 0.0005
READ_BATCH = 256


@dataclass(frozen=True)
class LinkConditions:
    """One direction of a link. The pipeline is netem's: loss -> bottleneck (rate + queue) -> delay."""

    rate_kbps: float | None = None  # None: no cap, no queue
    queue_ms: float = 200.0  # queue size as time at the rate (like a real bottleneck's buffer)
    queue_bytes: int | None = None  # overrides queue_ms when set
    delay_ms: float = 0.0  # one-way, added after the bottleneck
    jitter_ms: float = 0.0  # uniform +-jitter_ms on the delay (netem's default distribution)
    loss: float = 0.0  # mean fraction of packets dropped, 0..1
    loss_burst: float = 1.0  # mean loss burst length in packets; > 1 switches to Gilbert-Elliott
    reorder: bool = False  # let jitter reorder packets (default: FIFO, like netem with a rate)
    outage: bool = False  # drop everything, including packets already in flight

    def __post_init__(self) -> None:
        if self.rate_kbps is not None and self.rate_kbps <= 0:
            raise ValueError("rate_kbps must be > 0 or None")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError("loss must be within 0..1")
        if self.loss_burst < 1.0:
            raise ValueError("loss_burst must be >= 1")
        if min(self.queue_ms, self.delay_ms, self.jitter_ms) < 0 or (self.queue_bytes or 0) < 0:
            raise ValueError("queue, delay and jitter must be >= 0")

    def queue_limit(self) -> int | None:
        if self.rate_kbps is None:
            return None
        limit = self.queue_bytes if self.queue_bytes is not None else self.rate_kbps * 125 * self.queue_ms / 1000
        return max(int(limit), 1500)  # at least one MTU, or a full-size packet could never pass

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinkConditions:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown condition fields: {sorted(unknown)}")
        return cls(**data)


COUNTERS = (
    "packets_in", "bytes_in", "forwarded_packets", "forwarded_bytes",
    "dropped_loss", "dropped_queue", "dropped_outage", "write_errors",
)


class Direction:
    """One direction: arrivals are dropped or queued; a virtual-time serializer drains the queue at the
    rate; a heap holds packets until their delayed release, when they are written to `out_fd`."""

    def __init__(self, out_fd: int, conditions: LinkConditions, rng: random.Random) -> None:
        self.out_fd = out_fd
        self.c = conditions
        self.rng = rng
        self.queue: deque[tuple[float, bytes]] = deque()  # (arrival, packet) waiting for the serializer
        self.backlog = 0
        self.head_done: float | None = None  # when the packet at the head finishes serializing
        self.busy_until = 0.0  # virtual time: lateness of one wake-up does not add up over packets
        self.flight: list[tuple[float, int, float, bytes]] = []  # (release, seq, queue delay, packet)
        self.last_release = 0.0
        self.seq = 0
        self.bad = False  # Gilbert-Elliott state
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.qdelay_sum = 0.0
        self.qdelay_max = 0.0

    def set(self, conditions: LinkConditions, now: float) -> None:
        self.c = conditions
        if conditions.rate_kbps is None:  # cap lifted: what waits for the bottleneck leaves at once
            self.head_done = now
            while self.queue:
                self._serialized(now)

    def arrive(self, now: float, packet: bytes) -> None:
        self.counts["packets_in"] += 1
        self.counts["bytes_in"] += len(packet)
        c = self.c
        if c.outage:
            self.counts["dropped_outage"] += 1
        elif self._lost():
            self.counts["dropped_loss"] += 1
        elif c.rate_kbps is None:
            self._delay(now, now, packet)
        elif self.backlog + len(packet) > (c.queue_limit() or 0):
            self.counts["dropped_queue"] += 1
        else:
            self.queue.append((now, packet))
            self.backlog += len(packet)

    def _lost(self) -> bool:
        c = self.c
        if c.loss <= 0.0:
            return False
        if c.loss_burst <= 1.0:
            return self.rng.random() < c.loss
        # Simple Gilbert model: every packet is lost in the bad state; mean stay there = loss_burst
        # packets, and the good->bad probability is chosen so that the long-run loss is `loss`.
        if c.loss >= 1.0:
            return True
        if self.bad:
            self.bad = self.rng.random() >= 1.0 / c.loss_burst
        else:
            self.bad = self.rng.random() < c.loss / (c.loss_burst * (1.0 - c.loss))
        return self.bad

    def _delay(self, arrival: float, departed: float, packet: bytes) -> None:
        c = self.c
        release = departed + c.delay_ms / 1000
        if c.jitter_ms:
            release = max(departed, release + self.rng.uniform(-c.jitter_ms, c.jitter_ms) / 1000)
        if not c.reorder:
            release = max(release, self.last_release)
        self.last_release = max(self.last_release, release)
        self.seq += 1
        heapq.heappush(self.flight, (release, self.seq, departed - arrival, packet))

    def _serialized(self, done: float) -> None:
        arrival, packet = self.queue.popleft()
        self.backlog -= len(packet)
        self.busy_until = done
        self.head_done = None
        self._delay(arrival, done, packet)

    def _head_done(self) -> float | None:
        if self.queue and self.head_done is None:
            arrival, packet = self.queue[0]
            rate_bps = (self.c.rate_kbps or math.inf) * 1000
            self.head_done = max(arrival, self.busy_until) + len(packet) * 8 / rate_bps
        return self.head_done if self.queue else None

    def deadline(self) -> float | None:
        times = [t for t in (self._head_done(), self.flight[0][0] if self.flight else None) if t is not None]
        return min(times) if times else None

    def run(self, now: float) -> None:
        due = now + EARLY_S
        while (done := self._head_done()) is not None and done <= due:
            self._serialized(done)
        while self.flight and self.flight[0][0] <= due:
            _, _, qdelay, packet = heapq.heappop(self.flight)
            if self.c.outage:  # the link went down while the packet was on it
                self.counts["dropped_outage"] += 1
                continue
            try:
                os.write(self.out_fd, packet)
            except OSError as exc:  # device down or gone for a moment: the packet is lost, not the bridge
                if exc.errno not in (errno.EIO, errno.EAGAIN, errno.ENOBUFS, errno.EINVAL):
                    raise
                self.counts["write_errors"] += 1
                continue
            self.counts["forwarded_packets"] += 1
            self.counts["forwarded_bytes"] += len(packet)
            self.qdelay_sum += qdelay * 1000
            self.qdelay_max = max(self.qdelay_max, qdelay * 1000)

    def stats(self) -> dict[str, Any]:
        return {
            **self.counts, "queue_delay_ms_sum": round(self.qdelay_sum, 3),
            "queue_delay_ms_max": round(self.qdelay_max, 3), "backlog_bytes": self.backlog,
            "conditions": asdict(self.c),
        }


def open_tun(spec: str, netns: str | None) -> int:
    """`fd:N` (inherited, already attached) or a device name, opened in `netns` if given."""
    if spec.startswith("fd:"):
        fd = int(spec[3:])
    else:
        back = os.open("/proc/self/ns/net", os.O_RDONLY) if netns else None
        try:
            if netns:
                _setns(f"/run/netns/{netns}")
            fd = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", spec.encode(), IFF_TUN | IFF_NO_PI))
        finally:
            if back is not None:
                _setns_fd(back)
                os.close(back)
    os.set_blocking(fd, False)
    return fd


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _setns_fd(fd)
    finally:
        os.close(fd)


def _setns_fd(fd: int) -> None:
    # os.setns arrives only in Python 3.12.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Bridge:
    def __init__(self, host_fd: int, ns_fd: int, up: LinkConditions, down: LinkConditions, seed: int) -> None:
        self.host_fd, self.ns_fd = host_fd, ns_fd
        # Separate seeded streams: traffic in one direction does not change the other's draws.
        self.dirs = {
            "up": Direction(host_fd, up, random.Random(f"{seed}:up")),
            "down": Direction(ns_fd, down, random.Random(f"{seed}:down")),
        }
        self.source = {ns_fd: self.dirs["up"], host_fd: self.dirs["down"]}
        self.control = sys.stdin.fileno()
        self.buffer = b""

    def serve(self) -> None:
        os.set_blocking(self.control, False)
        poller = select.epoll()
        for fd in (self.host_fd, self.ns_fd, self.control):
            poller.register(fd, select.EPOLLIN)
        self.reply({"ok": True, "ready": True, "pid": os.getpid()})
        while True:
            deadlines = [d for d in (x.deadline() for x in self.dirs.values()) if d is not None]
            timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else -1
            for fd, _ in poller.poll(timeout):
                if fd == self.control:
                    if not self.read_control():
                        return
                else:
                    self.read_packets(fd)
            now = time.monotonic()
            for direction in self.dirs.values():
                direction.run(now)

    def read_packets(self, fd: int) -> None:
        direction = self.source[fd]
        for _ in range(READ_BATCH):
            try:
                packet = os.read(fd, 65536)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EIO:  # the device was taken down under us
                    return
                raise
            direction.arrive(time.monotonic(), packet)

    def read_control(self) -> bool:
        try:
            chunk = os.read(self.control, 65536)
        except BlockingIOError:
            return True
        if not chunk:
            return False  # parent gone
        self.buffer += chunk
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.strip():
                self.reply(self.handle(line))
        return True

    def handle(self, line: bytes) -> dict[str, Any]:
        try:
            msg = json.loads(line)
            op = msg.get("op")
            if op == "set":
                new = {k: LinkConditions.from_dict(msg[k]) for k in ("up", "down") if msg.get(k) is not None}
                now = time.monotonic()
                for key, conditions in new.items():
                    self.dirs[key].set(conditions, now)
                return {"ok": True}
            if op == "stats":
                return {"ok": True, **{k: d.stats() for k, d in self.dirs.items()}}
            return {"ok": False, "error": f"unknown op {op!r}"}
        except (ValueError, TypeError, AttributeError) as exc:
            return {"ok": False, "error": str(exc)}

    def reply(self, msg: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", required=True, help="host-side TUN: fd:N or a device name")
    parser.add_argument("--ns", required=True, help="namespace-side TUN: fd:N or a device name")
    parser.add_argument("--netns", help="namespace holding --ns when it is given by name")
    parser.add_argument("--up", default="{}", help="JSON LinkConditions for namespace -> host")
    parser.add_argument("--down", default="{}", help="JSON LinkConditions for host -> namespace")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        os.nice(-10)  # per-packet timing matters more than this process's share of a busy machine
    except OSError:
        pass
    bridge = Bridge(
        open_tun(args.host, None), open_tun(args.ns, args.netns),
        LinkConditions.from_dict(json.loads(args.up)), LinkConditions.from_dict(json.loads(args.down)), args.seed,
    )
    try:
        bridge.serve()
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
