"""A network lab for tests and benches: a network namespace joined to the host by an impaired link.

    with ImpairedLink(down=LinkConditions(rate_kbps=300, delay_ms=40)) as link:
        subprocess.run([*link.ns_exec_prefix(), "curl", f"http://{link.host_address}:{port}/"])
        link.set(down=LinkConditions(outage=True))       # at run time
        print(link.stats().down.dropped_outage)

"up" is what the namespace sends toward the host (a student's uplink), "down" the reverse. The link is
two TUN devices (one per side, a private /30 from 10.200.0.0/16) bridged by `tests/netem_bridge.py`,
because this kernel has no netem. Only the namespace and the host's TUN address are reachable from
inside: there is no default route out of the namespace.
"""
from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import select
import shlex
import struct
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from .netem_bridge import IFF_NO_PI, IFF_TUN, TUNSETIFF, LinkConditions

__all__ = [
    "LinkConditions", "DirectionStats", "LinkStats", "ImpairedLink", "NetlabError",
    "write_chromium_wrapper", "chromium_netns_args", "with_outage", "cleanup_stale",
]

BRIDGE = Path(__file__).with_name("netem_bridge.py")
POOL = ipaddress.ip_network("10.200.0.0/16")
SLOTS = POOL.num_addresses // 4  # /30s in the pool
NS_PREFIX = "netlab-"
NS_NAME = re.compile(rf"^{NS_PREFIX}(\d+)-(\d+)$")  # netlab-<owner pid>-<slot>
LOCK_FILE = "/run/lock/netlab.lock" if os.path.isdir("/run/lock") else "/tmp/netlab.lock"
CONTROL_TIMEOUT_S = 5.0


class NetlabError(RuntimeError):
    pass


@dataclass(frozen=True)
class DirectionStats:
    """Counters of one direction since the bridge started (subtract two snapshots for a window)."""

    packets_in: int
    bytes_in: int
    forwarded_packets: int
    forwarded_bytes: int
    dropped_loss: int
    dropped_queue: int
    dropped_outage: int
    write_errors: int
    queue_delay_ms_sum: float  # time in the bottleneck (waiting + own serialization), forwarded packets
    queue_delay_ms_max: float
    backlog_bytes: int  # in the queue right now

    @property
    def queue_delay_ms_mean(self) -> float:
        return self.queue_delay_ms_sum / self.forwarded_packets if self.forwarded_packets else 0.0

    def __sub__(self, earlier: DirectionStats) -> DirectionStats:
        keep = {"queue_delay_ms_max", "backlog_bytes"}  # not additive: the later snapshot's value
        return DirectionStats(**{
            f.name: getattr(self, f.name) if f.name in keep else getattr(self, f.name) - getattr(earlier, f.name)
            for f in fields(self)
        })


