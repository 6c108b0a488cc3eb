"""Join time and media-node CPU of the stage call, each printed beside a peer's figure from the same run.

Run from the project root, with nothing else to start:

    .venv/bin/python bench/join_time.py [--joins 10]

What it does (see bench/README.md):

* builds a throwaway embedded-default install in a temp directory (SQLite, in-memory channel layer,
  media node inside the daphne process), migrates it, seeds the demo class and starts daphne on a free
  loopback port;
* peer: a plain browser-to-browser WebRTC call (two RTCPeerConnections in one static page served by
  http.server, no server media path): ms from navigation start to the first remote video frame, N loads;
* ours: the instructor (ada) starts the class, a student (ben) raises a hand, is invited and accepts;
  ben's page is then reloaded N times (he stays on stage, so each load rejoins the call) and
  `window.classcast.firstFrameMs` is read: ms from navigation start to the first decoded remote frame;
* CPU of the daphne process (which hosts the media node) over a steady window with 2 and then 3 stage
  members, from /proc/<pid>/stat.

The last line printed is `RESULT {json}`. Everything listens on and talks to 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The same flags as the browser tests (tests/conftest.py): fake 640x480@20 camera and a tone,
# permission prompts answered, loopback candidates allowed.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
]

# The peer: one page, two RTCPeerConnections wired to each other in JS (offer/answer/candidates), the
# same getUserMedia constraints as static/classroom/rtc.js, both directions sending, and the first
# frame of the remote video taken with requestVideoFrameCallback as classroom.js does.
P2P_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>p2p join-time peer</title></head>
<body>
<video id="remote" autoplay playsinline muted></video>
<script>
window.p2p = { firstFrameMs: null, error: null };
(async () => {
  try {
    const local = await navigator.mediaDevices.getUserMedia({
      audio: true,
      video: { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 30 } },
    });
    const a = new RTCPeerConnection({ iceServers: [] });
    const b = new RTCPeerConnection({ iceServers: [] });
    let aReady, bReady;
    const aHasRemote = new Promise((r) => (aReady = r));
    const bHasRemote = new Promise((r) => (bReady = r));
    a.onicecandidate = (ev) => ev.candidate && bHasRemote.then(() => b.addIceCandidate(ev.candidate));
    b.onicecandidate = (ev) => ev.candidate && aHasRemote.then(() => a.addIceCandidate(ev.candidate));
    const video = document.getElementById("remote");
    b.ontrack = (ev) => {
      if (ev.track.kind !== "video") return;
      video.srcObject = ev.streams[0] || new MediaStream([ev.track]);
      video.play().catch(() => {});
      video.requestVideoFrameCallback(() => {
        if (window.p2p.firstFrameMs === null) window.p2p.firstFrameMs = performance.now();
      });
    };
    for (const track of local.getTracks()) {
      a.addTrack(track, local);
      b.addTrack(track, local);
    }
    await a.setLocalDescription(await a.createOffer());
    await b.setRemoteDescription(a.localDescription);
    bReady();
    await b.setLocalDescription(await b.createAnswer());
    await a.setRemoteDescription(b.localDescription);
    aReady();
  } catch (err) {
    window.p2p.error = String(err);
  }
})();
</script>
</body></html>
"""

# framesDecoded per stage member (user id) of the inbound video on a page's subscribe connection.
FRAMES_BY_USER = """
async () => {
  const call = window.classcast && window.classcast.call;
  const out = {};
  if (!call || !call.sub) return out;
  (await call.sub.getStats()).forEach((s) => {
    const info = s.type === "inbound-rtp" && s.kind === "video" && call.tracks[s.mid];
    if (info) out[info.user_id] = (out[info.user_id] || 0) + (s.framesDecoded || 0);
  });
  return out;
}
"""
PUBLISH_CONNECTED = "(c => c && c.pub && c.pub.connectionState === 'connected')(window.classcast.call)"
# A video flow counts as flowing at this many decoded frames per second or more (the fake camera sends 20).
FLOWING_FPS = 5.0


class BenchError(RuntimeError):
    pass


class BenchTimeout(BenchError):
    pass


# --- small helpers ------------------------------------------------------------------------------


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, *, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"daphne exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "min": min(values),
        "max": max(values),
    }


