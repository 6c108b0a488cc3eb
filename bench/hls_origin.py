"""HLS origin latency under concurrent simulated viewers, regular and low-latency (LL-HLS), for the app's
own origin beside the documented nginx `proxy_cache` in front of it (README, "Scaling out", item 6),
from one run, on a live stream cut by the real packager.

Run from the project root:

    .venv/bin/python bench/hls_origin.py [--viewers 200] [--ll-viewers 30] [--seconds 20] [--find-capacity]

* setup: a temp var dir (`CLASSCAST_VAR_DIR`, its own SQLite), `manage.py migrate`, one public class
  with a live session; `manage.py hls_packager` (`CLASSCAST_RTMP_PORT`, `CLASSCAST_HLS_ROOT` in the temp
  dir; LL-HLS on, 2 s segments, ~1/3 s parts) fed by the imageio-ffmpeg binary publishing a clip made
  once up front (1280x720@30 H.264 ~2.3 Mbit/s, keyint 60, + AAC) in a loop without re-encoding:
  `ffmpeg -re -stream_loop -1 -i clip.ts -c copy -f flv rtmp://127.0.0.1:<port>/live/<stream key>`;
* app: `daphne -b 127.0.0.1 config.asgi:application` serving `/hls/classes/<id>/<name>`;
* peer: nginx (Debian's, launched by path, not daemonized) on another port with the README's block,
  proxying to that same daphne; cache and temp dirs in the temp dir;
* viewers, each one keep-alive HTTP/1.1 connection (a minimal asyncio client below):
  - regular: polls `live.m3u8` every 1 s, starts 3 segments from the live edge, fetches every new
    whole segment once (hls.js without lowLatencyMode);
  - low-latency (hls.js in lowLatencyMode): one plain playlist load and the last 3 parts, then a loop:
    blocking reload `live.m3u8?_HLS_msn=M&_HLS_part=P` for the part after the newest listed one, then
    every newly listed part, once.
  Viewers join over `--ramp` s; requests started in the first `--warmup` s are not counted.

Latency = request written -> last body byte read. For a blocking reload what matters is the delay
beyond availability: a thread in each load process stats `live.m3u8` every 5 ms and records when each
part first appears (same host, same clock); the figure is `done - max(request start, part listed)`.
Percentiles are numpy's default (linear between closest ranks). CPU from /proc/<pid>/stat (daphne; nginx
master + workers; packager; ffmpeg) and time.process_time (the load generator, on the same 2 cores).
The last line printed is `RESULT {json}`. Loopback only.
"""
from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import math
import multiprocessing
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import imageio_ffmpeg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from hls_packager.playlist import playlist_position  # noqa: E402  (pure: no Django)

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_S = 1.0  # regular viewers: target duration / 2
AVAIL_POLL_S = 0.005
CLIP_S = 20.0
TARGET_MS = 200.0


