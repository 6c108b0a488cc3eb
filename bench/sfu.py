"""Media node CPU per forwarded video stream: the stage SFU's forwarding beside aiortc's MediaRelay
(decode once, re-encode per subscriber), both measured in the same run.

    .venv/bin/python bench/sfu.py [--subscribers 0,4,8] [--seconds 10] [--warmup 15]

Processes (loopback only: `RTCConfiguration(iceServers=[])`, host candidates pinned to 127.0.0.1 with
`classroom.media_node.node.ice_host_addresses_pin`):

* the media node (the measured process): one room with one publisher and N subscribers.
  - ours: `sfu.room.Room`, as in production (VP8 negotiated, the publish receivers'
    encoded frames tapped before the decoder and handed to every subscriber's sender as packets).
  - peer: `RelayRoom` below, what the node did before forwarding: the publish receiver decodes, aiortc's
    `MediaRelay` hands the decoded frames to one `relay.subscribe(track, buffered=False)` proxy per
    subscriber sender, and each sender re-encodes them (aiortc's VP8 encoder), plus one relay reader that
    keeps the published track consumed, as the node's drain did. Same codec, same signaling messages.
* a publisher process: one aiortc client sending VP8 640x360@30 (aiortc's own encoder; 60 moving
  pictures from FFmpeg's testsrc2 decoded once up front, so the publisher only encodes). Video only.
* subscriber processes (one per step of --subscribers): aiortc clients that answer the node's offers and
  count the encoded frames their video receiver reassembles (`receiver_tap(decode=False)`); the first
  90 frames from each subscriber's first keyframe are decoded with PyAV after the last window (a check
  that what arrived is a valid picture stream; not timed).

The bench process relays signaling (JSON lines on the children's stdin/stdout) and, for each variant,
starts the node and the publisher, then steps the subscriber count up (--subscribers, default 0, 4, 8)
on the same room. At each step, after --warmup (long enough for the relay's per-subscriber encoders,
which start at aiortc's 500 kbit/s, to ramp up to what the publisher sends, so both variants deliver the
same bitrate), the node's CPU time (`time.process_time`: every thread, including aiortc's decoder
threads and the executor threads its encoders run in) over a --seconds window, per wall second. Figures:

* CPU s/s at each N, and per forwarded stream = CPU s/s / N (one subscriber = one video stream);
* the line cost = base + marginal x N fitted over the steps (least squares): base is what a
  publisher costs with nobody watching, marginal what each further subscriber adds;
* subscribers per core = 1 / marginal; ratio ours / peer (lower is better; target <= 0.1);
* delivered fps at the subscribers (a peer that cannot keep up spends less CPU and delivers fewer
  frames, so CPU ms per delivered frame is printed too), bytes/s out, RTP loss, the publisher's bitrate,
  the other processes' and the whole host's CPU.

Last line: `RESULT {json}`. Under 3 minutes with the defaults.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

W, H, FPS = 640, 360, 30
KEPT_FRAMES = 90  # per subscriber, from its first keyframe: decoded after the run as a check
CONNECT_TIMEOUT_S = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
VARIANTS = ("forward", "relay")
LABEL = {"forward": "ours: forwarding (Room)", "relay": "aiortc MediaRelay (re-encodes)"}


# ---- measuring ------------------------------------------------------------------------------------------

def host_busy_s() -> float:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def host_busy_cores(seconds: float = 2.0) -> float:
    before = host_busy_s()
    time.sleep(seconds)
    return (host_busy_s() - before) / seconds


def pid_cpu_s(pid: int) -> float:
    """utime + stime of every thread of a process (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def line_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(base, marginal) of the least-squares line y = base + marginal * x."""
    marginal, base = np.polyfit(np.array(xs, float), np.array(ys, float), 1)
    return float(base), float(marginal)


# ---- children: JSON lines on stdin (commands) and stdout (replies, signaling) ------------------------------

def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def django_setup() -> None:
    """The media node's modules read Django settings (metrics, ICE configuration)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def loopback_config() -> RTCConfiguration:
    """No ICE servers at all (aiortc would otherwise reach for a public STUN server); max-bundle, as the
    node's `rtc_configuration()`."""
    return RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


async def serve(handle: Callable[[dict[str, Any]], Awaitable[Any]]) -> None:
    """Run `handle` for every command line, in arrival order; reply to those that carry an id. Lines are
    read on a thread of their own (aiortc's encoders use the loop's default executor)."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        for line in iter(sys.stdin.readline, ""):
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, daemon=True).start()
    done = asyncio.Event()

    async def run(message: dict[str, Any]) -> None:
        try:
            reply = {"reply": await handle(message)}
        except Exception as exc:  # noqa: BLE001 - reported to the bench process, which stops
            logging.exception("command %s failed", message.get("cmd"))
            reply = {"error": f"{exc.__class__.__name__}: {exc}"}
        if "id" in message:
            emit({"id": message["id"], **reply})
        if message.get("cmd") == "quit":
            done.set()

    while not done.is_set():
        line = await lines.get()
        if line is None:
            return
        asyncio.ensure_future(run(json.loads(line)))
        await asyncio.sleep(0)  # let it take the room's lock in arrival order, as the media node does
    await asyncio.sleep(0.1)


# ---- the media node ---------------------------------------------------------------------------------------

class RelayRoom:
    """The peer: a minimal SFU on aiortc's MediaRelay, as the media node was before forwarding. The publish
    receivers decode; each subscriber sender gets its own relay proxy of the decoded track and encodes
    every frame again. Same offers/answers as `Room` (the node offers on both connections)."""

    def __init__(self, *, rtc_config: RTCConfiguration, send: Callable[[str, dict[str, Any]], Awaitable[None]],
                 codecs: dict[str, list[Any]]) -> None:
        self.rtc_config, self.send, self.codecs = rtc_config, send, codecs
        self.relay = MediaRelay()
        self.lock = asyncio.Lock()
        self.pcs: dict[str, RTCPeerConnection] = {}
        self.published: dict[str, MediaStreamTrack] = {}
        self.frames = 0  # decoded frames of the published video
        self.tasks: list[asyncio.Task[None]] = []

    async def join(self, spec: Any) -> None:
        pc = self.pcs[spec.peer_id] = RTCPeerConnection(self.rtc_config)
        tracks: dict[str, dict[str, Any]] = {}
        if spec.publish:
            pc.on("track", self._on_track)
            for kind in ("audio", "video"):
                pc.addTransceiver(kind, direction="recvonly").setCodecPreferences(self.codecs[kind])
        else:
            for kind, track in self.published.items():
                transceiver = pc.addTransceiver(self.relay.subscribe(track, buffered=False), direction="sendonly")
                transceiver.setCodecPreferences(self.codecs[kind])
        await pc.setLocalDescription(await pc.createOffer())
        if not spec.publish:
            tracks = {t.mid: {"user_id": 1, "kind": t.kind} for t in pc.getTransceivers()}
        await self.send(spec.peer_id, {"type": "media.offer", "pc": "publish" if spec.publish else "subscribe",
                                       "sdp": pc.localDescription.sdp, "tracks": tracks})

    async def answer(self, peer_id: str, pc_name: str, sdp: str) -> None:
        await self.pcs[peer_id].setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    def _on_track(self, track: MediaStreamTrack) -> None:
        self.published[track.kind] = track
        self.tasks.append(asyncio.ensure_future(self._drain(track)))

    async def _drain(self, track: MediaStreamTrack) -> None:
        """Keep the published track consumed (aiortc queues decoded frames without bound otherwise)."""
        reader = self.relay.subscribe(track, buffered=False)
        try:
            while True:
                await reader.recv()
                if track.kind == "video":
                    self.frames += 1
        except (MediaStreamError, asyncio.CancelledError):
            pass
        finally:
            reader.stop()

    async def close(self, *, reason: str) -> None:
        for task in self.tasks:
            task.cancel()
        for pc in self.pcs.values():
            await pc.close()


async def node_main(args: argparse.Namespace) -> None:
    django_setup()
    logging.getLogger("classcast").setLevel(logging.WARNING)  # no per-peer info lines from the room
    from classroom.media_node.node import ice_host_addresses_pin
    from sfu.room import PeerSpec, Room, codec_preferences

    ice_host_addresses_pin(["127.0.0.1"])

    async def send(channel: str, message: dict[str, Any]) -> None:
        if message["type"] != "media.state":
            emit({"to": channel, "message": message})

    if args.variant == "forward":
        room: Any = Room(session_id=1, rtc_config=loopback_config(), send=send, video_codec="vp8")
    else:
        codecs = {"audio": codec_preferences("audio", "opus"), "video": codec_preferences("video", "vp8")}
        room = RelayRoom(rtc_config=loopback_config(), send=send, codecs=codecs)

    def frames_in() -> int:
        if args.variant == "relay":
            return room.frames
        peer = room.peers.get("pub")
        video = peer.published.get("video") if peer else None
        return video.frames if video else 0

    def forward_dropped() -> int:  # frames a ForwardTrack dropped (keyframe gating, overflow)
        if args.variant == "relay":
            return 0
        return sum(s.dropped for p in room.peers.values() for s in p.switches.values())

    async def handle(message: dict[str, Any]) -> Any:
        cmd = message["cmd"]
        if cmd == "join":
            spec = PeerSpec(peer_id=message["peer_id"], session_id=1, user_id=message["user_id"],
                            name=message["peer_id"], role="student", publish=message["publish"])
            async with room.lock:
                await room.join(spec)
        elif cmd == "answer":
            async with room.lock:
                await room.answer(message["peer_id"], message["pc"], message["sdp"])
        elif cmd == "published":  # the publisher's video is arriving
            deadline = time.monotonic() + CONNECT_TIMEOUT_S
            while frames_in() < FPS:
                if time.monotonic() > deadline:
                    raise RuntimeError("no video from the publisher reached the node")
                await asyncio.sleep(0.1)
        elif cmd == "sample":
            return {"cpu_s": time.process_time(), "t": time.monotonic(), "frames_in": frames_in(),
                    "dropped": forward_dropped()}
        elif cmd == "quit":
            async with room.lock:
                await room.close(reason="bench_over")
        return {}

    await serve(handle)


# ---- the clients: one publisher, and subscribers ----------------------------------------------------------

def pictures(count: int = 2 * FPS) -> list[np.ndarray]:
    """`count` moving 640x360 pictures (testsrc2) as yuv420p planes, decoded once."""
    out: list[np.ndarray] = []
    with av.open(f"testsrc2=size={W}x{H}:rate={FPS}", format="lavfi") as src:
        for frame in src.decode(video=0):
            out.append(frame.reformat(format="yuv420p").to_ndarray())
            if len(out) == count:
                break
    return out


class PictureTrack(VideoStreamTrack):
    """30 fps from precomputed pictures; aiortc paces it (next_timestamp) and encodes it (VP8)."""

    def __init__(self, planes: list[np.ndarray]) -> None:
        super().__init__()
        self.planes, self.n = planes, 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(self.planes[self.n % len(self.planes)], format="yuv420p")
        self.n += 1
        frame.pts, frame.time_base = pts, time_base
        return frame


class Client:
    """A stand-in for a browser: answers the node's offers; a subscriber counts the video it receives."""

    def __init__(self, peer_id: str, planes: list[np.ndarray] | None) -> None:
        self.peer_id, self.planes = peer_id, planes
        self.pcs: dict[str, RTCPeerConnection] = {}
        self.frames = self.payload_bytes = 0
        self.kept: list[bytes] = []

    def on_frame(self, codec: str, data: bytes, timestamp: int, clock_rate: int) -> None:
        self.frames += 1
        self.payload_bytes += len(data)
        if len(self.kept) < KEPT_FRAMES and (self.kept or not data[0] & 0x01):  # from the first VP8 keyframe
            self.kept.append(data)

    async def answer(self, message: dict[str, Any]) -> None:
        from rtc.encoded_tap import receiver_tap

        name = message["pc"]
        pc = self.pcs.get(name)
        if pc is None:
            pc = self.pcs[name] = RTCPeerConnection(loopback_config())
        await pc.setRemoteDescription(RTCSessionDescription(sdp=message["sdp"], type="offer"))
        for transceiver in pc.getTransceivers():
            if name == "publish":
                if transceiver.kind == "video" and self.planes is not None:
                    transceiver.sender.replaceTrack(PictureTrack(self.planes))
                    transceiver.direction = "sendonly"
                else:
                    transceiver.direction = "inactive"  # video only
            elif transceiver.kind == "video":
                receiver_tap(transceiver.receiver, on_frame=self.on_frame, decode=False)  # idempotent
        await pc.setLocalDescription(await pc.createAnswer())
        emit({"answer": {"peer_id": self.peer_id, "pc": name, "sdp": pc.localDescription.sdp}})

    async def sample(self) -> dict[str, Any]:
        wire_in = lost = rtp_out = 0
        for pc in self.pcs.values():
            for stat in (await pc.getStats()).values():
                if stat.type == "transport":  # everything on the wire (SRTP, SRTCP), one transport (bundle)
                    wire_in += stat.bytesReceived
                elif stat.type == "inbound-rtp":
                    lost += stat.packetsLost
                elif stat.type == "outbound-rtp":
                    rtp_out += stat.bytesSent
        return {"frames": self.frames, "payload_bytes": self.payload_bytes, "wire_bytes_in": wire_in, "lost": lost,
                "rtp_bytes_out": rtp_out}

    def decode_check(self) -> dict[str, Any]:
        codec = av.CodecContext.create("vp8", "r")
        decoded = errors = 0
        sizes = set()
        for data in self.kept:
            try:
                for frame in codec.decode(av.Packet(data)):
                    decoded += 1
                    sizes.add(f"{frame.width}x{frame.height}")
            except av.FFmpegError:
                errors += 1
        return {"kept": len(self.kept), "decoded": decoded, "errors": errors, "sizes": sorted(sizes)}

    async def close(self) -> None:
        for pc in self.pcs.values():
            await pc.close()


async def clients_main(args: argparse.Namespace) -> None:
    django_setup()
    from classroom.media_node.node import ice_host_addresses_pin

    ice_host_addresses_pin(["127.0.0.1"])
    planes = pictures() if args.role == "publisher" else None
    clients = {peer_id: Client(peer_id, planes) for peer_id in args.peers.split(",")}

    async def handle(message: dict[str, Any]) -> Any:
        cmd = message["cmd"]
        if cmd == "deliver":
            offer = message["message"]
            if offer["type"] == "media.offer" and offer.get("sdp"):
                await clients[message["peer_id"]].answer(offer)
        elif cmd == "receiving":  # every subscriber got video
            deadline = time.monotonic() + CONNECT_TIMEOUT_S
            while not all(c.frames >= FPS for c in clients.values()):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no video at {[p for p, c in clients.items() if c.frames < FPS]}")
                await asyncio.sleep(0.1)
        elif cmd == "sample":
            return {"t": time.monotonic(), "clients": {p: await c.sample() for p, c in clients.items()}}
        elif cmd == "decode_check":
            return {p: c.decode_check() for p, c in clients.items()}
        elif cmd == "quit":
            for client in clients.values():
                await client.close()
        return {}

    await serve(handle)


# ---- the bench process --------------------------------------------------------------------------------------

class Child:
    """A child process of this script, driven with JSON lines; requests wait for the reply to their id."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str,
                 on_message: Callable[["Child", dict[str, Any]], None]) -> None:
        self.proc, self.name, self.on_message = proc, name, on_message
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 0
        self.reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, name: str, argv: list[str], env: dict[str, str],
                    on_message: Callable[["Child", dict[str, Any]], None]) -> "Child":
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), *argv, cwd=ROOT, env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 22)
        return cls(proc, name, on_message)

    async def _read(self) -> None:
        while line := await self.proc.stdout.readline():
            message = json.loads(line)
            if "id" in message:
                future = self.pending.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
            else:
                self.on_message(self, message)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(RuntimeError(f"{self.name} exited ({await self.proc.wait()})"))

    def send(self, message: dict[str, Any]) -> None:
        if self.proc.returncode is None and not self.proc.stdin.is_closing():
            self.proc.stdin.write((json.dumps(message) + "\n").encode())

    async def request(self, cmd: str, timeout: float = 60.0, **fields: Any) -> Any:
        self.next_id += 1
        future = self.pending[self.next_id] = asyncio.get_running_loop().create_future()
        self.send({"cmd": cmd, "id": self.next_id, **fields})
        message = await asyncio.wait_for(future, timeout)
        if "error" in message:
            raise RuntimeError(f"{self.name}: {cmd}: {message['error']}")
        return message["reply"]

    async def stop(self) -> None:
        if self.proc.returncode is None:
            try:
                await self.request("quit", timeout=15)
                self.proc.stdin.close()
                await asyncio.wait_for(self.proc.wait(), 15)
            except (Exception, asyncio.TimeoutError):  # noqa: BLE001 - whatever happened, it goes
                if self.proc.returncode is None:
                    self.proc.kill()
                    await self.proc.wait()
        self.reader.cancel()


def child_env(var_dir: str) -> dict[str, str]:
    """Django's settings on their defaults (no inherited CLASSCAST_*, database or Redis), var in a temp dir."""
    drop = {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("CLASSCAST_")}
    env.update(DJANGO_SETTINGS_MODULE="config.settings", CLASSCAST_VAR_DIR=var_dir, PYTHONUNBUFFERED="1")
    return env


async def run_variant(variant: str, args: argparse.Namespace, levels: list[int], env: dict[str, str]) -> dict[str, Any]:
    routes: dict[str, Child] = {}
    children: list[Child] = []

    def from_node(child: Child, message: dict[str, Any]) -> None:
        target = routes.get(message.get("to", ""))
        if target is not None:
            target.send({"cmd": "deliver", "peer_id": message["to"], "message": message["message"]})

    def from_client(child: Child, message: dict[str, Any]) -> None:
        if "answer" in message:
            node.send({"cmd": "answer", **message["answer"]})

    node = await Child.start(f"node ({variant})", ["--role", "node", "--variant", variant], env, from_node)
    children.append(node)
    try:
        publisher = await Child.start("publisher", ["--role", "publisher", "--peers", "pub"], env, from_client)
        children.append(publisher)
        routes["pub"] = publisher
        await node.request("join", peer_id="pub", user_id=1, publish=True)
        await node.request("published", timeout=CONNECT_TIMEOUT_S + 10)
        subscribers: list[Child] = []
        steps = []
        for n in levels:
            have = len(routes) - 1
            if n > have:
                ids = [f"sub{i}" for i in range(have + 1, n + 1)]
                child = await Child.start(f"subscribers {ids[0]}..{ids[-1]}",
                                          ["--role", "subscribers", "--peers", ",".join(ids)], env, from_client)
                children.append(child)
                subscribers.append(child)
                for i, peer_id in enumerate(ids, start=have + 1):
                    routes[peer_id] = child
                    await node.request("join", peer_id=peer_id, user_id=100 + i, publish=False)
                await child.request("receiving", timeout=CONNECT_TIMEOUT_S + 10)
            await asyncio.sleep(args.warmup)
            steps.append(await measure(variant, n, args.seconds, node, publisher, subscribers))
            print_step(variant, steps[-1])
        checks: dict[str, Any] = {}
        for child in subscribers:
            checks.update(await child.request("decode_check"))
    finally:
        for child in reversed(children):
            await child.stop()
    return {"steps": steps, "decode_checks": checks}


async def measure(variant: str, n: int, seconds: float, node: Child, publisher: Child,
                  subscribers: list[Child]) -> dict[str, Any]:

    async def snapshot() -> dict[str, Any]:
        replies = await asyncio.gather(node.request("sample"), publisher.request("sample"),
                                       *(s.request("sample") for s in subscribers))
        clients = {p: c for reply in replies[2:] for p, c in reply["clients"].items()}
        return {"node": replies[0], "publisher": replies[1]["clients"]["pub"], "subscribers": clients,
                "host_s": host_busy_s(), "pub_cpu_s": pid_cpu_s(publisher.proc.pid),
                "subs_cpu_s": sum(pid_cpu_s(s.proc.pid) for s in subscribers)}

    a = await snapshot()
    await asyncio.sleep(seconds)
    b = await snapshot()
    wall = b["node"]["t"] - a["node"]["t"]
    cpu = (b["node"]["cpu_s"] - a["node"]["cpu_s"]) / wall
    fps = [(b["subscribers"][p]["frames"] - a["subscribers"][p]["frames"]) / wall for p in b["subscribers"]]
    def received(key: str) -> int:
        return sum(b["subscribers"][p][key] - a["subscribers"][p][key] for p in b["subscribers"])

    payload, wire = received("payload_bytes"), received("wire_bytes_in")
    kbits = [(b["subscribers"][p]["payload_bytes"] - a["subscribers"][p]["payload_bytes"]) * 8 / wall / 1000
             for p in b["subscribers"]]
    lost = received("lost")
    delivered = sum(fps)
    return {
        "variant": variant, "subscribers": n, "wall_s": wall,
        "cpu_s_per_s": cpu,
        "cpu_s_per_s_per_stream": cpu / n if n else None,
        "cpu_ms_per_delivered_frame": 1000 * cpu / delivered if delivered else None,
        "delivered_fps_mean": delivered / n if n else None, "delivered_fps_min": min(fps) if fps else None,
        "node_in_fps": (b["node"]["frames_in"] - a["node"]["frames_in"]) / wall,
        "forward_dropped_frames": b["node"]["dropped"] - a["node"]["dropped"],
        "out_kbit_per_s": payload * 8 / wall / 1000,  # encoded video as the subscribers reassembled it
        "kbit_per_s_per_subscriber": payload * 8 / wall / 1000 / n if n else None,
        "kbit_per_s_per_subscriber_min": min(kbits) if kbits else None,
        "wire_kbit_per_s": wire * 8 / wall / 1000,  # SRTP + SRTCP on the subscribers' transports
        "rtp_packets_lost": lost,
        "publisher_kbit_per_s": (b["publisher"]["rtp_bytes_out"] - a["publisher"]["rtp_bytes_out"]) * 8 / wall / 1000,
        "publisher_cpu_s_per_s": (b["pub_cpu_s"] - a["pub_cpu_s"]) / wall,
        "subscribers_cpu_s_per_s": (b["subs_cpu_s"] - a["subs_cpu_s"]) / wall,
        "host_busy_cores": (b["host_s"] - a["host_s"]) / wall,
    }


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


HEADER = (f"{'node':<31} | {'subs':>4} | {'cpu s/s':>7} | {'per stream':>10} | {'ms/frame':>8} | "
          f"{'fps mean/min':>12} | {'out kbit/s':>10} | {'per sub':>7} | {'lost':>4} | {'pub kbit/s':>10} | "
          f"{'pub cpu':>7} | {'subs cpu':>8} | {'host busy':>9}")


def print_step(variant: str, s: dict[str, Any]) -> None:
    fps = f"{fmt(s['delivered_fps_mean'], '.1f')}/{fmt(s['delivered_fps_min'], '.1f')}"
    print(f"{LABEL[variant]:<31} | {s['subscribers']:>4} | {s['cpu_s_per_s']:>7.3f} | "
          f"{fmt(s['cpu_s_per_s_per_stream'], '.4f'):>10} | {fmt(s['cpu_ms_per_delivered_frame'], '.2f'):>8} | "
          f"{fps:>12} | {s['out_kbit_per_s']:>10.0f} | {fmt(s['kbit_per_s_per_subscriber'], '.0f'):>7} | "
          f"{s['rtp_packets_lost']:>4} | {s['publisher_kbit_per_s']:>10.0f} | {s['publisher_cpu_s_per_s']:>7.3f} | "
          f"{s['subscribers_cpu_s_per_s']:>8.3f} | {s['host_busy_cores']:>9.2f}", flush=True)


async def bench_main(args: argparse.Namespace) -> None:
    levels = sorted({int(v) for v in args.subscribers.split(",")})
    if len(levels) < 2 or max(levels) < 1:
        raise SystemExit("--subscribers needs at least two counts, one of them > 0")
    started = time.monotonic()
    busy_before = host_busy_cores()
    print(f"One publisher (VP8 {W}x{H}@{FPS}, aiortc encoder, testsrc2 pictures), subscribers stepped "
          f"{', '.join(map(str, levels))} on one room; node CPU over {args.seconds:g} s windows after "
          f"{args.warmup:g} s warm-up; {os.cpu_count()} cores, host busy before: {busy_before:.2f} cores; "
          f"PyAV {av.__version__}\n", flush=True)
    print(HEADER, flush=True)
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sfu-") as var_dir:
        env = child_env(var_dir)
        for variant in VARIANTS:
            runs[variant] = await run_variant(variant, args, levels, env)

    result: dict[str, Any] = {"subscriber_counts": levels, "window_s": args.seconds, "warmup_s": args.warmup}
    fits = {}
    for variant in VARIANTS:
        steps = runs[variant]["steps"]
        fits[variant] = line_fit([s["subscribers"] for s in steps], [s["cpu_s_per_s"] for s in steps])
        for s in steps:
            n = s["subscribers"]
            result[f"{variant}_cpu_s_per_s_{n}_subs"] = round(s["cpu_s_per_s"], 4)
            if n:
                result[f"{variant}_cpu_s_per_s_per_stream_{n}_subs"] = round(s["cpu_s_per_s_per_stream"], 5)
                result[f"{variant}_cpu_ms_per_delivered_frame_{n}_subs"] = round(s["cpu_ms_per_delivered_frame"], 3)
                result[f"{variant}_delivered_fps_mean_{n}_subs"] = round(s["delivered_fps_mean"], 1)
                result[f"{variant}_delivered_fps_min_{n}_subs"] = round(s["delivered_fps_min"], 1)
                result[f"{variant}_kbit_per_s_per_subscriber_{n}_subs"] = round(s["kbit_per_s_per_subscriber"])
                result[f"{variant}_kbit_per_s_per_subscriber_min_{n}_subs"] = round(s["kbit_per_s_per_subscriber_min"])
                result[f"{variant}_wire_kbit_per_s_{n}_subs"] = round(s["wire_kbit_per_s"])
                result[f"{variant}_out_kbit_per_s_{n}_subs"] = round(s["out_kbit_per_s"])
                result[f"{variant}_rtp_packets_lost_{n}_subs"] = s["rtp_packets_lost"]
            result[f"{variant}_publisher_kbit_per_s_{n}_subs"] = round(s["publisher_kbit_per_s"])
            result[f"{variant}_host_busy_cores_{n}_subs"] = round(s["host_busy_cores"], 2)
        checks = runs[variant]["decode_checks"].values()
        result[f"{variant}_decode_check_frames"] = sum(c["decoded"] for c in checks)
        result[f"{variant}_decode_check_errors"] = sum(c["errors"] for c in checks)
        result[f"{variant}_decode_check_sizes"] = sorted({size for c in checks for size in c["sizes"]})
        if variant == "forward":
            result["forward_dropped_frames"] = sum(s["forward_dropped_frames"] for s in steps)

    top = max(levels)
    f_top = next(s for s in runs["forward"]["steps"] if s["subscribers"] == top)
    r_top = next(s for s in runs["relay"]["steps"] if s["subscribers"] == top)
    (f_base, f_marg), (r_base, r_marg) = fits["forward"], fits["relay"]
    result.update({
        "headline_subscribers": top,
        "forward_cpu_s_per_s_per_stream": round(f_top["cpu_s_per_s_per_stream"], 5),
        "relay_cpu_s_per_s_per_stream": round(r_top["cpu_s_per_s_per_stream"], 5),
        "ratio_vs_mediarelay": round(f_top["cpu_s_per_s_per_stream"] / r_top["cpu_s_per_s_per_stream"], 4),
        "forward_base_cpu_s_per_s": round(f_base, 4),
        "forward_marginal_cpu_s_per_s_per_subscriber": round(f_marg, 5),
        "relay_base_cpu_s_per_s": round(r_base, 4),
        "relay_marginal_cpu_s_per_s_per_subscriber": round(r_marg, 5),
        "ratio_vs_mediarelay_marginal": round(f_marg / r_marg, 4),
        "ratio_vs_mediarelay_per_delivered_frame": round(
            f_top["cpu_ms_per_delivered_frame"] / r_top["cpu_ms_per_delivered_frame"], 4),
        "subscribers_per_core_forward": round(1 / f_marg, 1),
        "subscribers_per_core_relay": round(1 / r_marg, 1),
        "subscribers_per_core_forward_at_headline": round(1 / f_top["cpu_s_per_s_per_stream"], 1),
        "subscribers_per_core_relay_at_headline": round(1 / r_top["cpu_s_per_s_per_stream"], 1),
        "host_busy_cores_before_run": round(busy_before, 2), "cores": os.cpu_count(),
        "run_s": round(time.monotonic() - started, 1),
    })

    print(f"\nline fit over {', '.join(map(str, levels))} subscribers, node cpu s/s = base + marginal x subscribers:")
    print(f"{'node':<31} | {'base':>6} | {'marginal':>8} | {'subscribers per core':>20}")
    for variant in VARIANTS:
        base, marg = fits[variant]
        print(f"{LABEL[variant]:<31} | {base:>6.3f} | {marg:>8.4f} | {1 / marg:>20.1f}")
    print(f"\nratio ours / MediaRelay at {top} subscribers: {result['ratio_vs_mediarelay']:.3f} per stream "
          f"({result['forward_cpu_s_per_s_per_stream']:.4f} vs {result['relay_cpu_s_per_s_per_stream']:.4f} cpu s/s), "
          f"{result['ratio_vs_mediarelay_per_delivered_frame']:.3f} per delivered frame; marginal per subscriber: "
          f"{result['ratio_vs_mediarelay_marginal']:.3f}")
    for variant in VARIANTS:
        print(f"{LABEL[variant]}, decode check: {result[f'{variant}_decode_check_frames']} frames decoded "
              f"({', '.join(result[f'{variant}_decode_check_sizes'])}), "
              f"{result[f'{variant}_decode_check_errors']} errors")
    print(f"\nRESULT {json.dumps(result)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", default="0,4,8", help="subscriber counts, stepped up on one room")
    parser.add_argument("--seconds", type=float, default=10.0, help="CPU window per step, after --warmup")
    parser.add_argument("--warmup", type=float, default=15.0,
                        help="after the step's subscribers receive video (the relay's encoders start at 500 kbit/s "
                             "and take about 15 s to reach the publisher's bitrate)")
    parser.add_argument("--role", choices=("bench", "node", "publisher", "subscribers"), default="bench",
                        help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--peers", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "bench":
        asyncio.run(bench_main(args))
        return
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    asyncio.run(node_main(args) if args.role == "node" else clients_main(args))


if __name__ == "__main__":
    main()
