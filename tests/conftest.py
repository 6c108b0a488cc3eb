"""Shared fixtures: demo data, real server processes (daphne, media node, coturn) and Chromium.

The suite runs twice (see Makefile): scaled out (PostgreSQL + Redis + a separate media node process)
and on the embedded default (SQLite + in-memory layer + the media node inside the web process).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCALED = bool(os.environ.get("REDIS_URL"))


def pytest_sessionstart(session: Any) -> None:
    """A server process of an interrupted earlier run may still hold the PostgreSQL test database,
    and then it can be neither dropped nor created: end those sessions first."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return
    import psycopg

    test_name = db.get("TEST", {}).get("NAME") or f"test_{db['NAME']}"
    try:
        with psycopg.connect(
            host=db.get("HOST") or "127.0.0.1", port=db.get("PORT") or 5432, user=db.get("USER") or "postgres",
            password=db.get("PASSWORD") or None, dbname="postgres", autocommit=True,
        ) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (test_name,),
            )
    except psycopg.Error:
        pass  # no rights or no server: pytest-django reports the real problem


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    """Tests marked `once` do not depend on the deployment mode (pure cores, settings checks, network
    impairment): they run in the scaled half of `make test` only."""
    if SCALED:
        return
    once = [item for item in items if item.get_closest_marker("once")]
    if once:
        config.hook.pytest_deselected(items=once)
        items[:] = [item for item in items if not item.get_closest_marker("once")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, *, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port} after {timeout}s")


def database_url_for_tests() -> str:
    """The URL of the test database pytest-django created, for server processes to share."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db.get('USER') or 'postgres'}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=database_url_for_tests(),
        CLASSCAST_ICE_HOST_ADDRESSES="127.0.0.1",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class LiveServer:
    def __init__(self, *, port: int, procs: list[subprocess.Popen], log_dir: Path, web_cmd: list[str], env: dict) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.procs = procs
        self.log_dir = log_dir
        self.web_cmd = web_cmd
        self.env = env

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(self.log_dir.glob("*.log")))

    def stop_web(self) -> None:
        web = self.procs.pop()
        stop_processes([web])

    def start_web(self) -> None:
        """(Re)start the web process on the same port, as a deploy or a crash-restart would."""
        log = open(self.log_dir / "web.log", "a")
        web = subprocess.Popen(self.web_cmd, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(web)
        wait_for_port(self.port, proc=web)


def start_live_server(tmp: Path, **env_extra: str) -> LiveServer:
    """daphne serving config.asgi, plus a media node process when the channel layer is Redis."""
    port = free_port()
    env = server_env(**env_extra)
    procs = []
    if SCALED:
        node_log = open(tmp / "media_node.log", "w")
        procs.append(
            subprocess.Popen(
                [sys.executable, "manage.py", "media_node", "--node-id", f"test-node-{port}"],
                cwd=ROOT, env=env, stdout=node_log, stderr=subprocess.STDOUT,
            )
        )
    web_cmd = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"]
    server = LiveServer(port=port, procs=procs, log_dir=tmp, web_cmd=web_cmd, env=env)
    server.start_web()
    return server


def stop_processes(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(autouse=True)
def _hls_access_forgotten() -> Iterator[None]:
    """The HLS origin remembers who may watch for 2 s; ids repeat from one test database to the next."""
    from classroom.hls_views import hls_access_forget

    hls_access_forget()
    yield
    hls_access_forget()


@pytest.fixture
def demo(db) -> dict[str, Any]:
    from classroom.services.demo import demo_seed

    return demo_seed()


@pytest.fixture
def live_server_proc(transactional_db, tmp_path) -> Iterator[LiveServer]:
    from classroom.models import MediaNode

    MediaNode.objects.all().delete()  # nodes of earlier tests are gone
    server = start_live_server(tmp_path)
    try:
        yield server
    finally:
        stop_processes(server.procs)


@pytest.fixture
def live_demo(live_server_proc) -> dict[str, Any]:
    from classroom.services.demo import demo_seed

    return demo_seed()


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


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def login_page(
    browser: Any, server: LiveServer, username: str, password: str, *, permissions: list[str] | None = None
) -> Any:
    """A new browser context logged in as `username` through the real login form."""
    granted = ["camera", "microphone"] if permissions is None else permissions
    context = browser.new_context(base_url=server.url, permissions=granted)
    page = context.new_page()
    page.goto("/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)
    return page


def bring_on_stage(instructor: Any, student: Any) -> None:
    """The stage's front door, as people use it: raise a hand, get invited, accept."""
    student.wait_for_selector("#raise-hand:not([hidden])")
    student.click("#raise-hand")
    instructor.wait_for_selector("#hands li [data-action=invite]")
    instructor.click("#hands li [data-action=invite]")
    student.wait_for_selector("#invitation:not([hidden])")
    student.click("#accept-invite")


@pytest.fixture
def fast_passwords(settings) -> None:
    """MD5 hashing for tests that only talk to this process (a live server verifies with its own)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def wait_until(
    fn: Any, *, timeout: float = 30.0, every: float = 0.25, what: str = "condition", logs: Any = None
) -> Any:
    """Poll `fn` until it returns something truthy (and return that); fail with what was awaited."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last value {last!r})\n{logs() if logs else ''}")


# --- the whole media stack: web + media node, packager, media and default Celery workers, beat ------

HLS_SEGMENT_S = 2.0


