"""A real classcast stack with live classes on it, for benches (class capacity, glass-to-glass delay).

    from live_class import LiveStack, clip_make, stamp_read, SendLog

    clip = clip_make(tmp / "clip.webm")                   # VP8 640x360@30 + Opus, pre-encoded once
    with LiveStack(tmp, classes_max=3) as stack:          # web+media node, packager, workers, beat
        cls = stack.class_start(1, clip)                   # 4 aiortc members on stage, live, recording
        ...
        cls.send_log("inst1")                              # SendLog of a member (inst<k>, stud<k>a..c)

What it runs, all on 127.0.0.1, in the caller's temp dir (processes stopped when the `with` ends; the
caller removes the dir after reading what it needs from it, or keeps it for `--keep`; `keep` is recorded
for callers):

* the embedded default as the Procfile starts it: SQLite, the in-memory channel layer with the media
  node inside the daphne web process, the filesystem Celery broker; `manage.py hls_packager` (RTMP
  ingest + HLS), a Celery worker `-Q media` (compositor and recorder jobs, 2 slots per class), a
  worker `-Q default` (housekeeping, post-processing) and beat (the jobs' watchdogs);
* per class, one publisher process (`python bench/live_class.py --class-process ...`) standing for the
  four browsers on stage. It logs the instructor and three students in through the login form (real
  Django session cookies), opens the class socket for each (`/ws/classes/<id>/`, the browser's Origin),
  and then does what rtc.js and the console do: `session.start`; each student `hand.raise`, the
  instructor `stage.invite`, the student `stage.accept`; every member `rtc.join`, answers the media
  node's `publish` offer with its camera and microphone and its `subscribe` offer (the other three);
  then the instructor sends `broadcast.start` and `recording.start`. aiortc gets an explicit ICE
  configuration with no servers and gathers on 127.0.0.1 only.

Publishers are cheap (on a 2-core machine their CPU competes with the server's): they send a clip that
was encoded once, up front (`clip_make`: 1800 frames of VP8 640x360@30 at 1 Mbit/s, keyframe every 2 s,
and 20 ms Opus frames); aiortc's `RTCRtpSender` only packetizes `av.Packet`s. A keyframe request
(PLI/FIR, relayed by the media node for a new subscriber) makes the track jump to the clip's next
keyframe, as a browser would send one at once. The subscribe side counts the frames it receives and
decodes nothing (the encoded-frame tap with `decode=False`): a browser's decoding is not the server's
cost. Each member starts the clip at a different keyframe, so the four tiles differ.

Every video frame of the clip carries a **stamp**: its clip index as 16 black/white blocks across the
top of the picture (12 data bits + a 4-bit check), big enough to survive the scaling into a grid tile
of the 1280x720 program and x264 at 2.5 Mbit/s. `stamp_read(frame, rect)` reads it back from any frame
and rectangle (None when it does not check out); a `SendLog` maps (clip index, time seen) back to the
wall-clock time the publisher sent that frame, so the glass-to-glass bench can compute the delay.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import logging
import os
import queue
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CLK_TCK = os.sysconf("SC_CLK_TCK")
PASSWORD = "classcast-bench"

# --- the clip ---------------------------------------------------------------------------------------------

CLIP_W, CLIP_H, CLIP_FPS = 640, 360, 30
CLIP_FRAMES = 1800  # 60 s: longer than any delay we measure, so (index, time seen) has one sending
CLIP_KEYINT = 60
CLIP_VIDEO_BPS = 1_000_000
OPUS_FRAME = 960  # 20 ms at 48 kHz
VIDEO_TIME_BASE = Fraction(1, 90_000)
AUDIO_TIME_BASE = Fraction(1, 48_000)

# The stamp: STAMP_BLOCKS blocks across the top STAMP_ROWS rows of the picture; bit i (MSB first) is
# white (235) or black (16). 12 data bits (the clip index) + a 4-bit check (sum of the three nibbles).
STAMP_BLOCKS = 16
STAMP_DATA_BITS = 12
STAMP_ROWS = 40  # of 360: about 40 px in a source frame, 39 in a grid tile of the 720p program
STAMP_WHITE, STAMP_BLACK = 235, 16


def _stamp_bits(index: int) -> list[int]:
    value = index & 0xFFF
    check = ((value >> 8) + (value >> 4) + value) & 0xF
    word = (value << 4) | check
    return [(word >> (STAMP_BLOCKS - 1 - i)) & 1 for i in range(STAMP_BLOCKS)]


def stamp_draw(y: np.ndarray, u: np.ndarray, v: np.ndarray, index: int) -> None:
    """Draw the stamp of `index` into the top rows of a yuv420p picture (planes as arrays, in place)."""
    h, w = y.shape
    rows = max(2, round(STAMP_ROWS * h / CLIP_H) // 2 * 2)
    for i, bit in enumerate(_stamp_bits(index)):
        x0, x1 = i * w // STAMP_BLOCKS, (i + 1) * w // STAMP_BLOCKS
        y[:rows, x0:x1] = STAMP_WHITE if bit else STAMP_BLACK
    u[: rows // 2, :] = 128
    v[: rows // 2, :] = 128


def _rect_xywh(rect: Any) -> tuple[int, int, int, int]:
    if rect is None:
        raise ValueError("a rect is needed")
    if isinstance(rect, (tuple, list)):
        return tuple(int(v) for v in rect)  # type: ignore[return-value]
    return int(rect.x), int(rect.y), int(rect.w), int(rect.h)


def luma(frame: av.VideoFrame) -> np.ndarray:
    """The Y plane of a frame as a (height, width) array (a view for yuv420p, no conversion)."""
    if frame.format.name in ("yuv420p", "yuvj420p", "nv12", "gray"):
        plane = frame.planes[0]
        return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
    return frame.to_ndarray(format="gray")


def stamp_read(frame: av.VideoFrame | np.ndarray, rect: Any = None) -> int | None:
    """The clip index stamped into the picture inside `rect` (x, y, w, h; an object with those attributes,
    e.g. a layout Tile/Rect; default: the whole frame), or None if the blocks do not check out (not a
    stamped picture, a name card, a frame torn by loss). `frame` may also be a luma array."""
    y = frame if isinstance(frame, np.ndarray) else luma(frame)
    x0, y0, w, h = _rect_xywh(rect) if rect is not None else (0, 0, y.shape[1], y.shape[0])
    row = y0 + int(STAMP_ROWS * h / CLIP_H * 0.5)
    half_h = max(1, int(STAMP_ROWS * h / CLIP_H * 0.25))
    bits = []
    for i in range(STAMP_BLOCKS):
        cx = x0 + int((i + 0.5) * w / STAMP_BLOCKS)
        half_w = max(1, int(w / STAMP_BLOCKS * 0.25))
        patch = y[row - half_h : row + half_h, cx - half_w : cx + half_w]
        if patch.size == 0:
            return None
        mean = float(patch.mean())
        if 70 < mean < 180:  # neither black nor white: not a stamp
            return None
        bits.append(1 if mean >= 126 else 0)
    word = 0
    for bit in bits:
        word = (word << 1) | bit
    value, check = word >> 4, word & 0xF
    if ((value >> 8) + (value >> 4) + value) & 0xF != check:
        return None
    return value


@dataclass(frozen=True)
class Clip:
    path: Path  # webm: VP8 640x360@30 + Opus 48 kHz stereo
    frames: int
    keyframes: tuple[int, ...]
    video_bps: int


def clip_make(path: Path, *, frames: int = CLIP_FRAMES, video_bps: int = CLIP_VIDEO_BPS) -> Clip:
    """Encode the publishers' clip once: testsrc2 (moving, detailed) with the stamp, VP8 with libvpx's
    realtime settings (as a browser's encoder), and a tone as Opus in 20 ms frames."""
    keyframes = []
    with av.open(str(path), "w", format="webm") as out:
        vstream = out.add_stream("libvpx", rate=CLIP_FPS)
        vstream.width, vstream.height, vstream.pix_fmt = CLIP_W, CLIP_H, "yuv420p"
        vstream.bit_rate = video_bps
        vstream.codec_context.gop_size = CLIP_KEYINT
        vstream.codec_context.options = {
            "deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "keyint_min": str(CLIP_KEYINT),
            "minrate": str(video_bps), "maxrate": str(video_bps), "bufsize": str(video_bps),
            "static-thresh": "1", "threads": "2",
        }
        astream = out.add_stream("libopus", rate=48_000, layout="stereo")
        astream.bit_rate = 64_000
        astream.codec_context.options = {"application": "voip", "frame_duration": "20"}
        seconds = frames / CLIP_FPS
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=48_000)
        with av.open(f"testsrc2=size={CLIP_W}x{CLIP_H}:rate={CLIP_FPS}", format="lavfi") as src, \
                av.open(f"sine=frequency=440:sample_rate=48000:duration={seconds}", format="lavfi") as tone:
            tones = tone.decode(audio=0)
            audio_s = 0.0
            for i, frame in enumerate(src.decode(video=0)):
                if i == frames:
                    break
                picture = frame.reformat(format="yuv420p")
                planes = [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in picture.planes]
                arr = [p.copy() for p in planes]
                stamp_draw(arr[0], arr[1], arr[2], i)
                stamped = av.VideoFrame(CLIP_W, CLIP_H, "yuv420p")
                for plane, data in zip(stamped.planes, arr):
                    view = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
                    view[:, : plane.width] = data
                stamped.pts, stamped.time_base = i, Fraction(1, CLIP_FPS)
                stamped.pict_type = av.video.frame.PictureType.I if i % CLIP_KEYINT == 0 else av.video.frame.PictureType.NONE
                for packet in vstream.encode(stamped):
                    out.mux(packet)
                # interleaved, so a reader in real time (ffmpeg -re) gets both streams as it goes
                while audio_s < (i + 1) / CLIP_FPS:
                    chunk = next(tones, None)
                    if chunk is None:
                        break
                    audio_s += chunk.samples / 48_000
                    for f in resampler.resample(chunk):
                        for packet in astream.encode(f):
                            out.mux(packet)
            for packet in vstream.encode(None):
                out.mux(packet)
            for packet in astream.encode(None):
                out.mux(packet)
    with av.open(str(path)) as c:
        for i, packet in enumerate(p for p in c.demux(video=0) if p.size):
            if packet.is_keyframe:
                keyframes.append(i)
    return Clip(path=path, frames=frames, keyframes=tuple(keyframes), video_bps=video_bps)


