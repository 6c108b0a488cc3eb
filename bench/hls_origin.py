"""HLS origin latency under concurrent simulated viewers: the app's own origin beside the documented
nginx `proxy_cache` in front of it (README, "Scaling out", item 6), from one run.

Run from the project root:

    .venv/bin/python bench/hls_origin.py [--viewers 200] [--seconds 20] [--client-procs 1]

* setup: a temp var dir (`CLASSCAST_VAR_DIR`, its own SQLite), `manage.py migrate`, one public class
  with a live session; its HLS folder holds a live stream made once with the imageio-ffmpeg binary
  (1280x720@30 H.264 ~2.3 Mbit/s + AAC 128k, 2 s segments `seg-<n>.ts`, ~600 KB each). A thread
  "publishes" a new segment every 2 s (a copy of one of those files under the next number) and rewrites
  `live.m3u8` (sliding window of 6, temp file + os.replace), like a live packager;
* app: `daphne -b 127.0.0.1 config.asgi:application` serving `/hls/classes/<id>/<name>`;
* peer: nginx (Debian's, launched by path, not daemonized) on another port with the README's
  `proxy_cache` block, proxying to that same daphne; cache and temp dirs in the temp dir;
* load: N simulated viewers per variant, each one keep-alive HTTP/1.1 connection (a minimal asyncio
  client below: no aiohttp/httpx in the venv). Like a player, a viewer polls the playlist every 1 s
  (target duration / 2), starts 3 segments from the live edge and fetches every new segment once.
  Viewers join over `--ramp` s; requests started in the first `--warmup` s are not counted.

Latency = request written -> last body byte read. Percentiles are numpy's default (linear between
closest ranks). CPU from /proc/<pid>/stat (daphne; nginx master + workers) and time.process_time (the
load generator, which shares the 2 cores). The last line printed is `RESULT {json}`. Loopback only.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
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
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SEGMENT_S = 2.0
WINDOW = 6
POLL_S = SEGMENT_S / 2


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


# --- the live stream ---------------------------------------------------------------------------------


def make_segments(folder: Path, seconds: float) -> list[tuple[Path, float]]:
    """~seconds of 1280x720@30 H.264 + AAC as 2 s TS segments; returns (file, duration) in order."""
    folder.mkdir(parents=True)
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
         "-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-b:v", "2300k", "-maxrate", "2300k",
         "-bufsize", "2300k", "-g", "60", "-keyint_min", "60", "-sc_threshold", "0", "-pix_fmt", "yuv420p",
         "-c:a", "aac", "-b:a", "128k", "-f", "hls", "-hls_time", str(SEGMENT_S), "-hls_list_size", "0",
         "-hls_segment_filename", str(folder / "seg-%d.ts"), str(folder / "template.m3u8")],
        check=True,
    )
    out, duration = [], None
    for line in (folder / "template.m3u8").read_text().splitlines():
        if line.startswith("#EXTINF:"):
            duration = float(line[8:].split(",")[0])
        elif line and not line.startswith("#"):
            out.append((folder / line, duration or SEGMENT_S))
    return out


class LivePublisher(threading.Thread):
    """Every SEGMENT_S adds seg-<n>.ts (a copy of a template segment) and rewrites live.m3u8."""

    def __init__(self, folder: Path, templates: list[tuple[Path, float]]) -> None:
        super().__init__(daemon=True)
        self.folder, self.templates = folder, templates
        self.stop_event = threading.Event()
        self.window: list[tuple[int, float]] = []
        self.next = 0
        self.published = 0

    def publish_one(self) -> None:
        src, duration = self.templates[self.next % len(self.templates)]
        tmp = self.folder / f".seg-{self.next}.tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, self.folder / f"seg-{self.next}.ts")
        self.window = (self.window + [(self.next, duration)])[-WINDOW:]
        self.next += 1
        self.published += 1
        lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{math.ceil(SEGMENT_S)}",
                 f"#EXT-X-MEDIA-SEQUENCE:{self.window[0][0]}"]
        for number, dur in self.window:
            lines += [f"#EXTINF:{dur:.3f},", f"seg-{number}.ts"]
        tmp = self.folder / ".live.m3u8.tmp"
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, self.folder / "live.m3u8")
        old = self.folder / f"seg-{self.next - WINDOW - 4}.ts"  # players may still be fetching just-dropped ones
        old.unlink(missing_ok=True)

    def run(self) -> None:
        tick = time.monotonic()
        while not self.stop_event.is_set():
            tick += SEGMENT_S
            self.stop_event.wait(max(0.0, tick - time.monotonic()))
            if not self.stop_event.is_set():
                self.publish_one()


# --- servers -----------------------------------------------------------------------------------------


def server_env(var_dir: Path, hls_root: Path) -> dict[str, str]:
    drop = {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_DEBUG"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("CLASSCAST_")}
    env.update(DJANGO_SETTINGS_MODULE="config.settings", CLASSCAST_VAR_DIR=str(var_dir),
               CLASSCAST_HLS_ROOT=str(hls_root), DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
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
print(json.dumps({"class_id": c.pk, "session_id": s.pk}))
"""

