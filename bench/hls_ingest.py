"""RTMP ingest + HLS segmenting CPU per stream: hls_packager beside the ffmpeg CLI doing the same job.

Run from the project root:

    .venv/bin/python bench/hls_ingest.py [--streams 4] [--seconds 20]

* input: one clip encoded once up front (testsrc2 640x360@30 + 440 Hz sine 48 kHz, libx264 veryfast
  zerolatency -g 60, AAC), published by N ffmpeg processes at once with `-re -c copy -f flv` (no
  encoding at publish time, so the publishers stay light and both sides get the same bytes);
* peer: N `ffmpeg -listen 1 -i rtmp://127.0.0.1:<port>/live/key -c copy -f hls -hls_time 2` processes
  (FFmpeg's own RTMP listen mode takes one client per URL, so one process and one port per stream);
  their CPU is what os.wait4 reports for them when they exit;
* ours: one IngestServer in this process (asyncio ingest + one PyAV segmenter thread per stream), N
  publishers on one port; its CPU is this process's CPU time (all threads) over the same span.

Figure: CPU seconds per second of media per stream (cpu_s_per_s) = CPU / (sum of the HLS media
durations written), and ours / peer. The last line printed is `RESULT {json}`. Loopback only.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg
import m3u8

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hls_packager.config import PackagerConfig  # noqa: E402
from hls_packager.server import IngestServer  # noqa: E402

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_clip(path: Path, seconds: float) -> None:
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds), "-c:v", "libx264",
         "-preset", "veryfast", "-tune", "zerolatency", "-g", "60", "-c:a", "aac", "-f", "flv", str(path)],
        check=True,
    )


def publisher(clip: Path, url: str) -> subprocess.Popen:
    return subprocess.Popen(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-re", "-i", str(clip), "-c", "copy", "-f", "flv", url],
        stdin=subprocess.DEVNULL,
    )


def media_seconds(playlists: list[Path]) -> float:
    return sum(sum(s.duration for s in m3u8.load(str(p)).segments) for p in playlists if p.exists())


def run_peer(clip: Path, streams: int, out: Path) -> dict[str, float]:
    listeners, ports = [], []
    for i in range(streams):
        port = free_port()
        folder = out / f"peer-{i}"
        folder.mkdir(parents=True)
        listeners.append(subprocess.Popen(
            # fatal: the listen mode ends every stream with an "Input/output error" at the publisher's EOF
            [FFMPEG, "-hide_banner", "-loglevel", "fatal", "-listen", "1", "-i", f"rtmp://127.0.0.1:{port}/live/key",
             "-c", "copy", "-f", "hls", "-hls_time", "2", "-hls_list_size", "0", str(folder / "index.m3u8")],
            stdin=subprocess.DEVNULL,
        ))
        ports.append(port)
    time.sleep(1.0)  # the listeners bind
    start = time.monotonic()
    pubs = [publisher(clip, f"rtmp://127.0.0.1:{port}/live/key") for port in ports]
    for p in pubs:
        p.wait()
    cpu = 0.0
    for p in listeners:
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        cpu += usage.ru_utime + usage.ru_stime
    wall = time.monotonic() - start
    media = media_seconds([out / f"peer-{i}" / "index.m3u8" for i in range(streams)])
    return {"cpu_s": cpu, "media_s": media, "wall_s": wall}


async def run_ours(clip: Path, streams: int, out: Path) -> dict[str, float]:
    folders = {f"key-{i}": f"ours/stream-{i}" for i in range(streams)}

    async def resolve_key(app: str, key: str) -> str | None:
        return folders.get(key)

    server = IngestServer(PackagerConfig(port=0, output_dir=out), resolve_key=resolve_key)
    await server.start()
    cpu0, start = time.process_time(), time.monotonic()
    pubs = [publisher(clip, f"rtmp://127.0.0.1:{server.port}/live/{key}") for key in folders]
    await asyncio.gather(*(asyncio.to_thread(p.wait) for p in pubs))
    while server.stats()["publishers"]:  # the segmenters finish their last segment
        await asyncio.sleep(0.05)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - start
    await server.close()
    media = media_seconds([out / f / "vod.m3u8" for f in folders.values()])
    return {"cpu_s": cpu, "media_s": media, "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-hls-") as tmp:
        tmp_path = Path(tmp)
        clip = tmp_path / "clip.flv"
        make_clip(clip, args.seconds)
        clip_mbit_s = clip.stat().st_size * 8 / args.seconds / 1e6
        load_before = os.getloadavg()[0]
        peer = run_peer(clip, args.streams, tmp_path / "peer")
        ours = asyncio.run(run_ours(clip, args.streams, tmp_path / "ours"))
    ours_rate = ours["cpu_s"] / ours["media_s"]
    peer_rate = peer["cpu_s"] / peer["media_s"]
    print(f"{args.streams} concurrent publishers, {args.seconds:.0f} s clip each (640x360@30 H.264 + AAC 48 kHz, {clip_mbit_s:.2f} Mbit/s)")
    print(f"{'':<28}{'CPU s':>8}{'media s':>9}{'CPU s per media s':>20}{'% of a core per stream':>25}")
    for name, r, rate in (("hls_packager (1 process)", ours, ours_rate), ("ffmpeg CLI (1 per stream)", peer, peer_rate)):
        print(f"{name:<28}{r['cpu_s']:>8.2f}{r['media_s']:>9.1f}{rate:>20.4f}{rate * 100:>24.2f}%")
    print(f"ratio ours / ffmpeg: {ours_rate / peer_rate:.2f}")
    result = {
        "streams": args.streams,
        "clip_s": args.seconds,
        "clip_mbit_per_s": round(clip_mbit_s, 3),
        "cpu_s_per_s": round(ours_rate, 5),
        "ffmpeg_cpu_s_per_s": round(peer_rate, 5),
        "ratio_vs_ffmpeg": round(ours_rate / peer_rate, 3),
        "cpu_s": round(ours["cpu_s"], 3),
        "ffmpeg_cpu_s": round(peer["cpu_s"], 3),
        "media_s": round(ours["media_s"], 2),
        "ffmpeg_media_s": round(peer["media_s"], 2),
        "host_load_1min_before": round(load_before, 2),
        "cores": os.cpu_count(),
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
