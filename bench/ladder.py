"""CPU of the HLS quality ladder from the compositor beside the ffmpeg CLI making the same ladder, one run.

    .venv/bin/python bench/ladder.py [--inputs 4] [--seconds 15]

Both make the same program as bench/compositor.py (a grid of N synthetic 640x360@30 inputs and N tones,
in real time) and then the default ladder, each rung to its own FLV file:

* ours: `compositor.program.Program` with `renditions` (360p 600 kbit/s, audio): one composite and one
  audio mix per tick, the 720p encode, one reused scaler + one x264 encode for 360p, one AAC shared by
  the three outputs. Also the program alone (no ladder), to show what the ladder adds.
* peer: `ffmpeg -re`, the same inputs and filter graph as bench/compositor.py, then `split`, `scale` to
  640x360 (bilinear), two libx264 encodes with our settings (levels 3.1 / 3, 1 s VBV, keyint 60, no
  scene cut), one AAC, written through the tee muxer (720p + AAC, 360p + AAC, AAC alone). And the
  program alone through the same command without the 360p branch.

CPU = this process's CPU time (ours; generation, compositing, scaling, encoding, muxing) or the child's
user+sys (ffmpeg), per output second. ratio = ours / ffmpeg for the ladder (lower is better).
Last line: `RESULT {json}`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.compositor import (  # noqa: E402
    AUDIO_BITRATE, FPS, H, KEYINT_S, VIDEO_BITRATE, W, Feeder, ffmpeg_command, host_busy_cores,
)
from compositor.config import Destination, Participant, ProgramConfig, RenditionConfig  # noqa: E402
from compositor.program import Program  # noqa: E402
from hls_packager.ladder import h264_level  # noqa: E402

LOW_W, LOW_H, LOW_BITRATE = 640, 360, 600_000
TOP_LEVEL = h264_level(width=W, height=H, fps=FPS)
LOW_LEVEL = h264_level(width=LOW_W, height=LOW_H, fps=FPS)


def run_ours(n: int, seconds: float, tmp: Path, *, ladder: bool) -> dict:
    renditions = (RenditionConfig("360p", LOW_W, LOW_H, LOW_BITRATE, LOW_LEVEL), RenditionConfig("audio")) if ladder else ()
    config = ProgramConfig(width=W, height=H, fps=FPS, video_bitrate=VIDEO_BITRATE, audio_bitrate=AUDIO_BITRATE,
                           keyint_s=KEYINT_S, layout="grid", x264_preset="veryfast", h264_level=TOP_LEVEL,
                           renditions=renditions)
    tag = "ladder" if ladder else "single"
    destinations = [Destination(id="720p", url=str(tmp / f"ours_{tag}_720p.flv"))]
    if ladder:
        destinations += [Destination(id="360p", url=str(tmp / "ours_ladder_360p.flv"), rendition="360p"),
                         Destination(id="audio", url=str(tmp / "ours_ladder_audio.flv"), rendition="audio")]
    program = Program(config, destinations=destinations)
    program.set_participants([Participant(i + 1, f"Participant {i + 1}", "student") for i in range(n)])
    feeder = Feeder(program, n)
    cpu0 = time.process_time()
    program.start()
    feeder.start()
    time.sleep(seconds)
    stats = program.stats()
    feeder.stop.set()
    feeder.join()
    program.stop()
    cpu = time.process_time() - cpu0
    final = program.stats()
    output_s = final["frames_out"] / FPS
    return {"cpu_s_per_s": cpu / output_s, "fps": stats["fps"], "dropped_frames": final["dropped_frames"],
            "keyframes": final["keyframes_by_rendition"]}


def ffmpeg_ladder_command(n: int, seconds: float, tmp: Path, *, ladder: bool) -> list[str]:
    """bench/compositor.py's command, its filter graph split into the rungs, written through tee."""
    base = ffmpeg_command(n, seconds, tmp / "unused.flv")
    graph_at = base.index("-filter_complex") + 1
    graph = base[graph_at]
    inputs = base[: graph_at - 1]
    x264 = ["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-pix_fmt", "yuv420p", "-profile:v", "high",
            "-g", str(int(FPS * KEYINT_S)), "-keyint_min", str(int(FPS * KEYINT_S)), "-sc_threshold", "0", "-r", str(FPS)]
    rates = [("0", VIDEO_BITRATE, TOP_LEVEL)] + ([("1", LOW_BITRATE, LOW_LEVEL)] if ladder else [])
    for index, rate, level in rates:
        x264 += [f"-b:v:{index}", str(rate), f"-maxrate:v:{index}", str(rate), f"-bufsize:v:{index}", str(rate),
                 f"-level:v:{index}", level]
    audio = ["-c:a", "aac", "-b:a", str(AUDIO_BITRATE), "-ar", "48000", "-ac", "2"]
    if not ladder:
        return inputs + ["-filter_complex", graph, "-map", "[v]", "-map", "[a]", "-t", str(seconds), *x264, *audio,
                         "-f", "flv", str(tmp / "ffmpeg_single_720p.flv")]
    graph += f";[v]split=2[vtop][vs];[vs]scale={LOW_W}:{LOW_H}:flags=bilinear[vlow]"
    outs = "|".join([
        f"[select=\\'v:0,a\\':f=flv]{tmp / 'ffmpeg_ladder_720p.flv'}",
        f"[select=\\'v:1,a\\':f=flv]{tmp / 'ffmpeg_ladder_360p.flv'}",
        f"[select=a:f=flv]{tmp / 'ffmpeg_ladder_audio.flv'}",
    ])
    return inputs + ["-filter_complex", graph, "-map", "[vtop]", "-map", "[vlow]", "-map", "[a]", "-t", str(seconds),
                     *x264, *audio, "-flags", "+global_header", "-f", "tee", outs]