NGINX_CONF = """
worker_processes auto;
daemon off;
master_process on;
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy_temp;
    fastcgi_temp_path {tmp}/fastcgi_temp;
    uwsgi_temp_path {tmp}/uwsgi_temp;
    scgi_temp_path {tmp}/scgi_temp;
    upstream classcast_web {{ server 127.0.0.1:{app_port}; }}

    # README "Scaling out", item 6, as documented (the cache path moved into the temp dir):
    proxy_cache_path {tmp}/cache keys_zone=hls:10m max_size=2g inactive=10m;
    server {{
        listen 127.0.0.1:{port};
        location ~ ^/hls/.+\.m3u8$ {{                 # playlists: change every segment
            proxy_pass http://classcast_web;
            proxy_set_header Host $host;               # Django checks it (an upstream name is no host)
            proxy_cache hls;
            proxy_cache_key $uri$arg_token;
            proxy_cache_valid 200 1s;
            proxy_ignore_headers Cache-Control;        # the app tells browsers no-cache; nginx may keep 1 s
            proxy_cache_use_stale updating;            # one refresh upstream, everyone else the last copy
            proxy_cache_background_update on;
            proxy_cache_lock on;
            add_header Access-Control-Allow-Origin *;
        }}
        location /hls/ {{                               # segments: immutable, cached per the app's max-age
            proxy_pass http://classcast_web;
            proxy_set_header Host $host;
            proxy_cache hls;
            proxy_cache_key $uri$arg_token;
            proxy_cache_lock on;                       # one upstream fetch per segment, however many viewers
            proxy_cache_lock_timeout 2s;
            add_header Access-Control-Allow-Origin *;
        }}
    }}
}}
"""