def process_cpu_s(pid: int) -> float:
    """utime + stime of every thread of the process, in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2 :].split()  # after "pid (comm) ": fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def host_busy_s() -> float:
    """CPU seconds the whole machine spent busy (every core), from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def host_busy_cores(*, seconds: float) -> float:
    start, t0 = host_busy_s(), time.monotonic()
    time.sleep(seconds)
    return (host_busy_s() - start) / (time.monotonic() - t0)


# --- the server under test ----------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log_path: Path
    demo: dict[str, Any]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def server_env(var_dir: Path) -> dict[str, str]:
    """The embedded default, isolated in var_dir: no DATABASE_URL/REDIS_URL/broker, no inherited CLASSCAST_*."""
    drop = {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("CLASSCAST_")}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        CLASSCAST_VAR_DIR=str(var_dir),
        CLASSCAST_ICE_HOST_ADDRESSES="127.0.0.1",
        PYTHONUNBUFFERED="1",
    )
    return env


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise BenchError(f"manage.py {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


@contextlib.contextmanager
def running_server(var_dir: Path) -> Iterator[Server]:
    env = server_env(var_dir)
    manage(env, "migrate", "--noinput")
    demo = json.loads(manage(env, "seed_demo", "--json").strip().splitlines()[-1])
    port = free_port()
    log_path = var_dir / "daphne.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
            cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
        )
    server = Server(proc=proc, port=port, log_path=log_path, demo=demo)
    try:
        wait_for_port(port, proc=proc)
        yield server
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --- the peer's page server -----------------------------------------------------------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


@contextlib.contextmanager
def static_server(directory: Path) -> Iterator[str]:
    handler = functools.partial(QuietHandler, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- browser steps --------------------------------------------------------------------------------


def login_page(browser: Any, server: Server, username: str) -> Any:
    """A new context logged in as `username` through the real login form (as tests/conftest.py does)."""
    context = browser.new_context(base_url=server.url, permissions=["camera", "microphone"])
    page = context.new_page()
    page.goto("/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", server.demo["instructor"]["password"])  # every demo login has this install's password
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)
    return page


def first_frame_ms(page: Any, expr: str, *, timeout_ms: int, error_expr: str = "null") -> float:
    """Wait for `expr` (a number once the first remote frame shows) and return it; fail on `error_expr`."""
    ready = f"(() => {{ try {{ return ({expr}) != null || ({error_expr}) != null; }} catch {{ return false; }} }})()"
    page.wait_for_function(ready, timeout=timeout_ms, polling=50)
    error = page.evaluate(error_expr)
    if error:
        raise BenchError(f"{page.url}: {error}")
    return float(page.evaluate(expr))


def measure_p2p(browser: Any, url: str, *, loads: int, timeout_ms: int) -> list[float]:
    context = browser.new_context(permissions=["camera", "microphone"])
    page = context.new_page()
    wait = functools.partial(
        first_frame_ms, page, "window.p2p.firstFrameMs", timeout_ms=timeout_ms, error_expr="window.p2p.error"
    )
    try:
        page.goto(url)  # warm-up load, not counted (ben's page had its own before the timed reloads)
        wait()
        samples = []
        for i in range(loads):
            page.reload()
            samples.append(wait())
            log(f"p2p load {i + 1}/{loads}: {samples[-1]:.0f} ms")
        return samples
    finally:
        context.close()


@dataclass
class Member:
    name: str
    page: Any
    user_id: int


def stage_member(name: str, page: Any) -> Member:
    """A class page once the server's welcome (which says who we are) has arrived."""
    page.wait_for_function("window.classcast && window.classcast.me !== null")
    return Member(name=name, page=page, user_id=page.evaluate("window.classcast.me.user_id"))


def bring_on_stage(instructor: Member, student: Member, *, timeout_ms: int) -> None:
    """The student raises a hand, the instructor invites them, the student accepts and gets media."""
    student.page.wait_for_selector("#raise-hand:not([hidden])")
    student.page.click("#raise-hand")
    invite = f'#hands li[data-user-id="{student.user_id}"] [data-action=invite]'
    instructor.page.wait_for_selector(invite)
    instructor.page.click(invite)
    student.page.wait_for_selector("#invitation:not([hidden])")
    student.page.click("#accept-invite")
    student.page.wait_for_function("window.classcast.firstFrameMs !== null", timeout=timeout_ms)