def clip_packets(path: Path) -> tuple[list[bytes], list[bool], list[bytes]]:
    """(video payloads, is keyframe, opus payloads) of the clip, in order."""
    video, keys, audio = [], [], []
    with av.open(str(path)) as c:
        for packet in c.demux():
            if not packet.size:
                continue
            if packet.stream.type == "video":
                video.append(bytes(packet))
                keys.append(bool(packet.is_keyframe))
            else:
                audio.append(bytes(packet))
    return video, keys, audio


class SendLog:
    """When a publisher sent each frame: rows (sequence number, clip index, wall-clock time.time())."""

    def __init__(self, rows: np.ndarray, clip_frames: int = CLIP_FRAMES) -> None:
        self.rows = rows.reshape(-1, 3) if rows.size else np.zeros((0, 3))
        self.clip_frames = clip_frames

    @classmethod
    def load(cls, path: Path) -> "SendLog":
        return cls(np.load(path) if path.exists() else np.zeros((0, 3)))

    def send_time(self, index: int, seen_at: float) -> float | None:
        """The wall-clock send time of the latest sending of clip frame `index` at or before `seen_at`
        (a clip frame is sent again every 60 s; the delay is far shorter)."""
        hits = self.rows[(self.rows[:, 1] == index) & (self.rows[:, 2] <= seen_at)]
        return float(hits[-1, 2]) if len(hits) else None

    def __len__(self) -> int:
        return len(self.rows)