class Stack:
    def __init__(self, server, hls_root: Path, procs: dict[str, subprocess.Popen], log_dir: Path) -> None:
        self.server = server
        self.url = server.url
        self.hls_root = hls_root
        self.procs = procs
        self.log_dir = log_dir

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.log_dir.glob("*.log"))
        )

    @property
    def spool(self) -> Path:
        return self.log_dir / "spool"

    def folder(self, class_id: int) -> Path | None:
        folders = sorted((self.hls_root / f"class-{class_id}").glob("session-*"))
        return folders[-1] if folders else None


def spawn(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> subprocess.Popen:
    log = open(log_dir / f"{name}.log", "w")
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture
def stack(transactional_db, tmp_path, settings, monkeypatch) -> Iterator[Stack]:
    from classroom.models import MediaNode

    # Playwright's sync API keeps an event loop in this thread; the test's own ORM calls are still
    # plain synchronous code, so tell Django not to refuse them.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "1")
    MediaNode.objects.all().delete()
    rtmp_port = free_port()
    hls_root = tmp_path / "hls"
    settings.CLASSCAST_HLS_ROOT = hls_root
    settings.CLASSCAST_RECORDING_SPOOL = tmp_path / "spool"
    store = {"location": str(tmp_path / "store")}
    settings.STORAGES = {**settings.STORAGES, "recordings": {**settings.STORAGES["recordings"], "OPTIONS": store}}
    extra = {
        "CLASSCAST_RTMP_PORT": str(rtmp_port),
        "CLASSCAST_RTMP_INGEST_URL": f"rtmp://127.0.0.1:{rtmp_port}/live",
        "CLASSCAST_HLS_ROOT": str(hls_root),
        "CLASSCAST_HLS_SEGMENT_S": str(HLS_SEGMENT_S),
        "CLASSCAST_BROADCAST_STALE_S": "5",
        "CLASSCAST_RECORDING_STALE_S": "5",
        "CLASSCAST_RECORDING_SPOOL": str(tmp_path / "spool"),
        "CLASSCAST_RECORDINGS_STORAGE_OPTIONS": json.dumps(store),
    }
    server = start_live_server(tmp_path, **extra)
    env = {**server.env, "CLASSCAST_SIGNALING_URL": f"ws://127.0.0.1:{server.port}"}
    procs: dict[str, subprocess.Popen] = {}
    try:
        subprocess.run(
            [sys.executable, "-m", "celery", "-A", "config", "purge", "-f", "-Q", "media"],
            cwd=ROOT, env=env, capture_output=True, timeout=60,
        )
        procs["packager"] = spawn("packager", [sys.executable, "manage.py", "hls_packager"], env, tmp_path)
        wait_for_port(rtmp_port, proc=procs["packager"])
        procs["worker"] = spawn(
            "worker",
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "media", "--concurrency", "2",
             "--prefetch-multiplier", "1", "-l", "INFO", "-n", f"media-{rtmp_port}@%h"],
            env, tmp_path,
        )
        procs["housekeeping"] = spawn(
            "housekeeping",
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default", "--pool", "solo",
             "-l", "INFO", "-n", f"default-{rtmp_port}@%h"],
            env, tmp_path,
        )
        procs["beat"] = spawn(
            "beat",
            [sys.executable, "-m", "celery", "-A", "config", "beat", "-l", "INFO",
             "--schedule", str(tmp_path / "beat-schedule")],
            env, tmp_path,
        )
        yield Stack(server, hls_root, procs, tmp_path)
    finally:
        stop_processes(list(procs.values()))
        stop_processes(server.procs)


def stage_start(browser: Any, server: LiveServer, demo: dict[str, Any], *students: str) -> tuple[Any, list[Any]]:
    """ada starts the class from the console and brings each student on stage through the front door."""
    ada = login_page(browser, server, "ada", "classcast-demo")
    ada.goto(demo["urls"]["instructor"])
    pages = []
    for name in students:
        page = login_page(browser, server, name, "classcast-demo")
        page.goto(demo["urls"]["student"])
        pages.append(page)
    ada.click("#start-session")
    ada.wait_for_selector("#stage-grid .tile.me")
    for page in pages:
        bring_on_stage(ada, page)
        page.wait_for_selector("#stage-grid .tile:not(.me) video")
    return ada, pages


def _room(**room_options: Any) -> tuple[Any, dict[str, Any]]:
    from classroom.media_node.node import ice_host_addresses_pin, rtc_configuration
    from sfu.room import Room

    ice_host_addresses_pin(["127.0.0.1"])
    clients: dict[str, Any] = {}

    async def send(channel: str, message: dict[str, Any]) -> None:
        await clients[channel].deliver(message)

    return Room(session_id=1, rtc_config=rtc_configuration(), send=send, **room_options), clients


@pytest.fixture
def room_and_clients() -> tuple[Any, dict[str, Any]]:
    """The media node's Room in this process, delivering to the test's aiortc clients by peer id."""
    return _room()


@pytest.fixture
async def room_with() -> Any:
    """`room_with(**Room options)` -> (room, clients) like room_and_clients; every peer leaves and every
    client closes when the test ends."""
    made: list[tuple[Any, dict[str, Any]]] = []

    def make(**room_options: Any) -> tuple[Any, dict[str, Any]]:
        made.append(_room(**room_options))
        return made[-1]

    yield make
    for room, clients in made:
        async with room.lock:
            for peer_id in list(room.peers):
                await room.leave(peer_id, reason="left")
        for client in clients.values():
            await client.close()