class BenchError(RuntimeError):
    pass


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, *, proc: subprocess.Popen, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def process_cpu_s(pid: int) -> float:
    """utime + stime of every thread of the process (fields 14 and 15 of /proc/<pid>/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except FileNotFoundError:
        return 0.0
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    data = f.read()
            except OSError:
                continue
            if int(data[data.rindex(")") + 2 :].split()[1]) == pid:
                kids.append(int(entry))
    return kids


def host_busy_s() -> float:
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


# --- the live stream: the real packager fed by ffmpeg --------------------------------------------------


def make_clip(path: Path, seconds: float) -> float:
    """1280x720@30 H.264 (~2.3 Mbit/s, keyint 60, no scene cut) + AAC 128k as MPEG-TS; returns Mbit/s."""
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
         "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-b:v", "2300k", "-maxrate", "2300k",
         "-bufsize", "2300k", "-g", "60", "-keyint_min", "60", "-sc_threshold", "0", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-b:a", "128k", "-ar", "48000", "-f", "mpegts", str(path)],
        check=True,
    )
    return path.stat().st_size * 8 / seconds / 1e6


def publisher_cmd(clip: Path, rtmp_port: int, key: str) -> list[str]:
    return [FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip),
            "-c", "copy", "-f", "flv", f"rtmp://127.0.0.1:{rtmp_port}/live/{key}"]


# --- servers -----------------------------------------------------------------------------------------


METRICS_TOKEN = secrets.token_urlsafe(24)  # /metrics answers only staff or this bearer token


def server_env(var_dir: Path, hls_root: Path, rtmp_port: int) -> dict[str, str]:
    drop = {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_DEBUG"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("CLASSCAST_")}
    env.update(DJANGO_SETTINGS_MODULE="config.settings", CLASSCAST_VAR_DIR=str(var_dir),
               CLASSCAST_HLS_ROOT=str(hls_root), CLASSCAST_RTMP_PORT=str(rtmp_port),
               DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost", PYTHONUNBUFFERED="1",
               CLASSCAST_METRICS_TOKEN=METRICS_TOKEN)
    return env


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    if done.returncode != 0:
        raise BenchError(f"manage.py {' '.join(args[:1])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


CREATE_CLASS = """
import json
from django.utils import timezone
from classroom.models import Classroom, LiveSession, SessionStatus
c = Classroom.objects.create(title="HLS origin bench", is_public=True)
s = LiveSession.objects.create(classroom=c, status=SessionStatus.LIVE, started_at=timezone.now())
print(json.dumps({"class_id": c.pk, "session_id": s.pk, "stream_key": c.stream_key}))
"""

# README "Scaling out", item 6: this text, indented by 3 spaces there, is the documented block. The bench
# uses it as written, except for the lines marked below (where it listens, where the cache lives).
README_BLOCK = r"""
upstream classcast_web {
    server 127.0.0.1:8000;                     # the daphne processes
    keepalive 64;                              # reuse connections to the app
}
proxy_cache_path /var/cache/nginx/hls keys_zone=hls:10m max_size=2g inactive=10m;
server {
    proxy_http_version 1.1;                    # keep-alive to the app
    proxy_set_header Connection "";
    proxy_set_header Host $host;               # Django checks it (an upstream name is not a host)
    add_header Access-Control-Allow-Origin *;
    proxy_cache hls;
    location ~ ^/hls/.+\.m3u8$ {                  # playlists: change every part (~1/3 s)
        proxy_pass http://classcast_web;
        proxy_cache_key $uri$arg_token;
        proxy_cache_valid 200 1s;
        proxy_ignore_headers Cache-Control;    # the app tells browsers no-cache; nginx keeps 1 s
        proxy_cache_use_stale updating;        # one refresh goes upstream, everyone else gets the last copy
        proxy_cache_background_update on;
        proxy_cache_lock on;
        proxy_cache_bypass $arg__HLS_msn;      # LL-HLS blocking reloads go to the app, which holds each one
        proxy_no_cache $arg__HLS_msn;          # until its part is listed: never a stale playlist
        proxy_read_timeout 10s;                # above the app's hold (3 target durations, 6 s)
    }
    location /hls/ {                           # segments and parts: immutable, kept per the app's max-age
        proxy_pass http://classcast_web;
        proxy_cache_key $uri$arg_token;
    }
}
""".strip("\n")

# Alternatives measured with --nginx-variant (each replaces lines of the block above).
NGINX_VARIANTS = {
    "documented": [],
    "keyed-lock": [  # blocking reloads cached under their own key, one upstream per (msn, part), others wait
        ("        proxy_cache_key $uri$arg_token;\n        proxy_cache_valid 200 1s;",
         "        proxy_cache_key $uri$arg_token$is_args$arg__HLS_msn.$arg__HLS_part;\n        proxy_cache_valid 200 1s;"),
        ("        proxy_cache_bypass $arg__HLS_msn;      # LL-HLS blocking reloads go to the app, which holds each one\n"
         "        proxy_no_cache $arg__HLS_msn;          # until its part is listed: never a stale playlist\n", ""),
    ],
    "keyed": [  # the same key, no lock: concurrent misses all go upstream, late ones are hits
        ("        proxy_cache_key $uri$arg_token;\n        proxy_cache_valid 200 1s;",
         "        proxy_cache_key $uri$arg_token$is_args$arg__HLS_msn.$arg__HLS_part;\n        proxy_cache_valid 200 1s;"),
        ("        proxy_cache_bypass $arg__HLS_msn;      # LL-HLS blocking reloads go to the app, which holds each one\n"
         "        proxy_no_cache $arg__HLS_msn;          # until its part is listed: never a stale playlist\n", ""),
        ("        proxy_cache_lock on;\n", ""),
    ],
    "media-lock": [  # parts/segments: one upstream fill each, the others wait on nginx's 500 ms lock timer
        ("        proxy_cache_key $uri$arg_token;\n    }\n}",
         "        proxy_cache_key $uri$arg_token;\n        proxy_cache_lock on;\n        proxy_cache_lock_timeout 2s;\n    }\n}"),
    ],
    "no-keepalive": [  # HTTP/1.0 to the app, a new connection per upstream request (nginx's default)
        ("    keepalive 64;                              # reuse connections to the app\n", ""),
        ("    proxy_http_version 1.1;                    # keep-alive to the app\n    proxy_set_header Connection \"\";\n", ""),
    ],
}


def nginx_block(variant: str) -> str:
    block = README_BLOCK
    for old, new in NGINX_VARIANTS[variant]:
        if old not in block:
            raise BenchError(f"nginx variant {variant}: {old!r} not in the block")
        block = block.replace(old, new)
    return block


NGINX_CONF = """
worker_processes auto;
daemon off;
master_process on;
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy_temp;
    fastcgi_temp_path {tmp}/fastcgi_temp;
    uwsgi_temp_path {tmp}/uwsgi_temp;
    scgi_temp_path {tmp}/scgi_temp;
{block}
}}
"""


def nginx_conf(tmp: Path, *, app_port: int, port: int, variant: str) -> str:
    block = nginx_block(variant)
    block = block.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{app_port};")
    block = block.replace("/var/cache/nginx/hls", f"{tmp}/cache")
    block = block.replace("server {\n", f"server {{\n    listen 127.0.0.1:{port};\n", 1)
    return NGINX_CONF.format(tmp=tmp, user="user root;" if os.geteuid() == 0 else "",
                             block="\n".join("    " + line if line else line for line in block.splitlines()))


def readme_has_block() -> bool:
    text = (ROOT / "README.md").read_text()
    return "\n".join("   " + line if line else line for line in README_BLOCK.splitlines()) in text


def hls_requests_total(app_port: int) -> float:
    """Sum of classcast_hls_requests_total on the app (every HLS request it served, any result)."""
    request = urllib.request.Request(f"http://127.0.0.1:{app_port}/metrics",
                                     headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("classcast_hls_requests_total{"))


# --- the load generator ------------------------------------------------------------------------------


class Conn:
    """One keep-alive HTTP/1.1 connection: GET only, Content-Length or chunked bodies."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def get(self, path: str) -> tuple[int, bytes]:
        for attempt in (0, 1):
            fresh = self.writer is None
            if fresh:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)
            try:
                return await self._exchange(path)
            except (asyncio.IncompleteReadError, ConnectionError):
                self.close()
                if fresh or attempt:  # a reused connection the server had closed: retry once on a new one
                    raise
        raise AssertionError("unreachable")

    async def _exchange(self, path: str) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nUser-Agent: classcast-bench\r\n"
                          f"Accept: */*\r\n\r\n".encode())
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        headers = {}
        for line in head[1:]:
            key, _, value = line.partition(":")
            if key:
                headers[key.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            body = b"".join(parts)
        else:
            body = await self.reader.read()
            self.close()
            return status, body
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, body


_PART_URI = re.compile(r'URI="([^"]+)"')


def listed_parts(text: str) -> list[tuple[tuple[int, int], str]]:
    """((msn, part index), URI) of every EXT-X-PART, in order (msn counted as playlist_position does)."""
    out, msn, k = [], 0, 0
    for line in text.splitlines():
        if line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            msn = int(line[22:])
        elif line.startswith("#EXT-X-PART:"):
            out.append(((msn, k), _PART_URI.search(line).group(1)))
            k += 1
        elif line and not line.startswith("#"):
            msn, k = msn + 1, 0
    return out


def next_part(text: str) -> tuple[int, int]:
    """(msn, part) a player asks for next: the part after the newest listed one (hls.js lowLatencyMode)."""
    position = playlist_position(text)
    if position.last_part is None:
        return position.open_msn, 0
    msn, part = position.last_part
    return (msn + 1, 0) if msn <= position.last_msn else (msn, part + 1)


class AvailabilityPoller(threading.Thread):
    """Stats live.m3u8 every 5 ms; on a change, records (time, newest part listed). Parts are listed in
    order, so a part's availability is the first version whose newest part is at or past it."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.stop_event = threading.Event()
        self.times: list[float] = []
        self.newest: list[tuple[int, int]] = []

    def run(self) -> None:
        stamp = None
        while not self.stop_event.is_set():
            try:
                st = os.stat(self.path)
                if (st.st_ino, st.st_mtime_ns) != stamp:
                    seen = time.time()
                    stamp = (st.st_ino, st.st_mtime_ns)
                    last = playlist_position(self.path.read_text()).last_part
                    if last is not None and (not self.newest or last > self.newest[-1]):
                        self.times.append(seen)
                        self.newest.append(last)
            except FileNotFoundError:
                pass
            time.sleep(AVAIL_POLL_S)

    def available_at(self, key: tuple[int, int]) -> float | None:
        i = bisect.bisect_left(self.newest, key)
        return self.times[i] if i < len(self.newest) else None


# record: (kind, started at (s since t0), latency s, status, bytes, beyond availability s or None)
Record = tuple[str, float, float, int, int, float | None]


async def _timed(conn: Conn, kind: str, path: str, t0: float, records: list[Record],
                 blocking: list | None = None, key: tuple[int, int] | None = None) -> tuple[int, bytes]:
    start = time.time()
    try:
        status, body = await conn.get(path)
    except Exception:  # noqa: BLE001 - any failure is an error for the viewer
        conn.close()
        status, body = 0, b""
    done = time.time()
    if blocking is not None:  # resolved against the part's availability once the run is over
        blocking.append((len(records), start, done, key))
    records.append((kind, start - t0, done - start, status, len(body), None))
    return status, body


async def regular_viewer(index: int, n: int, port: int, base: str, t0: float, ramp: float, end: float,
                         records: list[Record], _blocking: list) -> None:
    await asyncio.sleep(max(0.0, t0 + ramp * index / n - time.time()))
    conn, fetched, first = Conn(port), set(), True
    while time.time() < end:
        polled = time.time()
        status, body = await _timed(conn, "m3u8", f"{base}live.m3u8", t0, records)
        if status == 200:
            names = [line for line in body.decode().splitlines() if line and not line.startswith("#")]
            if first:  # a player starts 3 segments from the live edge (hls.js liveSyncDurationCount)
                names, first = names[-3:], False
            for name in names:
                if name not in fetched and time.time() < end:
                    fetched.add(name)
                    await _timed(conn, "ts", f"{base}{name}", t0, records)
        await asyncio.sleep(max(0.0, polled + POLL_S - time.time()))
    conn.close()


async def ll_viewer(index: int, n: int, port: int, base: str, t0: float, ramp: float, end: float,
                    records: list[Record], blocking: list) -> None:
    await asyncio.sleep(max(0.0, t0 + ramp * index / n - time.time()))
    conn, newest = Conn(port), None
    text = None
    while time.time() < end:
        if text is None:  # first load, or after a failed blocking reload: a plain reload
            status, body = await _timed(conn, "m3u8", f"{base}live.m3u8", t0, records)
            if status != 200:
                await asyncio.sleep(0.5)
                continue
            text = body.decode()
            parts = listed_parts(text)
            if newest is None:  # start PART-HOLD-BACK (3 parts) from the live edge
                for _, uri in parts[-3:]:
                    await _timed(conn, "part", f"{base}{uri}", t0, records)
                newest = parts[-1][0] if parts else (-1, -1)
            else:
                newest = max(newest, parts[-1][0]) if parts else newest
            continue
        msn, part = next_part(text)
        status, body = await _timed(conn, "block", f"{base}live.m3u8?_HLS_msn={msn}&_HLS_part={part}", t0, records,
                                    blocking, (msn, part))
        if status != 200:
            text = None
            continue
        text = body.decode()
        for key, uri in listed_parts(text):
            if key > newest and time.time() < end:
                await _timed(conn, "part", f"{base}{uri}", t0, records)
                newest = key
    conn.close()


def load_worker(kind: str, indices: list[int], n: int, port: int, base: str, t0: float, ramp: float,
                warmup: float, seconds: float, playlist: str) -> tuple[list[Record], float]:
    """Runs its share of the viewers in one event loop; returns the records and its CPU in the window."""
    records: list[Record] = []
    blocking: list = []  # (record index, start, done, (msn, part))
    end = t0 + warmup + seconds
    cpu: dict[str, float] = {}
    poller = AvailabilityPoller(Path(playlist))
    poller.start()
    viewer = ll_viewer if kind == "ll" else regular_viewer

    async def main() -> None:
        async def sample() -> None:
            await asyncio.sleep(max(0.0, t0 + warmup - time.time()))
            cpu["start"] = time.process_time()
            await asyncio.sleep(max(0.0, end - time.time()))
            cpu["end"] = time.process_time()
        await asyncio.gather(sample(), *(viewer(i, n, port, base, t0, ramp, end, records, blocking)
                                         for i in indices))

    asyncio.run(main())
    time.sleep(0.1)
    poller.stop_event.set()
    poller.join()
    for index, start, done, key in blocking:
        rec = records[index]
        available = poller.available_at(key)
        if rec[3] == 200 and available is not None:
            # The poller may see the new playlist a few ms after the app did (its own 5 ms period).
            records[index] = (*rec[:5], max(0.0, done - max(start, available)))
    return records, cpu["end"] - cpu["start"]


def run_load(*, kind: str, port: int, base: str, viewers: int, procs: int, ramp: float, warmup: float,
             seconds: float, cpu_pids: dict[str, list[int]], app_port: int, playlist: Path) -> dict:
    t0 = time.time() + 1.5
    shares = [list(range(p, viewers, procs)) for p in range(procs)]
    ctx = multiprocessing.get_context("spawn")
    upstream_before = hls_requests_total(app_port)
    all_pids = [pid for pids in cpu_pids.values() for pid in pids]
    with ctx.Pool(procs) as pool:
        pending = [pool.apply_async(load_worker, (kind, share, viewers, port, base, t0, ramp, warmup, seconds,
                                                  str(playlist))) for share in shares]
        time.sleep(max(0.0, t0 + warmup - time.time()))
        cpu0 = {pid: process_cpu_s(pid) for pid in all_pids}
        host0, wall0 = host_busy_s(), time.monotonic()
        time.sleep(max(0.0, t0 + warmup + seconds - time.time()))
        cpu1 = {pid: process_cpu_s(pid) for pid in all_pids}
        host1, wall1 = host_busy_s(), time.monotonic()
        results = [p.get(timeout=warmup + seconds + 120) for p in pending]
    upstream_after = hls_requests_total(app_port)
    wall = wall1 - wall0
    records = [r for recs, _ in results for r in recs if r[1] >= warmup]
    out: dict = {
        "kind": kind, "viewers": viewers, "window_s": wall,
        "cpu_s_per_s": {name: sum(cpu1[p] - cpu0[p] for p in pids) / wall for name, pids in cpu_pids.items()},
        "client_cpu_s_per_s": sum(c for _, c in results) / wall,
        "client_cpu_s_per_s_max_proc": max(c for _, c in results) / wall,
        "host_busy_cores": (host1 - host0) / wall,
        "upstream_requests": upstream_after - upstream_before,
    }
    kinds = ("m3u8", "ts") if kind == "regular" else ("m3u8", "block", "part")
    for k in (*kinds, "all"):
        sel = [r for r in records if k == "all" or r[0] == k]
        lat = [r[2] * 1000 for r in sel]
        out[k] = {
            "n": len(sel),
            "errors": sum(1 for r in sel if r[3] != 200),
            "http_503": sum(1 for r in sel if r[3] == 503),
            "http_400": sum(1 for r in sel if r[3] == 400),
            "p50": percentile(lat, 50), "p95": percentile(lat, 95), "p99": percentile(lat, 99),
            "max": max(lat, default=float("nan")),
        }
    if kind == "ll":
        beyond = [r[5] * 1000 for r in records if r[0] == "block" and r[5] is not None]
        out["beyond"] = {"n": len(beyond), "p50": percentile(beyond, 50), "p95": percentile(beyond, 95),
                         "p99": percentile(beyond, 99), "max": max(beyond, default=float("nan"))}
        # The figure held to the target: blocking reloads beyond availability and part fetches, together.
        worst = beyond + [r[2] * 1000 for r in records if r[0] == "part"]
        out["target_p99"] = percentile(worst, 99)
    else:
        out["target_p99"] = out["all"]["p99"]
    out["requests_per_s"] = len(records) / seconds
    out["mbit_per_s"] = sum(r[4] for r in records) * 8 / seconds / 1e6
    media = [r[4] for r in records if r[0] in ("ts", "part") and r[3] == 200]
    out["media_kb"] = sum(media) / len(media) / 1000 if media else 0.0
    errors = out["all"]["errors"]
    out["ok"] = out["target_p99"] < TARGET_MS and errors <= 0.001 * max(1, out["all"]["n"])
    return out


# --- main --------------------------------------------------------------------------------------------


class Stack:
    """Packager + publisher + daphne + nginx on loopback, in a temp dir."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.procs = tmp, []

    def start(self, nginx_variant: str) -> None:
        tmp = self.tmp
        var_dir, hls_root = tmp / "var", tmp / "hls"
        var_dir.mkdir()
        self.rtmp_port, self.app_port, self.nginx_port = free_port(), free_port(), free_port()
        env = server_env(var_dir, hls_root, self.rtmp_port)
        log("migrating a throwaway database, creating a public class with a live session")
        manage(env, "migrate", "--noinput")
        ids = json.loads(manage(env, "shell", "-c", CREATE_CLASS).strip().splitlines()[-1])
        self.base = f"/hls/classes/{ids['class_id']}/"
        self.playlist = hls_root / f"class-{ids['class_id']}" / f"session-{ids['session_id']}" / "live.m3u8"
        log(f"encoding the clip ({CLIP_S:.0f} s of 1280x720@30 H.264 + AAC)")
        self.clip_mbit = make_clip(tmp / "clip.ts", CLIP_S)
        self.packager = self._spawn("packager", [sys.executable, "manage.py", "hls_packager"], env)
        wait_for_port(self.rtmp_port, proc=self.packager, name="packager")
        self.publisher = self._spawn("publisher", publisher_cmd(tmp / "clip.ts", self.rtmp_port, ids["stream_key"]), env)
        self.daphne = self._spawn(
            "daphne", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.app_port),
                       "config.asgi:application"], env)
        wait_for_port(self.app_port, proc=self.daphne, name="daphne")
        conf = tmp / "nginx.conf"
        conf.write_text(nginx_conf(tmp, app_port=self.app_port, port=self.nginx_port, variant=nginx_variant))
        self.nginx = self._spawn("nginx", [NGINX, "-p", str(tmp), "-c", str(conf)], env)
        wait_for_port(self.nginx_port, proc=self.nginx, name="nginx")
        self.nginx_pids = [self.nginx.pid, *children_of(self.nginx.pid)]
        deadline = time.monotonic() + 60
        while not (self.playlist.exists() and playlist_position(self.playlist.read_text()).last_msn >= 3):
            if time.monotonic() > deadline or self.publisher.poll() is not None or self.packager.poll() is not None:
                raise BenchError(f"no live stream after 60 s; see {tmp}/*.log")
            time.sleep(0.2)

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=open(self.tmp / f"{name}.log", "w"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def cpu_pids(self, origin: str) -> dict[str, list[int]]:
        pids = {"daphne": [self.daphne.pid], "packager": [self.packager.pid], "ffmpeg": [self.publisher.pid]}
        if origin == "nginx":
            pids["nginx"] = self.nginx_pids
        return pids

    def check(self) -> None:
        for proc, name in ((self.packager, "packager"), (self.publisher, "publisher"), (self.daphne, "daphne"),
                           (self.nginx, "nginx")):
            if proc.poll() is not None:
                raise BenchError(f"{name} exited with {proc.returncode}; see {self.tmp}/{name}.log")

    def load(self, *, kind: str, origin: str, viewers: int, args: argparse.Namespace, seconds: float) -> dict:
        self.check()
        log(f"{kind} viewers x {viewers} -> {origin}: {args.warmup:.0f} + {seconds:.0f} s")
        spy = None
        if args.profile and origin == "app":
            spy = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(self.daphne.pid), "-r", "200", "-f",
                 "raw", "-d", str(int(args.warmup + seconds)), "-o", f"{args.profile}.{kind}.txt", "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result = run_load(kind=kind, port=self.app_port if origin == "app" else self.nginx_port, base=self.base,
                          viewers=viewers, procs=args.client_procs, ramp=args.ramp, warmup=args.warmup,
                          seconds=seconds, cpu_pids=self.cpu_pids(origin), app_port=self.app_port,
                          playlist=self.playlist)
        if spy is not None:
            spy.wait(timeout=60)
        log(f"  p99 that matters {result['target_p99']:.1f} ms, errors {result['all']['errors']}, "
            f"{result['requests_per_s']:.0f} req/s, daphne {result['cpu_s_per_s']['daphne']:.2f} cpu s/s, "
            f"client {result['client_cpu_s_per_s']:.2f}")
        time.sleep(1.0)
        return result

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop_process(proc)