# --- process measuring ---------------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    out = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    return out


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process, its live descendants, and the children it reaped."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / CLK_TCK
    return own + sum(tree_cpu_s(child) for child in _children(pid))


def pid_cpu_s(pid: int) -> float:
    """CPU seconds of one process alone (every thread)."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def host_busy_s() -> float:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def host_busy_cores(seconds: float = 2.0) -> float:
    before, t0 = host_busy_s(), time.monotonic()
    time.sleep(seconds)
    return (host_busy_s() - before) / (time.monotonic() - t0)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, *, proc: subprocess.Popen, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{name} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise StackError(f"{name}: nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def stop_process(proc: subprocess.Popen, *, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --- the stack -----------------------------------------------------------------------------------------------

SETUP_SCRIPT = """
import json
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from classroom.models import Classroom, Membership, Role
n = {n}
hashed = make_password({password!r})  # one hash for everyone: same password, set once
User = get_user_model()
out = []
for k in range(1, n + 1):
    people = [("inst%d" % k, "Instructor", "K%d" % k, Role.INSTRUCTOR)] + [
        ("stud%d%s" % (k, s), "Student", "%s%d" % (s.upper(), k), Role.STUDENT) for s in "abc"]
    classroom = Classroom.objects.create(title="Capacity class %d" % k, description="bench", is_public=True)
    members = []
    for username, first, last, role in people:
        user = User.objects.create(username=username, first_name=first, last_name=last, password=hashed)
        Membership.objects.create(classroom=classroom, user=user, role=role)
        members.append({{"username": username, "user_id": user.pk, "role": role}})
    out.append({{"class_id": classroom.pk, "members": members}})