def video_frames(members: list[Member]) -> dict[tuple[str, str], int]:
    """Decoded frames per flow (receiver name, sender name), 0 for a flow that has no inbound stream."""
    out = {}
    for rx in members:
        by_user = rx.page.evaluate(FRAMES_BY_USER)
        for tx in members:
            if tx is not rx:
                out[(rx.name, tx.name)] = by_user.get(str(tx.user_id), 0)
    return out


def wait_flows(members: list[Member], *, timeout_s: float) -> list[str]:
    """Wait until every member decodes new video from every other; returns the flows that never did."""
    first = video_frames(members)
    deadline = time.monotonic() + timeout_s
    while True:
        time.sleep(0.5)
        now = video_frames(members)
        missing = [f"{rx}<-{tx}" for (rx, tx), n in now.items() if n <= first[(rx, tx)]]
        if not missing or time.monotonic() > deadline:
            return missing


@dataclass
class Rejoins:
    join_ms: list[float]
    other_side_ok: int  # reloads after which the other member decoded the reloaded one's video again


def measure_rejoins(member: Member, other: Member, *, loads: int, settle_s: float, timeout_ms: int) -> Rejoins:
    samples, ok = [], 0
    for i in range(loads):
        member.page.reload()
        samples.append(first_frame_ms(member.page, "window.classcast.firstFrameMs", timeout_ms=timeout_ms))
        # Back to a steady call before the next load: our publish connection up, and whether the other
        # side decodes our new video again (checked, not assumed: see bench/README.md).
        member.page.wait_for_function(PUBLISH_CONNECTED, timeout=timeout_ms)
        seen = not wait_flows([other, member], timeout_s=settle_s + 2)
        ok += seen
        log(f"rejoin {i + 1}/{loads}: {samples[-1]:.0f} ms ({other.name} decodes {member.name} again: {seen})")
        time.sleep(settle_s)
    return Rejoins(join_ms=samples, other_side_ok=ok)


@dataclass
class CpuSample:
    members: int
    cpu_s_per_s: float  # CPU seconds the daphne process (media node inside) used per wall second
    host_busy_cores: float  # the whole machine, every process
    fps: dict[tuple[str, str], float]  # decoded video fps per flow over the window

    @property
    def per_member(self) -> float:
        return self.cpu_s_per_s / self.members

    @property
    def flows_ok(self) -> int:
        return sum(v >= FLOWING_FPS for v in self.fps.values())

    @property
    def ms_per_forwarded_frame(self) -> float:
        """CPU per video frame the node delivered (decode share + encode + audio), for load-independent comparison."""
        delivered = sum(self.fps.values())
        return self.cpu_s_per_s * 1000 / delivered if delivered else math.nan


def measure_cpu(pid: int, members: list[Member], *, window_s: float) -> CpuSample:
    frames0 = video_frames(members)
    cpu0, host0, t0 = process_cpu_s(pid), host_busy_s(), time.monotonic()
    time.sleep(window_s)
    cpu1, host1, t1 = process_cpu_s(pid), host_busy_s(), time.monotonic()
    frames1 = video_frames(members)
    elapsed = t1 - t0
    return CpuSample(
        members=len(members),
        cpu_s_per_s=(cpu1 - cpu0) / elapsed,
        host_busy_cores=(host1 - host0) / elapsed,
        fps={flow: (frames1[flow] - frames0[flow]) / elapsed for flow in frames1},
    )


# --- the run ------------------------------------------------------------------------------------------


def start_class(browser: Any, server: Server, *, timeout_ms: int, settle_s: float) -> tuple[Member, Member]:
    """ada starts the class; ben raises a hand, is invited, accepts; both decode each other's video."""
    urls = server.demo["urls"]
    ada_page = login_page(browser, server, "ada")
    ben_page = login_page(browser, server, "ben")
    ada_page.goto(urls["instructor"])
    ben_page.goto(urls["student"])
    ada_page.click("#start-session")
    ada_page.wait_for_selector("#session-status.live")
    ada_page.wait_for_selector("#stage-grid .tile.me")
    ada, ben = stage_member("ada", ada_page), stage_member("ben", ben_page)
    bring_on_stage(ada, ben, timeout_ms=timeout_ms)
    missing = wait_flows([ada, ben], timeout_s=timeout_ms / 1000)
    if missing:
        raise BenchError(f"the two-member call never carried video: {missing}")
    time.sleep(settle_s)
    return ada, ben