@dataclass(frozen=True)
class LinkStats:
    up: DirectionStats
    down: DirectionStats

    def __sub__(self, earlier: LinkStats) -> LinkStats:
        return LinkStats(self.up - earlier.up, self.down - earlier.down)


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise NetlabError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Delete namespaces left by lab owners that no longer run (their TUN devices and bridge went with
    them: the devices live only as long as the bridge's fds, and the bridge stops on its stdin's EOF)."""
    removed = []
    for name in _netns_names():
        match = NS_NAME.match(name)
        if match and not _alive(int(match.group(1))):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            removed.append(name)
    return removed


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class ImpairedLink:
    """A namespace joined to the host through the userspace impairment; a context manager."""

    _counter = 0

    def __init__(self, up: LinkConditions = LinkConditions(), down: LinkConditions = LinkConditions(),
                 *, seed: int = 0) -> None:
        self._initial = (up, down)
        self.seed = seed
        self.netns = ""
        self.host_device = ""
        self.ns_device = ""
        self.host_address = ""
        self.ns_address = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------------------

    def __enter__(self) -> ImpairedLink:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        cleanup_stale()
        try:
            slot = self._claim_slot()
            self._setup(slot)
        except BaseException:
            self.close()
            raise

    def _claim_slot(self) -> int:
        """A /30 not used by another lab (their namespace names carry the slot) nor on a host device;
        the flock makes look-up and `ip netns add` one step for parallel test processes."""
        with open(LOCK_FILE, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            taken = {int(m.group(2)) for m in map(NS_NAME.match, _netns_names()) if m}
            out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
            for addr in re.findall(r"inet (\S+)", out):
                net = ipaddress.ip_interface(addr).network
                if net.overlaps(POOL):
                    first = max(int(net.network_address), int(POOL.network_address))
                    last = min(int(net.broadcast_address), int(POOL.broadcast_address))
                    taken.update(range((first - int(POOL.network_address)) // 4,
                                       (last - int(POOL.network_address)) // 4 + 1))
            ImpairedLink._counter += 1
            start = (os.getpid() * 31 + ImpairedLink._counter) % SLOTS
            for i in range(SLOTS):
                slot = (start + i) % SLOTS
                if slot not in taken:
                    self.netns = f"{NS_PREFIX}{os.getpid()}-{slot}"
                    _ip("netns", "add", self.netns)
                    return slot
        raise NetlabError("no free /30 left in 10.200.0.0/16")

    def _setup(self, slot: int) -> None:
        base = POOL.network_address + slot * 4
        self.host_address, self.ns_address = str(base + 1), str(base + 2)
        self.host_device, self.ns_device = f"nl{slot}h", f"nl{slot}n"
        # Non-persistent TUNs: they vanish when the last fd closes, i.e. when the bridge stops.
        fds = [_open_tun(self.host_device), _open_tun(self.ns_device)]
        try:
            _ip("link", "set", self.ns_device, "netns", self.netns)
            # IPv6 off before the link goes up: no router solicitations or MLD reports in the counts.
            Path(f"/proc/sys/net/ipv6/conf/{self.host_device}/disable_ipv6").write_text("1")
            _ip("addr", "add", f"{self.host_address}/30", "dev", self.host_device)
            _ip("link", "set", self.host_device, "up")
            subprocess.run([*self.ns_exec_prefix(), "sysctl", "-qw",
                            f"net.ipv6.conf.{self.ns_device}.disable_ipv6=1"], check=True, capture_output=True)
            _ip("-n", self.netns, "addr", "add", f"{self.ns_address}/30", "dev", self.ns_device)
            _ip("-n", self.netns, "link", "set", self.ns_device, "up")
            _ip("-n", self.netns, "link", "set", "lo", "up")
            up, down = self._initial
            self._proc = subprocess.Popen(
                [sys.executable, str(BRIDGE), "--host", f"fd:{fds[0]}", "--ns", f"fd:{fds[1]}",
                 "--up", json.dumps(asdict(up)), "--down", json.dumps(asdict(down)), "--seed", str(self.seed)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=fds,
            )
        finally:
            for fd in fds:
                os.close(fd)
        if not self._read_reply().get("ready"):
            raise NetlabError("bridge did not report ready")

    def close(self) -> None:
        """Stop the bridge (its TUN devices go with it) and delete the namespace; safe to repeat."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                assert proc.stdin is not None
                proc.stdin.close()  # EOF: the bridge exits on its own
                proc.wait(timeout=3)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            finally:
                if proc.stdout is not None:
                    proc.stdout.close()
        if self.netns and self.netns in _netns_names():
            _ip("netns", "del", self.netns)

    # -- control -------------------------------------------------------------------------------------

    def set(self, up: LinkConditions | None = None, down: LinkConditions | None = None) -> None:
        """Change conditions at run time; a direction left None keeps its conditions."""
        self._request({"op": "set", "up": asdict(up) if up else None, "down": asdict(down) if down else None})

    def stats(self) -> LinkStats:
        reply = self._request({"op": "stats"})
        names = {f.name for f in fields(DirectionStats)}
        return LinkStats(*(DirectionStats(**{k: v for k, v in reply[d].items() if k in names}) for d in ("up", "down")))

    def conditions(self) -> tuple[LinkConditions, LinkConditions]:
        """(up, down) as the bridge applies them now."""
        reply = self._request({"op": "stats"})
        up, down = (LinkConditions(**reply[d]["conditions"]) for d in ("up", "down"))
        return up, down

    def ns_exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]

    def _request(self, msg: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self._proc is None or self._proc.stdin is None:
                raise NetlabError("link is not running")
            try:
                self._proc.stdin.write(json.dumps(msg).encode() + b"\n")
                self._proc.stdin.flush()
            except BrokenPipeError as exc:
                raise NetlabError("bridge exited") from exc
            reply = self._read_reply()
        if not reply.get("ok"):
            raise NetlabError(f"bridge refused {msg.get('op')}: {reply.get('error')}")
        return reply

    def _read_reply(self) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()  # raw reads: select() cannot see what a buffered reader holds
        while b"\n" not in self._buf:
            ready, _, _ = select.select([fd], [], [], CONTROL_TIMEOUT_S)
            chunk = os.read(fd, 65536) if ready else b""
            if not chunk:
                raise NetlabError(f"no reply from the bridge (exit code {self._proc.poll()})")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)


def write_chromium_wrapper(link: ImpairedLink, directory: Path, chromium: str = "/usr/bin/chromium") -> Path:
    """An executable that runs Chromium inside the link's namespace, for Playwright's
    `launch(executable_path=...)`. `ip netns exec` execs in place, so the DevTools pipe fds Playwright
    hands over survive; Chromium runs as root there, which Playwright's default --no-sandbox allows."""
    path = Path(directory) / f"chromium-{link.netns}"
    path.write_text(f'#!/bin/sh\nexec ip netns exec {shlex.quote(link.netns)} {shlex.quote(chromium)} "$@"\n')
    path.chmod(0o755)
    return path


def chromium_netns_args(link: ImpairedLink, port: int) -> list[str]:
    """Flags for Chromium in the namespace, added to the usual fake-media ones.

    getUserMedia needs a secure context; inside the namespace the server is http://<host_address>:<port>,
    not localhost, so that origin is declared secure. The page's host ICE candidates are otherwise
    hidden behind mDNS names, which nothing outside the namespace resolves."""
    return [
        f"--unsafely-treat-insecure-origin-as-secure=http://{link.host_address}:{port}",
        "--disable-features=WebRtcHideLocalIpsWithMdns",
    ]


def with_outage(conditions: LinkConditions, outage: bool = True) -> LinkConditions:
    """The same conditions with the link down (or back up): `link.set(up=with_outage(c), ...)`."""
    return replace(conditions, outage=outage)