print("SETUP " + json.dumps(out))
"""

MEDIA_SLOTS_PER_CLASS = 2  # a compositor job and a recorder job


@dataclass
class ClassInfo:
    number: int
    class_id: int
    members: list[dict[str, Any]]


class ClassProcess:
    """One class's four stage members (a child process, JSON lines on stdin/stdout)."""

    def __init__(self, stack: "LiveStack", info: ClassInfo, proc: subprocess.Popen, log_path: Path) -> None:
        self.stack, self.info, self.proc, self.log_path = stack, info, proc, log_path
        self.ready: dict[str, Any] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        self._lines: "queue.Queue[str | None]" = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, ""):
            self._lines.put(line)
        self._lines.put(None)

    @property
    def class_id(self) -> int:
        return self.info.class_id

    def _read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(timeout=10)
                raise StackError(f"class {self.info.number} publisher exited ({self.proc.returncode}):\n"
                                 f"{self.log_path.read_text(errors='replace')[-3000:]}")
            return json.loads(line)
        raise StackError(f"class {self.info.number} publisher did not answer in {timeout:.0f} s:\n"
                         f"{self.log_path.read_text(errors='replace')[-3000:]}")

    def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        message = self._read(timeout)
        if "error" in message:
            raise StackError(f"class {self.info.number}: {message['error']}\n"
                             f"{self.log_path.read_text(errors='replace')[-3000:]}")
        self.ready = message["ready"]
        return self.ready

    def command(self, cmd: str, timeout: float = 30.0, **fields: Any) -> Any:
        with self._lock:
            self._next_id += 1
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"id": self._next_id, "cmd": cmd, **fields}) + "\n")
            self.proc.stdin.flush()
            message = self._read(timeout)
        if "error" in message:
            raise StackError(f"class {self.info.number} {cmd}: {message['error']}")
        return message.get("reply")

    def stats(self) -> dict[str, Any]:
        """Frames sent and received per member, and the publisher process's CPU seconds."""
        return self.command("stats")

    def send_log(self, username: str) -> SendLog:
        """Flushes the publisher's send log of `username` (e.g. "inst1") and loads it."""
        self.command("flush")
        return SendLog.load(self.stack.tmp / f"sendlog-{username}.npy")

    def cpu_s(self) -> float:
        return tree_cpu_s(self.proc.pid)

    def hls_folder(self) -> Path | None:
        folders = sorted((self.stack.hls_root / f"class-{self.class_id}").glob("session-*"))
        return folders[-1] if folders else None

    def recording_tracks(self) -> list[Path]:
        return sorted(self.stack.spool.glob(f"class-{self.class_id}/rec-*/tracks/*"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.command("quit", timeout=20)
        stop_process(self.proc)


class LiveStack:
    """The server processes, on the embedded default, in `tmp`. A context manager."""

    PROCESS_NAMES = ("web", "packager", "media", "default", "beat")

    def __init__(self, tmp: Path, *, classes_max: int = 1, keep: bool = False, extra_env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.classes_max = classes_max
        self.keep = keep
        self.extra_env = extra_env or {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.classes: list[ClassProcess] = []
        self.infos: list[ClassInfo] = []
        self.hls_root = tmp / "hls"
        self.spool = tmp / "spool"
        self.var = tmp / "var"
        self.port = 0
        self.rtmp_port = 0
        self.env: dict[str, str] = {}

    # -- lifecycle --

    def __enter__(self) -> "LiveStack":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _env(self) -> dict[str, str]:
        drop = {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
        env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("CLASSCAST_")}
        self.port, self.rtmp_port = free_port(), free_port()
        store = {"location": str(self.tmp / "store")}
        env.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            PYTHONUNBUFFERED="1",
            CLASSCAST_VAR_DIR=str(self.var),
            CLASSCAST_ICE_HOST_ADDRESSES="127.0.0.1",
            CLASSCAST_SIGNALING_URL=f"ws://127.0.0.1:{self.port}",
            CLASSCAST_RTMP_PORT=str(self.rtmp_port),
            CLASSCAST_RTMP_INGEST_URL=f"rtmp://127.0.0.1:{self.rtmp_port}/live",
            CLASSCAST_HLS_ROOT=str(self.hls_root),
            CLASSCAST_RECORDING_SPOOL=str(self.spool),
            CLASSCAST_RECORDINGS_STORAGE_OPTIONS=json.dumps(store),
            # admission control: one 720p30 program costs 1.0; this host is asked to run classes_max
            CLASSCAST_EGRESS_CAPACITY=str(float(max(2, self.classes_max))),
            CLASSCAST_MEDIA_NODE_CAPACITY=str(max(12, 5 * self.classes_max)),
        )
        env.update(self.extra_env)
        return env

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log_file = open(self.tmp / f"{name}.log", "w")
        proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        log_file.close()
        self.procs[name] = proc
        return proc

    def manage(self, *args: str, timeout: float = 180) -> str:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            raise StackError(f"manage.py {args[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return done.stdout

    def start(self) -> None:
        self.env = self._env()
        self.var.mkdir(parents=True, exist_ok=True)
        self.manage("migrate", "--noinput")
        out = self.manage("shell", "-c", SETUP_SCRIPT.format(n=self.classes_max, password=PASSWORD))
        setup = json.loads(next(line for line in out.splitlines() if line.startswith("SETUP "))[6:])
        self.infos = [ClassInfo(i + 1, c["class_id"], c["members"]) for i, c in enumerate(setup)]
        py = sys.executable
        web = self._spawn("web", [py, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "config.asgi:application"])
        packager = self._spawn("packager", [py, "manage.py", "hls_packager"])
        self._spawn("media", [py, "-m", "celery", "-A", "config", "worker", "-Q", "media", "-l", "INFO",
                              "--concurrency", str(MEDIA_SLOTS_PER_CLASS * self.classes_max),
                              "--prefetch-multiplier", "1", "-n", f"media-{self.port}@%h"])
        self._spawn("default", [py, "-m", "celery", "-A", "config", "worker", "-Q", "default", "-l", "INFO",
                                "--concurrency", "2", "-n", f"default-{self.port}@%h"])
        self._spawn("beat", [py, "-m", "celery", "-A", "config", "beat", "-l", "INFO",
                             "--schedule", str(self.tmp / "celerybeat-schedule")])
        wait_for_port(self.port, proc=web, name="web")
        wait_for_port(self.rtmp_port, proc=packager, name="packager")

    def stop(self) -> None:
        for cls in self.classes:
            with contextlib.suppress(Exception):
                cls.stop()
        for name in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                stop_process(self.procs[name])

    def logs(self, chars: int = 2000) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in sorted(self.tmp.glob("*.log")))

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise StackError(f"{name} exited ({proc.returncode}):\n{self.logs()}")

    # -- classes --

    def class_start(self, number: int, clip: Clip, *, timeout: float = 120.0) -> ClassProcess:
        """Put class `number` (1-based) live: four members on stage, publishing; broadcast + recording."""
        return self.classes_start([number], clip, timeout=timeout)[0]

    def classes_start(self, numbers: list[int], clip: Clip, *, timeout: float = 120.0) -> list[ClassProcess]:
        started = []
        for number in numbers:
            info = self.infos[number - 1]
            log_path = self.tmp / f"class-{number}.log"
            with open(log_path, "w") as log_file:
                proc = subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--class-process", json.dumps({
                        "url": f"http://127.0.0.1:{self.port}", "class_id": info.class_id, "members": info.members,
                        "password": PASSWORD, "clip": str(clip.path), "out": str(self.tmp), "number": number,
                    })],
                    cwd=ROOT, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file, text=True,
                )
            cls = ClassProcess(self, info, proc, log_path)
            self.classes.append(cls)
            started.append(cls)
        for cls in started:
            cls.wait_ready(timeout)
        return started

    def wait_on_air(self, classes: list[ClassProcess], *, timeout: float = 90.0, strict: bool = True) -> list[str]:
        """Until each class's program has HLS segments, its compositor runs, and 8 recording tracks exist.
        Returns what is still missing at the timeout when not `strict` (an overloaded machine is a
        result to report, not a crash); raises otherwise."""
        deadline = time.monotonic() + timeout
        missing: list[str] = []
        while time.monotonic() < deadline:
            self.check_alive()
            missing = []
            jobs = self.jobs()
            for cls in classes:
                folder = cls.hls_folder()
                if folder is None or len(segments(folder)) < 2:
                    missing.append(f"class {cls.info.number}: HLS segments")
                if jobs.get(cls.class_id, {}).get("broadcast_status") != "live":
                    missing.append(f"class {cls.info.number}: broadcast live")
                if len(cls.recording_tracks()) < 8:
                    missing.append(f"class {cls.info.number}: 8 recording tracks ({len(cls.recording_tracks())})")
            if not missing:
                return []
            time.sleep(0.5)
        if not strict:
            return missing
        raise StackError(f"not on air after {timeout:.0f} s: {missing}\n{self.logs()}")

    # -- what the database says about the jobs (read-only; the bench's own look at SQLite) --

    def jobs(self) -> dict[int, dict[str, Any]]:
        """Per class id: the live broadcast's and recording's worker (host:pid), status and stats."""
        out: dict[int, dict[str, Any]] = {}
        with contextlib.closing(sqlite3.connect(f"file:{self.var / 'classcast.sqlite3'}?mode=ro", uri=True, timeout=5)) as db:
            for class_id, status, worker, stats in db.execute(
                "SELECT s.classroom_id, b.status, b.worker, b.stats FROM classroom_broadcast b "
                "JOIN classroom_livesession s ON s.id = b.session_id ORDER BY b.id"
            ):
                out.setdefault(class_id, {}).update(broadcast_status=status, broadcast_worker=worker,
                                                    broadcast_stats=json.loads(stats or "{}"))
            for class_id, status, worker in db.execute(
                "SELECT classroom_id, status, worker FROM classroom_recording ORDER BY id"
            ):
                out.setdefault(class_id, {}).update(recording_status=status, recording_worker=worker)
        return out

    def cpu_s(self) -> dict[str, float]:
        """CPU seconds so far of each server process with its descendants (reaped ones included)."""
        return {name: tree_cpu_s(proc.pid) for name, proc in self.procs.items()}

    def job_pids(self) -> dict[str, int]:
        """'compositor-<class number>' / 'recorder-<class number>' -> the media worker child running it."""
        out = {}
        jobs = self.jobs()
        for info in self.infos:
            job = jobs.get(info.class_id, {})
            for kind, key in (("compositor", "broadcast_worker"), ("recorder", "recording_worker")):
                worker = job.get(key) or ""
                if ":" in worker:
                    out[f"{kind}-{info.number}"] = int(worker.rsplit(":", 1)[1])
        return out