def add_student(browser: Any, server: Server, name: str, instructor: Member, *, timeout_ms: int) -> Member:
    page = login_page(browser, server, name)
    page.goto(server.demo["urls"]["student"])
    student = stage_member(name, page)
    bring_on_stage(instructor, student, timeout_ms=timeout_ms)
    return student


def remove_student(student: Member) -> None:
    student.page.click("#leave-stage")
    student.page.wait_for_selector("#raise-hand:not([hidden])")
    student.page.context.close()


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    p2p_dir = tmp / "p2p"
    p2p_dir.mkdir()
    (p2p_dir / "index.html").write_text(P2P_PAGE)
    timeout_ms = int(args.step_timeout * 1000)
    raw: dict[str, Any] = {}

    log("migrating and seeding a throwaway database, starting daphne")
    with running_server(tmp / "var") as server, static_server(p2p_dir) as p2p_url, sync_playwright() as pw:
        raw["baseline_busy"] = host_busy_cores(seconds=2.0)  # other work on the machine, before any browser
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            # The peer first, while the server holds no call: the machine is as quiet for it as it gets.
            log(f"peer: {args.joins} loads of a browser-to-browser call page")
            raw["p2p"] = measure_p2p(browser, f"{p2p_url}/index.html", loads=args.joins, timeout_ms=timeout_ms)

            log("stage: ada starts the class, ben is invited on stage")
            ada, ben = start_class(browser, server, timeout_ms=timeout_ms, settle_s=args.settle)
            # CPU before the reloads, while every connection is its first one (see bench/README.md).
            log(f"cpu: 2 stage members, {args.cpu_window:.0f} s window")
            raw["cpu2"] = measure_cpu(server.proc.pid, [ada, ben], window_s=args.cpu_window)

            log("cpu: cleo joins the stage")
            cleo = add_student(browser, server, "cleo", ada, timeout_ms=timeout_ms)
            missing = wait_flows([ada, ben, cleo], timeout_s=10)
            if missing:
                log(f"WARNING: with 3 members these video flows never started: {', '.join(missing)}")
            time.sleep(args.settle)
            log(f"cpu: 3 stage members, {args.cpu_window:.0f} s window")
            raw["cpu3"] = measure_cpu(server.proc.pid, [ada, ben, cleo], window_s=args.cpu_window)

            log("stage: cleo leaves the stage; ada and ben stay")
            remove_student(cleo)
            missing = wait_flows([ada, ben], timeout_s=args.step_timeout)
            if missing:
                raise BenchError(f"after cleo left, the call lost video: {missing}")
            time.sleep(args.settle)

            log(f"stage: {args.joins} reloads of ben's page (each rejoins the call)")
            rejoins = measure_rejoins(ben, ada, loads=args.joins, settle_s=args.settle, timeout_ms=timeout_ms)
            raw["ours"], raw["other_side_ok"] = rejoins.join_ms, rejoins.other_side_ok
        except Exception:
            print(f"--- daphne log (tail) ---\n{server.log_tail()}", file=sys.stderr)
            raise
        finally:
            browser.close()
    return raw


