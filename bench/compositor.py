"""CPU of the MCU compositor beside the ffmpeg CLI doing the same job, from one run.

    .venv/bin/python bench/compositor.py [--inputs 1,4,9] [--seconds 15]

For each N in --inputs, both make the same 1280x720@30 program from N synthetic 640x360@30 inputs
(FFmpeg's testsrc2, moving so the encoder has real work) and N tones, in real time, to an FLV file:

* ours: `compositor.program.Program` (grid layout, name tags, YUV420 numpy compositing, one scaler per
  tile, libx264 + AAC encoded once) fed by a thread that generates the inputs with PyAV's lavfi and
  pushes them as the stage readers would (`push_video` / `push_audio`), paced at 30 fps / 20 ms.
  CPU = this process's CPU time (every thread: generation, compositing, encoding, muxing) over the run.
* peer: `ffmpeg -re` with the same lavfi inputs, `scale` (bilinear, to our tile sizes) + `xstack` at our
  tile positions (or one scaled input) + `pad`, no name tags,
  `amix`, libx264 with the same settings (veryfast, zerolatency, 2.5 Mbit/s, 1 s VBV, keyint 60, no
  scene cut) and AAC 128k 48 kHz. CPU = the child's user+sys time (wait4).

Figures: CPU seconds per output second (lower is better; 1.0 = one core busy), delivered fps, and
ratio = ours / ffmpeg (target <= 1.0). The machine's busy cores before the run are printed too, since
other work on the host moves both figures. Last line: `RESULT {json}`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import imageio_ffmpeg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compositor.config import Destination, Participant, ProgramConfig  # noqa: E402
from compositor.layout import layout_compute  # noqa: E402
from compositor.program import Program  # noqa: E402

W, H, FPS = 1280, 720, 30
VIDEO_BITRATE, AUDIO_BITRATE, KEYINT_S = 2_500_000, 128_000, 2.0


def host_busy_s() -> float:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def host_busy_cores(seconds: float = 2.0) -> float:
    before = host_busy_s()
    time.sleep(seconds)
    return (host_busy_s() - before) / seconds


def video_source(i: int) -> str:
    return f"testsrc2=size=640x360:rate={FPS}"


def audio_source(i: int) -> str:
    return f"sine=frequency={220 * (i + 1)}:sample_rate=48000"


class Feeder(threading.Thread):
    """Generates the N inputs and pushes them into the program in real time."""

    def __init__(self, program: Program, n: int) -> None:
        super().__init__(daemon=True, name="bench-feeder")
        self.program, self.n = program, n
        self.stop = threading.Event()

    def run(self) -> None:
        videos = [av.open(video_source(i), format="lavfi") for i in range(self.n)]
        audios = [av.open(audio_source(i), format="lavfi") for i in range(self.n)]
        vgen = [c.decode(video=0) for c in videos]
        agen = [c.decode(audio=0) for c in audios]
        sent_audio = [0] * self.n
        t0, tick = time.monotonic(), 0
        try:
            while not self.stop.is_set():
                for i in range(self.n):
                    self.program.push_video(i + 1, next(vgen[i]))
                    while sent_audio[i] <= (tick + 2) / FPS * 48_000:
                        frame = next(agen[i])
                        self.program.push_audio(i + 1, frame)
                        sent_audio[i] += frame.samples
                tick += 1
                delay = t0 + tick / FPS - time.monotonic()
                if delay > 0:
                    self.stop.wait(delay)
        finally:
            for c in videos + audios:
                c.close()


def run_ours(n: int, seconds: float, out: Path) -> dict:
    config = ProgramConfig(width=W, height=H, fps=FPS, video_bitrate=VIDEO_BITRATE, audio_bitrate=AUDIO_BITRATE,
                           keyint_s=KEYINT_S, layout="grid", x264_preset="veryfast")
    program = Program(config, destinations=[Destination(id="file", url=str(out))])
    program.set_participants([Participant(i + 1, f"Participant {i + 1}", "student") for i in range(n)])
    feeder = Feeder(program, n)
    cpu0, t0 = time.process_time(), time.monotonic()
    program.start()
    feeder.start()
    time.sleep(seconds)
    stats = program.stats()
    feeder.stop.set()
    feeder.join()
    program.stop()
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    final = program.stats()
    output_s = final["frames_out"] / FPS
    return {"cpu_s": cpu, "wall_s": wall, "output_s": output_s, "cpu_s_per_s": cpu / output_s,
            "fps": stats["fps"], "frames_out": final["frames_out"], "dropped_frames": final["dropped_frames"]}


def ffmpeg_command(n: int, seconds: float, out: Path) -> list[str]:
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y"]
    for i in range(n):
        cmd += ["-re", "-f", "lavfi", "-i", video_source(i)]
    for i in range(n):
        cmd += ["-re", "-f", "lavfi", "-i", audio_source(i)]
    # the same geometry as ours (layout_compute's grid: 16:9 cells, 4 px gaps, centred) and the same
    # bilinear scaler, so both do the same scaling work
    tiles = layout_compute("grid", [Participant(i + 1, "") for i in range(n)], width=W, height=H)
    scaled = "".join(f"[{i}:v]scale={t.w}:{t.h}:flags=bilinear[v{i}];" for i, t in enumerate(tiles))
    if n == 1:
        video = f"{scaled}[v0]pad={W}:{H}:{tiles[0].x}:{tiles[0].y}[v]"
    else:
        x0, y0 = min(t.x for t in tiles), min(t.y for t in tiles)
        cells = "|".join(f"{t.x - x0}_{t.y - y0}" for t in tiles)
        stack = "".join(f"[v{i}]" for i in range(n))
        video = f"{scaled}{stack}xstack=inputs={n}:layout={cells}:fill=black[s];[s]pad={W}:{H}:{x0}:{y0}[v]"
    audio = "".join(f"[{n + i}:a]" for i in range(n)) + f"amix=inputs={n}:normalize=0,aformat=channel_layouts=stereo[a]"
    cmd += ["-filter_complex", f"{video};{audio}", "-map", "[v]", "-map", "[a]", "-t", str(seconds),
            "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-pix_fmt", "yuv420p",
            "-b:v", str(VIDEO_BITRATE), "-maxrate", str(VIDEO_BITRATE), "-bufsize", str(VIDEO_BITRATE),
            "-g", str(int(FPS * KEYINT_S)), "-keyint_min", str(int(FPS * KEYINT_S)), "-sc_threshold", "0",
            "-r", str(FPS), "-c:a", "aac", "-b:a", str(AUDIO_BITRATE), "-ar", "48000", "-ac", "2",
            "-f", "flv", str(out)]
    return cmd


def run_ffmpeg(n: int, seconds: float, out: Path) -> dict:
    t0 = time.monotonic()
    proc = subprocess.Popen(ffmpeg_command(n, seconds, out), stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"ffmpeg failed ({proc.returncode}): {' '.join(ffmpeg_command(n, seconds, out))}")
    with av.open(str(out)) as c:
        frames = sum(1 for p in c.demux(video=0) if p.size)
    cpu = usage.ru_utime + usage.ru_stime
    output_s = frames / FPS
    return {"cpu_s": cpu, "wall_s": wall, "output_s": output_s, "cpu_s_per_s": cpu / output_s,
            "fps": frames / wall, "frames_out": frames}


def check_output(path: Path) -> str:
    with av.open(str(path)) as c:
        v, a = c.streams.video[0].codec_context, c.streams.audio[0].codec_context
        return f"{v.name} {v.width}x{v.height} + {a.name} {a.sample_rate} Hz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", default="1,4,9", help="comma-separated input counts")
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    counts = [int(v) for v in args.inputs.split(",")]
    busy_before = host_busy_cores()
    result: dict = {"seconds": args.seconds, "cores": os.cpu_count(), "host_busy_cores_before_run": round(busy_before, 2)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            peer = run_ffmpeg(n, args.seconds, Path(tmp) / f"ffmpeg_{n}.flv")
            ours = run_ours(n, args.seconds, Path(tmp) / f"ours_{n}.flv")
            fmt = check_output(Path(tmp) / f"ours_{n}.flv")
            ratio = ours["cpu_s_per_s"] / peer["cpu_s_per_s"]
            rows.append((n, ours, peer, ratio, fmt))
            result.update({
                f"cpu_s_per_s_{n}": round(ours["cpu_s_per_s"], 3), f"ffmpeg_cpu_s_per_s_{n}": round(peer["cpu_s_per_s"], 3),
                f"ratio_vs_ffmpeg_{n}": round(ratio, 3), f"fps_{n}": ours["fps"], f"ffmpeg_fps_{n}": round(peer["fps"], 2),
                f"dropped_frames_{n}": ours["dropped_frames"],
            })
    print(f"\nCompositor CPU, 1280x720@{FPS} H.264 (x264 veryfast zerolatency) + AAC, {args.seconds:g} s per run, "
          f"{os.cpu_count()} cores, host busy before: {busy_before:.2f} cores\n")
    print(f"{'inputs':>6} | {'ours cpu s/s':>12} | {'ffmpeg cpu s/s':>14} | {'ratio':>6} | {'ours fps':>8} | "
          f"{'ffmpeg fps':>10} | {'dropped':>7} | output")
    for n, ours, peer, ratio, fmt in rows:
        print(f"{n:>6} | {ours['cpu_s_per_s']:>12.3f} | {peer['cpu_s_per_s']:>14.3f} | {ratio:>6.2f} | "
              f"{ours['fps']:>8.1f} | {peer['fps']:>10.1f} | {ours['dropped_frames']:>7} | {fmt}")
    headline = 4 if 4 in counts else counts[0]
    result.update({"inputs": counts, "cpu_s_per_s": result[f"cpu_s_per_s_{headline}"],
                   "ratio_vs_ffmpeg": result[f"ratio_vs_ffmpeg_{headline}"], "fps": result[f"fps_{headline}"],
                   "headline_inputs": headline})
    print(f"\nRESULT {json.dumps(result)}")


if __name__ == "__main__":
    main()
