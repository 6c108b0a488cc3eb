"""CPU of the HLS quality ladder from the compositor beside the ffmpeg CLI making the same ladder, one run.

    .venv/bin/python bench/ladder.py [--inputs 4] [--seconds 15] [--ladder 720p,360p,180p:120k:48k,audio]

Both make the same program as bench/compositor.py (a grid of N synthetic 640x360@30 inputs and N tones,
in real time) and then the ladder (CLASSCAST_HLS_LADDER's syntax; the default setting's by default),
each rung to its own FLV file:

* ours: `compositor.program.Program` with the ladder's `renditions`: one composite and one audio mix per
  tick, the 720p encode, one reused scaler + one x264 encode per lower video rung, one AAC per distinct
  audio bitrate (the program's shared). Also the program alone (no ladder), to show what the ladder adds.
* peer: `ffmpeg -re`, the same inputs and filter graph as bench/compositor.py, then `split`, `scale` per
  lower rung (bilinear), one libx264 per video rung with our settings (their levels, 1 s VBV, keyint 60,
  no scene cut), one AAC per distinct bitrate (`asplit`), written through the tee muxer (each rung with
  its AAC, the audio rung alone). And the program alone through the same command without the ladder.

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
from classroom.services.ladder import Rung, ladder_parse, ladder_program_renditions  # noqa: E402 (pure; no settings read)
from compositor.config import Destination, Participant, ProgramConfig  # noqa: E402
from compositor.program import Program  # noqa: E402

DEFAULT_LADDER = "720p,360p,180p:120k:48k,audio"


def run_ours(n: int, seconds: float, tmp: Path, rungs: tuple[Rung, ...], *, ladder: bool) -> dict:
    config = ProgramConfig(width=W, height=H, fps=FPS, video_bitrate=VIDEO_BITRATE, audio_bitrate=AUDIO_BITRATE,
                           keyint_s=KEYINT_S, layout="grid", x264_preset="veryfast", h264_level=rungs[0].h264_level,
                           renditions=ladder_program_renditions(rungs) if ladder else ())
    tag = "ladder" if ladder else "single"
    destinations = [Destination(id="top", url=str(tmp / f"ours_{tag}_{rungs[0].name}.flv"))]
    if ladder:
        destinations += [Destination(id=r.name, url=str(tmp / f"ours_ladder_{r.name}.flv"), rendition=r.name)
                         for r in rungs[1:]]
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


def ffmpeg_ladder_command(n: int, seconds: float, tmp: Path, rungs: tuple[Rung, ...], *, ladder: bool) -> list[str]:
    """bench/compositor.py's command, its filter graph split into the rungs, written through tee."""
    base = ffmpeg_command(n, seconds, tmp / "unused.flv")
    graph_at = base.index("-filter_complex") + 1
    graph = base[graph_at]
    inputs = base[: graph_at - 1]
    video = [r for r in (rungs if ladder else rungs[:1]) if not r.audio_only]
    # one AAC per distinct bitrate, as ours: the program's, then each rung's own
    audio_rates = list(dict.fromkeys([AUDIO_BITRATE] + [r.audio_bitrate for r in rungs[1:] if ladder and r.own_audio]))
    x264 = ["-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-pix_fmt", "yuv420p", "-profile:v", "high",
            "-g", str(int(FPS * KEYINT_S)), "-keyint_min", str(int(FPS * KEYINT_S)), "-sc_threshold", "0", "-r", str(FPS)]
    for i, r in enumerate(video):
        x264 += [f"-b:v:{i}", str(r.video_bitrate), f"-maxrate:v:{i}", str(r.video_bitrate),
                 f"-bufsize:v:{i}", str(r.video_bitrate), f"-level:v:{i}", r.h264_level]
    audio = ["-c:a", "aac", "-ar", "48000", "-ac", "2"] + sum(([f"-b:a:{i}", str(b)] for i, b in enumerate(audio_rates)), [])
    if not ladder:
        return inputs + ["-filter_complex", graph, "-map", "[v]", "-map", "[a]", "-t", str(seconds), *x264, *audio,
                         "-f", "flv", str(tmp / f"ffmpeg_single_{rungs[0].name}.flv")]
    graph += f";[v]split={len(video)}" + "".join(f"[vs{i}]" for i in range(len(video)))
    graph += "".join(f";[vs{i}]scale={r.width}:{r.height}:flags=bilinear[vs{i}o]" for i, r in enumerate(video) if i)
    graph += f";[a]asplit={len(audio_rates)}" + "".join(f"[as{j}]" for j in range(len(audio_rates)))
    maps = [m for i in range(len(video)) for m in ("-map", f"[vs{i}]" if i == 0 else f"[vs{i}o]")]
    maps += [m for j in range(len(audio_rates)) for m in ("-map", f"[as{j}]")]
    outs, v = [], 0
    for r in rungs:
        a = audio_rates.index(r.audio_bitrate if r.own_audio else AUDIO_BITRATE)
        select = f"\\'a:{a}\\'" if r.audio_only else f"\\'v:{v},a:{a}\\'"
        v += 0 if r.audio_only else 1
        outs.append(f"[select={select}:f=flv]{tmp / f'ffmpeg_ladder_{r.name}.flv'}")
    return inputs + ["-filter_complex", graph, *maps, "-t", str(seconds), *x264, *audio,
                     "-flags", "+global_header", "-f", "tee", "|".join(outs)]