def report(args: argparse.Namespace, raw: dict[str, Any]) -> dict[str, Any]:
    ours, p2p = summary(raw["ours"]), summary(raw["p2p"])
    cpu2, cpu3 = raw["cpu2"], raw["cpu3"]
    result: dict[str, Any] = {
        "joins": args.joins,
        "join_p50_ms": round(ours["p50"], 1),
        "join_p95_ms": round(ours["p95"], 1),
        "join_min_ms": round(ours["min"], 1),
        "join_max_ms": round(ours["max"], 1),
        "p2p_join_p50_ms": round(p2p["p50"], 1),
        "p2p_join_p95_ms": round(p2p["p95"], 1),
        "p2p_join_min_ms": round(p2p["min"], 1),
        "p2p_join_max_ms": round(p2p["max"], 1),
        "ratio_vs_p2p": round(ours["p50"] / p2p["p50"], 2),
        "rejoins_other_side_video_back": raw["other_side_ok"],
    }
    for cpu in (cpu2, cpu3):
        n = cpu.members
        result[f"cpu_s_per_s_{n}_members"] = round(cpu.cpu_s_per_s, 3)
        result[f"cpu_per_stage_member_{n}"] = round(cpu.per_member, 3)
        result[f"host_busy_cores_{n}_members"] = round(cpu.host_busy_cores, 2)
        result[f"video_flows_ok_{n}_members"] = cpu.flows_ok
        result[f"video_flows_expected_{n}_members"] = n * (n - 1)
        result[f"delivered_video_fps_{n}_members"] = round(sum(cpu.fps.values()), 1)
        result[f"cpu_ms_per_delivered_frame_{n}_members"] = round(cpu.ms_per_forwarded_frame, 2)
    result["host_busy_cores_before_run"] = round(raw["baseline_busy"], 2)
    result["cpu_window_s"] = args.cpu_window
    result["cores"] = os.cpu_count()

    print(f"\nJoin time: navigation start -> first decoded remote video frame, {args.joins} page loads each")
    print(f"  {'':<6} {'classcast':>10} {'p2p peer':>10} {'ratio':>7}")
    for key in ("p50", "p95", "min", "max"):
        print(f"  {key + ' ms':<6} {ours[key]:>10.0f} {p2p[key]:>10.0f} {ours[key] / p2p[key]:>6.2f}x")
    print(f"  classcast: {' '.join(f'{v:.0f}' for v in raw['ours'])}")
    print(f"  p2p:       {' '.join(f'{v:.0f}' for v in raw['p2p'])}")
    print(
        f"  after {raw['other_side_ok']} of {args.joins} reloads the instructor decoded the reloaded"
        " student's video again (the join figure is the student's side)"
    )
    print(
        f"\nMedia node CPU (the daphne process, embedded default), {args.cpu_window:.0f} s windows,"
        f" {os.cpu_count()} cores"
    )
    print(f"  (the machine was {raw['baseline_busy']:.2f} cores busy before the run started)")
    print(
        f"  {'members':<8} {'cpu s/s':>8} {'per member':>11} {'ms/frame':>9} {'host busy':>10} {'video flows':>12}"
        "  fps per flow (rx<-tx)"
    )
    for cpu in (cpu2, cpu3):
        flows = " ".join(f"{rx}<-{tx}:{v:.0f}" for (rx, tx), v in sorted(cpu.fps.items()))
        print(
            f"  {cpu.members:<8} {cpu.cpu_s_per_s:>8.3f} {cpu.per_member:>11.3f} {cpu.ms_per_forwarded_frame:>9.1f}"
            f" {cpu.host_busy_cores:>10.2f} {f'{cpu.flows_ok}/{cpu.members * (cpu.members - 1)}':>12}  {flows}"
        )
    print(
        "  The p2p peer spends no server CPU at all. The media node forwards encoded frames (no decode,\n"
        "  no encode): its cost is receiving n streams and packetizing n(n-1), a few ms of CPU per second\n"
        "  per stream."
    )
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--joins", type=int, default=10, help="page loads per side (>= 10; default 10)")
    parser.add_argument("--cpu-window", type=float, default=10.0, help="seconds per CPU sample (default 10)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds to let the call settle between steps")
    parser.add_argument("--step-timeout", type=float, default=30.0, help="seconds any one browser step may take")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds the whole run may take (default 300)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (database, daphne log)")
    args = parser.parse_args(argv)
    if args.joins < 10:
        parser.error("--joins must be at least 10 (p95 of fewer loads says little)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def on_alarm(signum: int, frame: Any) -> None:
        raise BenchTimeout(f"the benchmark took longer than --timeout {args.timeout:.0f} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, args.timeout)
    tmp = Path(tempfile.mkdtemp(prefix="classcast-bench-"))
    started = time.monotonic()
    try:
        raw = run(args, tmp)
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    result = report(args, raw)
    result["run_s"] = round(time.monotonic() - started, 1)
    print(f"\nRESULT {json.dumps(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