def find_capacity(stack: Stack, origin: str, args: argparse.Namespace) -> tuple[int, list[dict]]:
    """The largest LL viewer count whose p99 (blocking reloads beyond availability, and parts) stays under
    200 ms with no errors: grow by 1.5x from --capacity-start until it fails, then bisect to ~10 %."""
    steps: list[dict] = []

    def trial(n: int) -> bool:
        r = stack.load(kind="ll", origin=origin, viewers=n, args=args, seconds=args.capacity_seconds)
        steps.append(r)
        return r["ok"]

    good, bad, n = 0, None, args.capacity_start
    while bad is None and n <= args.capacity_max:
        if trial(n):
            good, n = n, int(n * 1.5)
        else:
            bad = n
    while bad is not None and bad - good > max(5, good // 10):
        mid = (good + bad) // 2
        if trial(mid):
            good = mid
        else:
            bad = mid
    return good, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--viewers", type=int, default=200, help="regular viewers per origin")
    parser.add_argument("--ll-viewers", type=int, default=30, help="low-latency viewers per origin")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per run")
    parser.add_argument("--warmup", type=float, default=4.0, help="not counted: viewers join, caches fill")
    parser.add_argument("--ramp", type=float, default=2.0, help="viewers join evenly over this many seconds")
    parser.add_argument("--client-procs", type=int, default=1, help="load generator processes")
    parser.add_argument("--nginx-variant", choices=sorted(NGINX_VARIANTS), default="documented",
                        help="the README block, or one of the alternatives it was measured against")
    parser.add_argument("--only", choices=["regular", "ll"], help="run one viewer kind only")
    parser.add_argument("--find-capacity", action="store_true",
                        help="also find the most LL viewers each origin holds at p99 < 200 ms")
    parser.add_argument("--capacity-start", type=int, default=10)
    parser.add_argument("--capacity-max", type=int, default=2000)
    parser.add_argument("--capacity-seconds", type=float, default=10.0)
    parser.add_argument("--profile", metavar="FILE",
                        help="py-spy (pip install py-spy) records daphne during each app run into FILE.<kind>.txt")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args()
    if not os.path.exists(NGINX):
        raise SystemExit("nginx not found (apt-get install -y nginx)")
    if args.nginx_variant == "documented" and not readme_has_block():
        log("warning: README.md item 6 does not hold the block this bench runs (README_BLOCK)")

    tmp = Path(tempfile.mkdtemp(prefix="bench-hls-origin-"))
    os.chmod(tmp, 0o755)
    stack: Stack | None = None
    runs: dict[tuple[str, str], dict] = {}
    capacity: dict[str, tuple[int, list[dict]]] = {}
    started = time.monotonic()
    try:
        host0 = host_busy_s()
        time.sleep(2.0)
        host_before = (host_busy_s() - host0) / 2.0
        stack = Stack(tmp)
        stack.start(args.nginx_variant)
        kinds = [args.only] if args.only else ["regular", "ll"]
        for kind in kinds:
            for origin in ("app", "nginx"):
                n = args.viewers if kind == "regular" else args.ll_viewers
                runs[(kind, origin)] = stack.load(kind=kind, origin=origin, viewers=n, args=args, seconds=args.seconds)
        if args.find_capacity:
            for origin in ("app", "nginx"):
                capacity[origin] = find_capacity(stack, origin, args)
        stack.check()
        segments = playlist_position(stack.playlist.read_text()).last_msn + 1
    finally:
        if stack is not None:
            stack.close()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nlive stream: real packager (2 s segments, ~1/3 s parts) fed by ffmpeg -c copy of a "
          f"1280x720@30 H.264/AAC clip ({stack.clip_mbit:.2f} Mbit/s); nginx block: {args.nginx_variant}; "
          f"{os.cpu_count()} cores shared by packager, publisher, daphne, nginx and the load generator "
          f"({args.client_procs} process(es)); {args.seconds:.0f} s measured after {args.warmup:.0f} s warm-up")

    def fmt(x: float, f: str) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f.format(x)

    def row(label: str, a: float | None, b: float | None, f: str = "{:.1f}") -> None:
        ratio = f"{a / b:.2f}" if a is not None and b and not math.isnan(a) and not math.isnan(b) else "-"
        print(f"{label:<52}{fmt(a, f):>14}{fmt(b, f):>14}{ratio:>8}")

    def table(kind: str, title: str, lines: list[tuple[str, str]]) -> None:
        app, ngx = runs[(kind, "app")], runs[(kind, "nginx")]
        print(f"\n{title}")
        print(f"{'':<52}{'app (daphne)':>14}{'nginx cache':>14}{'ratio':>8}")
        for key, name in lines:
            for q in ("p50", "p95", "p99", "max"):
                row(f"{name} {q} ms", app[key][q], ngx[key][q])
        row("requests (window)", app["all"]["n"], ngx["all"]["n"], "{:.0f}")
        row("requests/s", app["requests_per_s"], ngx["requests_per_s"])
        row("Mbit/s delivered", app["mbit_per_s"], ngx["mbit_per_s"])
        row("errors (non-200)", app["all"]["errors"], ngx["all"]["errors"], "{:.0f}")
        print(f"{'  of which 503 / 400':<52}{app['all']['http_503']:>8} / {app['all']['http_400']:<3}"
              f"{ngx['all']['http_503']:>8} / {ngx['all']['http_400']:<3}")
        row("requests reaching the app (run incl. warm-up)", app["upstream_requests"], ngx["upstream_requests"], "{:.0f}")
        for proc in ("daphne", "nginx"):
            a, b = app["cpu_s_per_s"].get(proc), ngx["cpu_s_per_s"].get(proc)
            row(f"{proc} CPU ms/s per viewer", None if a is None else a / app["viewers"] * 1000,
                None if b is None else b / ngx["viewers"] * 1000, "{:.3f}")
        row("daphne CPU s/s", app["cpu_s_per_s"]["daphne"], ngx["cpu_s_per_s"]["daphne"], "{:.3f}")
        row("nginx CPU s/s (master + workers)", None, ngx["cpu_s_per_s"]["nginx"], "{:.3f}")
        row("packager / ffmpeg CPU s/s", app["cpu_s_per_s"]["packager"], ngx["cpu_s_per_s"]["packager"], "{:.3f}")
        row("load generator CPU s/s (all procs)", app["client_cpu_s_per_s"], ngx["client_cpu_s_per_s"], "{:.3f}")
        row("host busy cores", app["host_busy_cores"], ngx["host_busy_cores"], "{:.2f}")
        for name, r in (("app", app), ("nginx", ngx)):
            verdict = "met" if r["ok"] else "MISSED"
            print(f"target p99 < {TARGET_MS:.0f} ms ({'all requests' if kind == 'regular' else 'blocking reloads beyond availability + parts'}), "
                  f"{name}: {verdict} ({r['target_p99']:.1f} ms, {r['all']['errors']} errors)")
            if r["client_cpu_s_per_s_max_proc"] > 0.85:
                print(f"note: during the {name} run a load generator process was CPU-bound "
                      f"({r['client_cpu_s_per_s_max_proc']:.2f} s/s): its own event-loop delay is in the latencies")

    if ("regular", "app") in runs:
        table("regular", f"regular viewers x {args.viewers} (playlist every 1 s + each new whole segment of "
                         f"{runs[('regular', 'app')]['media_kb']:.0f} KB)",
              [("m3u8", "playlist"), ("ts", "segment"), ("all", "all requests")])
    if ("ll", "app") in runs:
        table("ll", f"low-latency viewers x {args.ll_viewers} (blocking reload per part + each new part of "
                    f"{runs[('ll', 'app')]['media_kb']:.0f} KB)",
              [("beyond", "blocking reload beyond availability"), ("block", "blocking reload raw"),
               ("part", "part"), ("m3u8", "plain playlist")])
    for origin, (best, steps) in capacity.items():
        print(f"\nLL capacity, {origin}: {best} viewers at p99 < {TARGET_MS:.0f} ms; steps: " + ", ".join(
            f"{s['viewers']}: {s['target_p99']:.0f} ms/{s['all']['errors']} err/daphne {s['cpu_s_per_s']['daphne']:.2f}"
            f"/client {s['client_cpu_s_per_s']:.2f}" for s in steps))

    def r1(x: float | None) -> float | None:
        return None if x is None or math.isnan(x) else round(x, 1)

    result: dict = {"viewers": args.viewers, "ll_viewers": args.ll_viewers, "seconds": args.seconds,
                    "warmup_s": args.warmup, "client_procs": args.client_procs, "cores": os.cpu_count(),
                    "nginx_variant": args.nginx_variant, "clip_mbit_per_s": round(stack.clip_mbit, 2),
                    "segments_published": segments, "host_busy_cores_before_run": round(host_before, 2)}
    names = {"regular": [("all", ""), ("m3u8", "playlist_"), ("ts", "segment_")],
             "ll": [("beyond", "block_beyond_availability_"), ("block", "block_"), ("part", "part_"),
                    ("m3u8", "playlist_")]}
    for (kind, origin), r in runs.items():
        p = f"{kind}_{origin}_"
        for key, label in names[kind]:
            for q in ("p50", "p95", "p99", "max"):
                result[f"{p}{label}{q}_ms"] = r1(r[key][q])
        result[f"{p}target_p99_ms"] = r1(r["target_p99"])
        result[f"{p}p99_under_200_ms"] = r["ok"]
        result[f"{p}requests"] = r["all"]["n"]
        result[f"{p}requests_per_s"] = round(r["requests_per_s"], 1)
        result[f"{p}mbit_per_s"] = round(r["mbit_per_s"], 1)
        result[f"{p}media_kb"] = round(r["media_kb"], 1)
        result[f"{p}errors"] = r["all"]["errors"]
        result[f"{p}http_503"] = r["all"]["http_503"]
        result[f"{p}http_400"] = r["all"]["http_400"]
        result[f"{p}upstream_requests"] = int(r["upstream_requests"])
        for proc, cpu in r["cpu_s_per_s"].items():
            result[f"{p}{proc}_cpu_s_per_s"] = round(cpu, 3)
        result[f"{p}daphne_cpu_ms_per_s_per_viewer"] = round(r["cpu_s_per_s"]["daphne"] / r["viewers"] * 1000, 3)
        if "nginx" in r["cpu_s_per_s"]:
            result[f"{p}nginx_cpu_ms_per_s_per_viewer"] = round(r["cpu_s_per_s"]["nginx"] / r["viewers"] * 1000, 3)
        result[f"{p}client_cpu_s_per_s"] = round(r["client_cpu_s_per_s"], 3)
        result[f"{p}host_busy_cores"] = round(r["host_busy_cores"], 2)
    for kind in ("regular", "ll"):
        if (kind, "app") in runs:
            a, b = runs[(kind, "app")]["target_p99"], runs[(kind, "nginx")]["target_p99"]
            result[f"{kind}_ratio_app_vs_nginx_p99"] = round(a / b, 2) if b else None
    for origin, (best, steps) in capacity.items():
        result[f"ll_{origin}_capacity_viewers"] = best
        result[f"ll_{origin}_capacity_steps"] = [
            {"viewers": s["viewers"], "p99_ms": r1(s["target_p99"]), "errors": s["all"]["errors"],
             "daphne_cpu_s_per_s": round(s["cpu_s_per_s"]["daphne"], 3),
             "client_cpu_s_per_s": round(s["client_cpu_s_per_s"], 3)} for s in steps]
    result["run_s"] = round(time.monotonic() - started, 1)
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