SEGMENT_RE = re.compile(r"^seg-(\d+)\.ts$")


def segments(folder: Path) -> dict[int, Path]:
    """Finished program segments (`seg-<n>.ts`, renamed into place when cut) by number."""
    out = {}
    if folder and folder.exists():
        for path in folder.iterdir():
            m = SEGMENT_RE.match(path.name)
            if m:
                out[int(m.group(1))] = path
    return out


# --- the class process: four aiortc stage members --------------------------------------------------------------


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def http_login(base: str, username: str, password: str) -> str:
    """Log in through the login form, as a browser does; returns the `sessionid` cookie."""
    host, port = base.split("//", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/accounts/login/")
    resp = conn.getresponse()
    page = resp.read().decode()
    cookies = {c.split("=", 1)[0]: c.split("=", 1)[1].split(";", 1)[0] for c in resp.headers.get_all("Set-Cookie") or []}
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    body = f"username={username}&password={password}&csrfmiddlewaretoken={token}"
    conn.request("POST", "/accounts/login/", body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={cookies['csrftoken']}",
        "Referer": f"{base}/accounts/login/", "Origin": base,
    })
    resp = conn.getresponse()
    resp.read()
    for c in resp.headers.get_all("Set-Cookie") or []:
        if c.startswith("sessionid="):
            return c.split("=", 1)[1].split(";", 1)[0]
    raise StackError(f"login of {username} failed (HTTP {resp.status})")