def hls_requests_total(app_port: int) -> float:
    """Sum of classcast_hls_requests_total on the app (every HLS request it served, any result)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/metrics", timeout=10) as r:
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
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
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


# record: (kind, started at (s since t0), latency s, ok, bytes)
Record = tuple[str, float, float, bool, int]


async def viewer(index: int, n: int, port: int, base: str, t0: float, ramp: float, end: float,
                 records: list[Record]) -> None:
    await asyncio.sleep(max(0.0, t0 + ramp * index / n - time.time()))
    conn, fetched, first = Conn(port), set(), True

    async def timed(kind: str, path: str) -> bytes | None:
        start = time.time()
        try:
            status, body = await conn.get(path)
            ok = status == 200
        except Exception:  # noqa: BLE001 - any failure is an error for the viewer
            conn.close()
            status, body, ok = 0, b"", False
        records.append((kind, start - t0, time.time() - start, ok, len(body)))
        return body if ok else None

    while time.time() < end:
        polled = time.time()
        body = await timed("m3u8", f"{base}live.m3u8")
        if body is not None:
            names = [line for line in body.decode().splitlines() if line and not line.startswith("#")]
            if first:  # a player starts 3 segments from the live edge (hls.js liveSyncDurationCount)
                names, first = names[-3:], False
            for name in names:
                if name not in fetched and time.time() < end:
                    fetched.add(name)
                    await timed("ts", f"{base}{name}")
        await asyncio.sleep(max(0.0, polled + POLL_S - time.time()))
    conn.close()


def load_worker(indices: list[int], n: int, port: int, base: str, t0: float, ramp: float, warmup: float,
                seconds: float) -> tuple[list[Record], float]:
    """Runs its share of the viewers in one event loop; returns the records and its CPU in the window."""
    records: list[Record] = []
    end = t0 + warmup + seconds
    cpu: dict[str, float] = {}

    async def main() -> None:
        async def sample() -> None:
            await asyncio.sleep(max(0.0, t0 + warmup - time.time()))
            cpu["start"] = time.process_time()
            await asyncio.sleep(max(0.0, end - time.time()))
            cpu["end"] = time.process_time()
        await asyncio.gather(sample(), *(viewer(i, n, port, base, t0, ramp, end, records) for i in indices))

    asyncio.run(main())
    return records, cpu["end"] - cpu["start"]


def run_load(*, port: int, base: str, viewers: int, procs: int, ramp: float, warmup: float, seconds: float,
             cpu_pids: list[int], app_port: int) -> dict:
    t0 = time.time() + 1.0
    shares = [list(range(p, viewers, procs)) for p in range(procs)]
    ctx = multiprocessing.get_context("spawn")
    upstream_before = hls_requests_total(app_port)
    with ctx.Pool(procs) as pool:
        pending = [pool.apply_async(load_worker, (share, viewers, port, base, t0, ramp, warmup, seconds))
                   for share in shares]
        time.sleep(max(0.0, t0 + warmup - time.time()))
        cpu0 = {pid: process_cpu_s(pid) for pid in cpu_pids}
        host0, wall0 = host_busy_s(), time.monotonic()
        time.sleep(max(0.0, t0 + warmup + seconds - time.time()))
        cpu1 = {pid: process_cpu_s(pid) for pid in cpu_pids}
        host1, wall1 = host_busy_s(), time.monotonic()
        results = [p.get(timeout=warmup + seconds + 120) for p in pending]
    upstream_after = hls_requests_total(app_port)
    wall = wall1 - wall0
    records = [r for recs, _ in results for r in recs if r[1] >= warmup]
    out: dict = {
        "window_s": wall,
        "cpu_s_per_s": {pid: (cpu1[pid] - cpu0[pid]) / wall for pid in cpu_pids},
        "client_cpu_s_per_s": sum(c for _, c in results) / wall,
        "client_cpu_s_per_s_max_proc": max(c for _, c in results) / wall,
        "host_busy_cores": (host1 - host0) / wall,
        "upstream_requests": upstream_after - upstream_before,
        "all_requests": sum(len(recs) for recs, _ in results),
    }
    for kind, sel in (("m3u8", ("m3u8",)), ("ts", ("ts",)), ("all", ("m3u8", "ts"))):
        lat = [r[2] * 1000 for r in records if r[0] in sel]
        out[kind] = {
            "n": len(lat),
            "errors": sum(1 for r in records if r[0] in sel and not r[3]),
            "p50": percentile(lat, 50), "p95": percentile(lat, 95), "p99": percentile(lat, 99),
            "max": max(lat, default=float("nan")),
        }
    out["requests_per_s"] = len(records) / seconds
    out["mbit_per_s"] = sum(r[4] for r in records) * 8 / seconds / 1e6
    ts_sizes = [r[4] for r in records if r[0] == "ts" and r[3]]
    out["segment_kb"] = sum(ts_sizes) / len(ts_sizes) / 1000 if ts_sizes else 0.0
    return out


# --- main --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--viewers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per variant")
    parser.add_argument("--warmup", type=float, default=4.0, help="not counted: viewers join, caches fill")
    parser.add_argument("--ramp", type=float, default=2.0, help="viewers join evenly over this many seconds")
    parser.add_argument("--client-procs", type=int, default=1, help="load generator processes")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args()
    if not os.path.exists(NGINX):
        raise SystemExit("nginx not found (apt-get install -y nginx)")

    tmp = Path(tempfile.mkdtemp(prefix="bench-hls-origin-"))
    os.chmod(tmp, 0o755)
    procs: list[subprocess.Popen] = []
    publisher: LivePublisher | None = None
    try:
        var_dir, hls_root = tmp / "var", tmp / "hls"
        var_dir.mkdir()
        env = server_env(var_dir, hls_root)
        log("migrating a throwaway database, creating a public class with a live session")
        manage(env, "migrate", "--noinput")
        ids = json.loads(manage(env, "shell", "-c", CREATE_CLASS).strip().splitlines()[-1])
        folder = hls_root / f"class-{ids['class_id']}" / f"session-{ids['session_id']}"
        folder.mkdir(parents=True)
        log("encoding the template segments (1280x720@30 H.264 + AAC, 2 s each)")
        templates = make_segments(tmp / "templates", WINDOW * SEGMENT_S)
        publisher = LivePublisher(folder, templates)
        for _ in range(WINDOW):
            publisher.publish_one()
        publisher.start()

        app_port, nginx_port = free_port(), free_port()
        daphne_log = open(tmp / "daphne.log", "w")
        daphne = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(app_port), "config.asgi:application"],
            cwd=ROOT, env=env, stdout=daphne_log, stderr=subprocess.STDOUT,
        )
        procs.append(daphne)
        wait_for_port(app_port, proc=daphne, name="daphne")
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, app_port=app_port, port=nginx_port,
                                          user="user root;" if os.geteuid() == 0 else ""))
        nginx = subprocess.Popen([NGINX, "-p", str(tmp), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                 stderr=open(tmp / "nginx-stderr.log", "w"))
        procs.append(nginx)
        wait_for_port(nginx_port, proc=nginx, name="nginx")
        nginx_pids = [nginx.pid, *children_of(nginx.pid)]

        base = f"/hls/classes/{ids['class_id']}/"
        with urllib.request.urlopen(f"http://127.0.0.1:{app_port}{base}live.m3u8", timeout=10) as r:
            assert r.status == 200 and b"seg-" in r.read()
        host0 = host_busy_s()
        time.sleep(2.0)
        host_before = (host_busy_s() - host0) / 2.0

        common = dict(viewers=args.viewers, procs=args.client_procs, ramp=args.ramp, warmup=args.warmup,
                      seconds=args.seconds, app_port=app_port)
        log(f"app origin: {args.viewers} viewers for {args.warmup:.0f} + {args.seconds:.0f} s")
        app = run_load(port=app_port, base=base, cpu_pids=[daphne.pid], **common)
        time.sleep(2.0)
        log(f"nginx proxy_cache in front: {args.viewers} viewers for {args.warmup:.0f} + {args.seconds:.0f} s")
        ngx = run_load(port=nginx_port, base=base, cpu_pids=[daphne.pid, *nginx_pids], **common)
        published = publisher.published
    finally:
        if publisher is not None:
            publisher.stop_event.set()
        for proc in reversed(procs):
            stop_process(proc)
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    app_cpu = app["cpu_s_per_s"][daphne.pid]
    ngx_app_cpu = ngx["cpu_s_per_s"][daphne.pid]
    ngx_cpu = sum(v for pid, v in ngx["cpu_s_per_s"].items() if pid != daphne.pid)
    v = args.viewers

    def row(label: str, a: float, b: float, fmt: str = "{:.1f}") -> None:
        ratio = f"{a / b:.2f}" if b and not math.isnan(a) and not math.isnan(b) else "-"
        print(f"{label:<44}{fmt.format(a):>14}{fmt.format(b):>14}{ratio:>8}")

    print(f"\n{v} simulated viewers per variant, {args.seconds:.0f} s measured after {args.warmup:.0f} s warm-up; "
          f"live stream 1280x720 H.264/AAC, 2 s segments of {app['segment_kb']:.0f} KB, playlist polled every "
          f"{POLL_S:.0f} s; {os.cpu_count()} cores, load generator in {args.client_procs} process(es) on the same cores")
    print(f"{'':<44}{'app (daphne)':>14}{'nginx cache':>14}{'ratio':>8}")
    for kind, name in (("m3u8", "playlist"), ("ts", "segment"), ("all", "all requests")):
        for q in ("p50", "p95", "p99"):
            row(f"{name} {q} ms", app[kind][q], ngx[kind][q])
        row(f"{name} max ms", app[kind]["max"], ngx[kind]["max"])
    row("requests", app["all"]["n"], ngx["all"]["n"], "{:.0f}")
    row("requests/s", app["requests_per_s"], ngx["requests_per_s"])
    row("Mbit/s delivered", app["mbit_per_s"], ngx["mbit_per_s"])
    row("errors", app["all"]["errors"], ngx["all"]["errors"], "{:.0f}")
    row("requests reaching the app (whole run)", app["upstream_requests"], ngx["upstream_requests"], "{:.0f}")
    row("daphne CPU s/s", app_cpu, ngx_app_cpu, "{:.3f}")
    row("nginx CPU s/s (master + workers)", 0.0, ngx_cpu, "{:.3f}")
    row("origin CPU ms/s per viewer (daphne + nginx)", app_cpu / v * 1000, (ngx_app_cpu + ngx_cpu) / v * 1000, "{:.2f}")
    row("load generator CPU s/s (all procs)", app["client_cpu_s_per_s"], ngx["client_cpu_s_per_s"], "{:.3f}")
    row("host busy cores", app["host_busy_cores"], ngx["host_busy_cores"], "{:.2f}")
    target = 200.0
    for name, r in (("app", app), ("nginx", ngx)):
        verdict = "met" if r["all"]["p99"] < target else "MISSED"
        print(f"target p99 < {target:.0f} ms, {name}: {verdict} ({r['all']['p99']:.1f} ms)")
    for name, r in (("app", app), ("nginx", ngx)):
        if r["client_cpu_s_per_s_max_proc"] > 0.85:
            print(f"note: during the {name} run a load generator process was CPU-bound "
                  f"({r['client_cpu_s_per_s_max_proc']:.2f} s/s): its own event-loop delay is in the latencies")

    def r1(x: float) -> float | None:
        return None if math.isnan(x) else round(x, 1)

    result: dict = {"viewers": v, "seconds": args.seconds, "warmup_s": args.warmup, "client_procs": args.client_procs,
                    "cores": os.cpu_count(), "segment_kb": round(app["segment_kb"], 1),
                    "segments_published": published, "host_busy_cores_before_run": round(host_before, 2)}
    for prefix, r in (("app", app), ("nginx", ngx)):
        for kind, key in (("all", ""), ("m3u8", "playlist_"), ("ts", "segment_")):
            for q in ("p50", "p95", "p99"):
                result[f"{prefix}_{key}{q}_ms"] = r1(r[kind][q])
        result[f"{prefix}_max_ms"] = r1(r["all"]["max"])
        result[f"{prefix}_requests"] = r["all"]["n"]
        result[f"{prefix}_requests_per_s"] = round(r["requests_per_s"], 1)
        result[f"{prefix}_mbit_per_s"] = round(r["mbit_per_s"], 1)
        result[f"{prefix}_errors"] = r["all"]["errors"]
        result[f"{prefix}_upstream_requests"] = int(r["upstream_requests"])
        result[f"{prefix}_client_cpu_s_per_s"] = round(r["client_cpu_s_per_s"], 3)
        result[f"{prefix}_host_busy_cores"] = round(r["host_busy_cores"], 2)
    result.update({
        "app_cpu_s_per_s": round(app_cpu, 3),
        "app_cpu_ms_per_s_per_viewer": round(app_cpu / v * 1000, 3),
        "nginx_cpu_s_per_s": round(ngx_cpu, 3),
        "nginx_app_cpu_s_per_s": round(ngx_app_cpu, 3),
        "nginx_cpu_ms_per_s_per_viewer": round((ngx_app_cpu + ngx_cpu) / v * 1000, 3),
        "ratio_app_vs_nginx_p99": round(app["all"]["p99"] / ngx["all"]["p99"], 2) if ngx["all"]["p99"] else None,
        "app_p99_under_200_ms": app["all"]["p99"] < target,
        "nginx_p99_under_200_ms": ngx["all"]["p99"] < target,
    })
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