def run_ffmpeg(n: int, seconds: float, tmp: Path, rungs: tuple[Rung, ...], *, ladder: bool) -> dict:
    cmd = ffmpeg_ladder_command(n, seconds, tmp, rungs, ladder=ladder)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"ffmpeg failed: {' '.join(cmd)}")
    with av.open(str(tmp / f"ffmpeg_{'ladder' if ladder else 'single'}_{rungs[0].name}.flv")) as c:
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
    parser.add_argument("--ladder", default=DEFAULT_LADDER, help="rungs, as CLASSCAST_HLS_LADDER writes them")
    args = parser.parse_args()
    n, seconds = args.inputs, args.seconds
    rungs = ladder_parse(args.ladder, width=W, height=H, fps=FPS, video_bitrate=VIDEO_BITRATE, audio_bitrate=AUDIO_BITRATE)
    busy = host_busy_cores()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        peer_single = run_ffmpeg(n, seconds, tmp, rungs, ladder=False)
        peer_ladder = run_ffmpeg(n, seconds, tmp, rungs, ladder=True)
        single = run_ours(n, seconds, tmp, rungs, ladder=False)
        ladder = run_ours(n, seconds, tmp, rungs, ladder=True)
        outputs = {r.name: describe(tmp / f"ours_ladder_{r.name}.flv") for r in rungs[1:]}
        peer_outputs = {r.name: describe(tmp / f"ffmpeg_ladder_{r.name}.flv") for r in rungs}
    ratio = ladder["cpu_s_per_s"] / peer_ladder["cpu_s_per_s"]
    added = ladder["cpu_s_per_s"] - single["cpu_s_per_s"]
    peer_added = peer_ladder["cpu_s_per_s"] - peer_single["cpu_s_per_s"]
    print(f"\nLadder CPU: {n} inputs -> 1280x720@{FPS} program, ladder {args.ladder}, "
          f"x264 veryfast zerolatency, {seconds:g} s per run, {os.cpu_count()} cores, host busy before: {busy:.2f} cores\n")
    print(f"{'':>16} | {'ours cpu s/s':>12} | {'ffmpeg cpu s/s':>14} | {'ratio':>5}")
    print(f"{'program alone':>16} | {single['cpu_s_per_s']:>12.3f} | {peer_single['cpu_s_per_s']:>14.3f} | "
          f"{single['cpu_s_per_s'] / peer_single['cpu_s_per_s']:>5.2f}")
    print(f"{'the ladder':>16} | {ladder['cpu_s_per_s']:>12.3f} | {peer_ladder['cpu_s_per_s']:>14.3f} | {ratio:>5.2f}")
    print(f"{'the ladder adds':>16} | {added:>12.3f} | {peer_added:>14.3f} |")
    print(f"\nours: fps {ladder['fps']}, dropped {ladder['dropped_frames']}, keyframes per rung {ladder['keyframes']}")
    print(f"ours: {outputs}\nffmpeg: {peer_outputs}")
    result = {
        "inputs": n, "seconds": seconds, "ladder": args.ladder, "cores": os.cpu_count(), "host_busy_cores_before_run": round(busy, 2),
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