def run_ffmpeg(n: int, seconds: float, tmp: Path, *, ladder: bool) -> dict:
    cmd = ffmpeg_ladder_command(n, seconds, tmp, ladder=ladder)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"ffmpeg failed: {' '.join(cmd)}")
    with av.open(str(tmp / f"ffmpeg_{'ladder' if ladder else 'single'}_720p.flv")) as c:
        frames = sum(1 for p in c.demux(video=0) if p.size)
    return {"cpu_s_per_s": (usage.ru_utime + usage.ru_stime) / (frames / FPS)}


def describe(path: Path) -> str:
    with av.open(str(path)) as c:
        parts = [f"{s.codec_context.name} {s.codec_context.width}x{s.codec_context.height}" if s.type == "video"
                 else s.codec_context.name for s in c.streams]
    return " + ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    n, seconds = args.inputs, args.seconds
    busy = host_busy_cores()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        peer_single = run_ffmpeg(n, seconds, tmp, ladder=False)
        peer_ladder = run_ffmpeg(n, seconds, tmp, ladder=True)
        single = run_ours(n, seconds, tmp, ladder=False)
        ladder = run_ours(n, seconds, tmp, ladder=True)
        outputs = {rung: describe(tmp / f"ours_ladder_{rung}.flv") for rung in ("720p", "360p", "audio")}
        peer_outputs = {rung: describe(tmp / f"ffmpeg_ladder_{rung}.flv") for rung in ("720p", "360p", "audio")}
    ratio = ladder["cpu_s_per_s"] / peer_ladder["cpu_s_per_s"]
    added = ladder["cpu_s_per_s"] - single["cpu_s_per_s"]
    peer_added = peer_ladder["cpu_s_per_s"] - peer_single["cpu_s_per_s"]
    print(f"\nLadder CPU: {n} inputs -> 1280x720@{FPS} program + 360p ({LOW_BITRATE // 1000} kbit/s) + audio, "
          f"x264 veryfast zerolatency, {seconds:g} s per run, {os.cpu_count()} cores, host busy before: {busy:.2f} cores\n")
    print(f"{'':>22} | {'ours cpu s/s':>12} | {'ffmpeg cpu s/s':>14} | {'ratio':>5}")
    print(f"{'program alone':>22} | {single['cpu_s_per_s']:>12.3f} | {peer_single['cpu_s_per_s']:>14.3f} | "
          f"{single['cpu_s_per_s'] / peer_single['cpu_s_per_s']:>5.2f}")
    print(f"{'ladder (720p,360p,aac)':>22} | {ladder['cpu_s_per_s']:>12.3f} | {peer_ladder['cpu_s_per_s']:>14.3f} | {ratio:>5.2f}")
    print(f"{'the ladder adds':>22} | {added:>12.3f} | {peer_added:>14.3f} |")
    print(f"\nours: fps {ladder['fps']}, dropped {ladder['dropped_frames']}, keyframes per rung {ladder['keyframes']}")
    print(f"ours: {outputs}\nffmpeg: {peer_outputs}")
    result = {
        "inputs": n, "seconds": seconds, "cores": os.cpu_count(), "host_busy_cores_before_run": round(busy, 2),
        "cpu_s_per_s": round(ladder["cpu_s_per_s"], 3), "ffmpeg_cpu_s_per_s": round(peer_ladder["cpu_s_per_s"], 3),
        "ratio_vs_ffmpeg": round(ratio, 3),
        "single_cpu_s_per_s": round(single["cpu_s_per_s"], 3), "ffmpeg_single_cpu_s_per_s": round(peer_single["cpu_s_per_s"], 3),
        "ladder_adds_cpu_s_per_s": round(added, 3), "ffmpeg_ladder_adds_cpu_s_per_s": round(peer_added, 3),
        "ladder_over_single": round(ladder["cpu_s_per_s"] / single["cpu_s_per_s"], 3),
        "fps": ladder["fps"], "dropped_frames": ladder["dropped_frames"],
    }
    print(f"\nRESULT {json.dumps(result)}")


if __name__ == "__main__":
    main()