def _class_process_main(spec: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(_class_run(spec))


async def _class_run(spec: dict[str, Any]) -> None:
    import aioice
    import websockets
    from aiortc import MediaStreamTrack, RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from rtc.encoded_tap import ice_receive_buffer, receiver_tap, sender_feedback_tap

    # gather on loopback only (the media node's CLASSCAST_ICE_HOST_ADDRESSES seam, done here without Django)
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    rtc_config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    video, keys, audio = clip_packets(Path(spec["clip"]))
    key_index = [i for i, k in enumerate(keys) if k]
    out_dir = Path(spec["out"])
    base = spec["url"]
    loop = asyncio.get_running_loop()

    class ClipVideo(MediaStreamTrack):
        kind = "video"

        def __init__(self, start: int) -> None:
            super().__init__()
            self.index = start
            self.sent = 0
            self.keyframe_wanted = False
            self.log: list[tuple[int, int, float]] = []
            self.t0: float | None = None

        async def recv(self) -> av.Packet:
            if self.t0 is None:
                self.t0 = time.monotonic()
            delay = self.t0 + self.sent / CLIP_FPS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self.keyframe_wanted and not keys[self.index]:
                # a keyframe was asked for: go on from the clip's next one, as an encoder would send one now
                later = [k for k in key_index if k > self.index]
                self.index = later[0] if later else key_index[0]
            self.keyframe_wanted = False
            packet = av.Packet(video[self.index])
            packet.pts, packet.time_base = self.sent * 3000, VIDEO_TIME_BASE
            self.log.append((self.sent, self.index, time.time()))
            self.sent += 1
            self.index = (self.index + 1) % len(video)
            return packet

    class ClipAudio(MediaStreamTrack):
        kind = "audio"

        def __init__(self, start: int) -> None:
            super().__init__()
            self.index = start
            self.sent = 0
            self.t0: float | None = None

        async def recv(self) -> av.Packet:
            if self.t0 is None:
                self.t0 = time.monotonic()
            delay = self.t0 + self.sent * OPUS_FRAME / 48_000 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            packet = av.Packet(audio[self.index])
            packet.pts, packet.time_base = self.sent * OPUS_FRAME, AUDIO_TIME_BASE
            self.sent += 1
            self.index = (self.index + 1) % len(audio)
            return packet

    class Member:
        def __init__(self, info: dict[str, Any], slot: int) -> None:
            self.username, self.user_id, self.role = info["username"], info["user_id"], info["role"]
            start = key_index[(slot * 7) % len(key_index)]  # a different moment of the clip on each tile
            self.video = ClipVideo(start)
            self.audio = ClipAudio(round(start / CLIP_FPS * 50) % len(audio))
            self.ws: Any = None
            self.pcs: dict[str, RTCPeerConnection] = {}
            self.acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
            self.state: dict[str, Any] = {}
            self.received: dict[str, int] = {}  # mid -> frames received on the subscribe connection
            self.errors: list[str] = []
            self.task: asyncio.Task[None] | None = None
            self.n = 0

        async def connect(self) -> None:
            cookie = await loop.run_in_executor(None, http_login, base, self.username, spec["password"])
            page = "console" if self.role == "instructor" else "class"
            self.ws = await websockets.connect(
                f"ws://{base.split('//', 1)[1]}/ws/classes/{spec['class_id']}/?page={page}",
                origin=base, additional_headers={"Cookie": f"sessionid={cookie}"}, max_size=4 * 1024 * 1024,
            )
            welcome = json.loads(await self.ws.recv())
            if welcome.get("type") != "welcome":
                raise StackError(f"{self.username}: expected welcome, got {welcome}")
            self.state = welcome.get("state") or {}
            self.task = asyncio.ensure_future(self._read())

        async def send(self, type_: str, **fields: Any) -> None:
            await self.ws.send(json.dumps({"type": type_, **fields}))

        async def call(self, type_: str, **fields: Any) -> dict[str, Any]:
            """Send an action and wait for its ack (or raise the error event that refers to it)."""
            self.n += 1
            ref = f"{self.username}-{self.n}"
            future = self.acks[ref] = loop.create_future()
            await self.ws.send(json.dumps({"type": type_, "id": ref, **fields}))
            reply = await asyncio.wait_for(future, 30)
            if reply.get("type") == "error":
                raise StackError(f"{self.username} {type_}: {reply.get('code')}: {reply.get('message')}")
            return reply

        async def _read(self) -> None:
            async for raw in self.ws:
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind in ("ack", "error") and msg.get("ref") in self.acks:
                    future = self.acks.pop(msg["ref"])
                    if not future.done():
                        future.set_result(msg)
                elif kind == "error":
                    self.errors.append(f"{msg.get('code')}: {msg.get('message')}")
                elif kind == "event" and msg.get("state"):
                    self.state = msg["state"]
                elif kind == "rtc.offer" and msg.get("sdp"):
                    await self._answer(msg)

        async def _answer(self, msg: dict[str, Any]) -> None:
            name = msg["pc"]
            pc = self.pcs.get(name)
            if pc is None:
                pc = self.pcs[name] = RTCPeerConnection(rtc_config)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=msg["sdp"], type="offer"))
            for transceiver in pc.getTransceivers():
                if name == "publish":
                    track = self.video if transceiver.kind == "video" else self.audio
                    if transceiver.sender.track is not track:
                        transceiver.sender.replaceTrack(track)
                    transceiver.direction = "sendonly"
                    if transceiver.kind == "video":
                        sender_feedback_tap(transceiver.sender, on_keyframe_request=self._keyframe, on_remb=lambda bps: None)
                elif transceiver.mid is not None:
                    mid = transceiver.mid
                    self.received.setdefault(mid, 0)
                    receiver_tap(transceiver.receiver, on_frame=self._counter(mid), decode=False)
            await pc.setLocalDescription(await pc.createAnswer())
            if name == "subscribe":  # stand-ins for browsers on their own machines: not starved by this host
                ice_receive_buffer(pc, size=4 * 1024 * 1024)
            await self.ws.send(json.dumps({"type": "rtc.answer", "pc": name, "sdp": pc.localDescription.sdp}))

        def _keyframe(self) -> None:
            self.video.keyframe_wanted = True

        def _counter(self, mid: str) -> Any:
            def on_frame(codec: str, data: bytes, timestamp: int, clock_rate: int) -> None:
                self.received[mid] = self.received.get(mid, 0) + 1
            return on_frame

        def connected(self) -> bool:
            pub = self.pcs.get("publish")
            return pub is not None and pub.connectionState == "connected"

        def flush(self) -> None:
            np.save(out_dir / f"sendlog-{self.username}.npy", np.array(self.video.log, dtype=np.float64))

        def stats(self) -> dict[str, Any]:
            return {"video_sent": self.video.sent, "audio_sent": self.audio.sent, "received": dict(self.received),
                    "errors": self.errors[-5:]}

        async def close(self) -> None:
            for pc in self.pcs.values():
                with contextlib.suppress(Exception):
                    await pc.close()
            if self.ws is not None:
                with contextlib.suppress(Exception):
                    await self.ws.close()

    members = [Member(info, (spec["number"] - 1) * 4 + i) for i, info in enumerate(spec["members"])]
    instructor, students = members[0], members[1:]
    t_setup = time.monotonic()
    try:
        for m in members:
            await m.connect()
        await instructor.call("session.start")
        await instructor.send("rtc.join")  # no ack: the media node's offer is the answer
        for s in students:
            await s.call("hand.raise")
            await instructor.call("stage.invite", user_id=s.user_id)
            await s.call("stage.accept")
            await s.send("rtc.join")
        deadline = time.monotonic() + 60
        while not (all(m.connected() for m in members)
                   and all(sum(1 for n in m.received.values() if n > 30) >= 3 for m in members)):
            if time.monotonic() > deadline:
                raise StackError("stage not flowing: " + json.dumps({m.username: m.stats() for m in members}))
            await asyncio.sleep(0.2)
        await instructor.call("broadcast.start")
        await instructor.call("recording.start")
        _emit({"ready": {"setup_s": round(time.monotonic() - t_setup, 1),
                         "members": {m.username: m.user_id for m in members}}})
    except Exception as exc:  # noqa: BLE001 - reported to the bench, which stops
        logging.exception("class setup failed")
        _emit({"error": f"{exc.__class__.__name__}: {exc}"})
        for m in members:
            await m.close()
        return

    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read_stdin() -> None:
        for line in iter(sys.stdin.readline, ""):
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read_stdin, daemon=True).start()
    while True:
        line = await lines.get()
        if line is None:
            break
        message = json.loads(line)
        cmd, reply = message["cmd"], {}
        if cmd == "stats":
            reply = {"cpu_s": time.process_time(), "t": time.monotonic(),
                     "members": {m.username: m.stats() for m in members}}
        elif cmd == "flush":
            for m in members:
                m.flush()
        elif cmd == "call":  # an action as one member (e.g. broadcast.layout from the instructor)
            who = next(m for m in members if m.username == message["as"])
            try:
                reply = await who.call(message["type"], **message.get("fields", {}))
            except Exception as exc:  # noqa: BLE001 - reported to the bench
                _emit({"id": message["id"], "error": f"{exc.__class__.__name__}: {exc}"})
                continue
        elif cmd == "quit":
            for m in members:
                m.flush()
            _emit({"id": message["id"], "reply": {}})
            break
        _emit({"id": message["id"], "reply": reply})
    for m in members:
        await m.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="internal: one class's stage members (see the module doc)")
    parser.add_argument("--class-process", required=True, help="JSON spec from LiveStack.classes_start")
    _class_process_main(json.loads(parser.parse_args().class_process))
