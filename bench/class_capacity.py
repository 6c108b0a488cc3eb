"""Class capacity: the CPU of live classes end to end on one machine, beside the ffmpeg CLI doing the
same media job, from one run.

    .venv/bin/python bench/class_capacity.py [--classes 3] [--warmup 15] [--window 20] [--keep]

One live class = 4 stage members (aiortc publishers: pre-encoded VP8 640x360@30 + Opus, see
bench/live_class.py), the media node forwarding every member's media to the other three and to the two
egress jobs, the compositor (2x2 grid, 1280x720@30 H.264 + AAC) pushing RTMP to the packager, which
writes HLS, and the recorder writing the 8 stage tracks. Phases, all in one stack (bench/live_class.py):

* (c) peer, first, with nothing else running: `ffmpeg -re` on the same clip, 4 inputs (VP8 + Opus)
  decoded, scaled to our grid tiles and `xstack`ed to 1280x720@30, libx264 with our compositor's
  settings (veryfast, zerolatency, 2.5 Mbit/s, 1 s VBV, keyint 60, no scene cut), `amix` to AAC 128k,
  `-f hls` (2 s segments), plus 8 stream copies (`-c copy`) of the inputs' tracks to files;
* (a) one class live: after `--warmup` s, CPU over `--window` s of every server process with its
  children (utime+stime from /proc): web (daphne with the media node inside), the media worker (its
  compositor and recorder job processes also shown alone), the packager, the default worker, beat;
  the publishers (standing for browsers) are printed but not counted;
* (b) classes 2..N join the same stack: the same figures for N concurrent classes.

For each phase the HLS program is checked: the segments finished in the window are decoded with PyAV
(frames / media seconds = delivered fps; pts gaps = frames the program skipped), each grid tile's stamp
(the clip index drawn into every published frame) is read, so a frozen input shows (distinct input
frames per second per tile); the 8 recording track files must grow. Last line: `RESULT {json}`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_class import (  # noqa: E402
    CLIP_FPS, CLIP_H, CLIP_KEYINT, CLIP_W, ROOT, Clip, LiveStack, clip_make, host_busy_cores, host_busy_s, log, luma,
    pid_cpu_s, segments, stamp_read,
)

sys.path.insert(0, str(ROOT))
from compositor.config import Participant, ProgramConfig  # noqa: E402
from compositor.layout import fit_rect, layout_compute  # noqa: E402
from compositor.video_mixer import CROP_MAX  # noqa: E402
from recorder.ffmpeg_bin import ffmpeg_default  # noqa: E402

W, H, FPS = 1280, 720, 30
CONFIG = ProgramConfig()  # the compositor's defaults = the product's settings defaults
TARGET_CPU_S_PER_S = 0.5
LIVEKIT_EGRESS_CPUS = 3  # documented budget per room composite, quoted in bench/README.md (not measured)


# --- the program as viewers get it ------------------------------------------------------------------------

def tile_rects(members: int = 4) -> list[Any]:
    tiles = layout_compute("grid", [Participant(i + 1, f"P{i}") for i in range(members)], width=W, height=H)
    return [fit_rect(CLIP_W, CLIP_H, t.rect) for t in tiles]


def program_check(paths: list[Path]) -> dict[str, Any]:
    """Decode consecutive HLS segments: delivered fps, skipped frames, and each tile's input rate."""
    rects = tile_rects()
    pts: list[float] = []
    stamps: list[list[int | None]] = [[] for _ in rects]
    sizes, audio_s, video_bytes = set(), 0.0, 0
    for path in paths:
        with av.open(str(path)) as c:
            vs = c.streams.video[0]
            for packet in c.demux(vs):
                video_bytes += packet.size
                for frame in packet.decode():
                    sizes.add(f"{frame.width}x{frame.height}")
                    pts.append(float(frame.pts * vs.time_base))
                    y = luma(frame)
                    for i, rect in enumerate(rects):
                        stamps[i].append(stamp_read(y, rect))
        with av.open(str(path)) as c:
            if c.streams.audio:
                for packet in c.demux(c.streams.audio[0]):
                    if packet.duration:
                        audio_s += float(packet.duration * packet.time_base)
    if len(pts) < 2:
        return {"frames": len(pts), "fps": 0.0, "media_s": 0.0}
    pts.sort()
    step = 1 / FPS
    media_s = pts[-1] - pts[0] + step
    gaps = [b - a for a, b in zip(pts, pts[1:])]
    skipped = sum(max(0, round(g / step) - 1) for g in gaps)
    longest_gap = max(gaps)
    tiles = []
    for seq in stamps:
        read = [s for s in seq if s is not None]
        distinct = sum(1 for a, b in zip(read, read[1:]) if a != b) + (1 if read else 0)
        # the longest run of program frames showing the same input frame (a frozen tile)
        run = longest = 1
        for a, b in zip(read, read[1:]):
            run = run + 1 if a == b else 1
            longest = max(longest, run)
        tiles.append({"read": len(read), "input_fps": distinct / media_s, "longest_repeat": longest if read else 0})
    return {
        "segments": len(paths), "frames": len(pts), "media_s": media_s, "fps": len(pts) / media_s,
        "skipped_frames": skipped, "longest_gap_ms": longest_gap * 1000, "sizes": sorted(sizes),
        "audio_s": audio_s, "video_kbit_per_s": video_bytes * 8 / media_s / 1000,
        "stamps_read": sum(t["read"] for t in tiles) / (len(pts) * len(tiles)),
        "tile_input_fps": [round(t["input_fps"], 1) for t in tiles],
        "tile_longest_repeat": [t["longest_repeat"] for t in tiles],
    }


def segments_in(folder: Path, t0: float, t1: float, keep: Path, *, skip_last: bool = False) -> list[Path]:
    """Copies of the segments finished between wall-clock t0 and t1, in order. The packager renames a
    segment into place when it is cut; ffmpeg's hls muxer writes in place, so for it the newest file is
    left out (`skip_last`: it may still be growing)."""
    keep.mkdir(parents=True, exist_ok=True)
    out = []
    found = sorted(segments(folder).items())
    if skip_last:
        found = found[:-1]
    for n, path in found:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            continue
        if t0 < mtime <= t1:
            dest = keep / path.name
            shutil.copyfile(path, dest)
            out.append(dest)
    return out


# --- what a cheaper x264 preset would cost in quality -------------------------------------------------------

def preset_table(clip: Clip, presets: list[str], frames: int = 150) -> list[dict[str, Any]]:
    """The same 2x2 grid of the clip (as the mixer composes it: cropped tiles) encoded with each preset and
    our settings: CPU per second of video, bitrate, PSNR-Y against the source and against veryfast's output."""
    from fractions import Fraction
    import numpy as np

    rects = tile_rects()
    with av.open(str(clip.path)) as c:
        decoded = [f for _, f in zip(range(frames + 3 * 120), c.decode(video=0))]
    grid = []
    for n in range(frames):
        canvas = av.VideoFrame(W, H, "yuv420p")
        planes = [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in canvas.planes]
        planes[0][:] = 16
        planes[1][:] = planes[2][:] = 128
        for k, r in enumerate(rects):
            src = decoded[(n + k * 120) % len(decoded)]
            sp = [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in src.planes]
            planes[0][r.y : r.y + r.h, r.x : r.x + r.w] = sp[0][: r.h, : r.w]
            for i in (1, 2):
                planes[i][r.y // 2 : (r.y + r.h) // 2, r.x // 2 : (r.x + r.w) // 2] = sp[i][: r.h // 2, : r.w // 2]
        grid.append(canvas)
    source_y = [luma(f).astype(np.float32) for f in grid]

    def psnr(a: list[Any], b: list[Any]) -> float:
        mse = float(np.mean([np.mean((x - y) ** 2) for x, y in zip(a, b)]))
        return 10 * np.log10(255 ** 2 / mse) if mse else 99.0

    rows, reference = [], None
    for preset in presets:
        cc = av.CodecContext.create("libx264", "w")
        cc.width, cc.height, cc.pix_fmt, cc.time_base, cc.framerate = W, H, "yuv420p", Fraction(1, FPS), FPS
        cc.bit_rate = CONFIG.video_bitrate
        kbps = CONFIG.video_bitrate // 1000
        cc.options = {"preset": preset, "tune": "zerolatency", "g": str(CONFIG.keyint_frames),
                      "keyint_min": str(CONFIG.keyint_frames), "sc_threshold": "0", "maxrate": f"{kbps}k",
                      "bufsize": f"{kbps}k", "threads": "0"}
        cpu0 = time.process_time()
        packets = []
        for i, frame in enumerate(grid):
            frame.pts = i
            packets += [bytes(p) for p in cc.encode(frame)]
        packets += [bytes(p) for p in cc.encode(None)]
        cpu = time.process_time() - cpu0
        dec = av.CodecContext.create("h264", "r")
        out_y = [luma(f).astype(np.float32) for b in packets + [None] for f in dec.decode(av.Packet(b) if b else None)]
        reference = reference or out_y
        rows.append({"preset": preset, "cpu_s_per_s": cpu / (frames / FPS),
                     "kbit_per_s": sum(map(len, packets)) * 8 / (frames / FPS) / 1000,
                     "psnr_y_vs_source_db": psnr(out_y, source_y), "psnr_y_vs_veryfast_db": psnr(out_y, reference)})
    return rows


# --- the peer --------------------------------------------------------------------------------------------------

def ffmpeg_peer_command(clip: Clip, out: Path, offsets_s: list[float], preset: str) -> list[str]:
    cmd = [ffmpeg_default(), "-hide_banner", "-loglevel", "error", "-y"]
    for offset in offsets_s:
        cmd += ["-re", "-ss", f"{offset:.3f}", "-i", str(clip.path)]
    n = len(offsets_s)
    tiles = layout_compute("grid", [Participant(i + 1, "") for i in range(n)], width=W, height=H)
    rects = [fit_rect(CLIP_W, CLIP_H, t.rect) for t in tiles]
    # as our mixer: a picture at most 2 % larger than its cell is centre-cropped (even offsets), else scaled
    def fit(i: int, r: Any) -> str:
        if r.w <= CLIP_W <= r.w * (1 + CROP_MAX) and r.h <= CLIP_H <= r.h * (1 + CROP_MAX):
            return f"[{i}:v]crop={r.w}:{r.h}:{(CLIP_W - r.w) // 4 * 2}:{(CLIP_H - r.h) // 4 * 2}[v{i}];"
        return f"[{i}:v]scale={r.w}:{r.h}:flags=bilinear[v{i}];"
    scaled = "".join(fit(i, r) for i, r in enumerate(rects))
    x0, y0 = min(r.x for r in rects), min(r.y for r in rects)
    cells = "|".join(f"{r.x - x0}_{r.y - y0}" for r in rects)
    video = (f"{scaled}{''.join(f'[v{i}]' for i in range(n))}xstack=inputs={n}:layout={cells}:fill=black[s];"
             f"[s]pad={W}:{H}:{x0}:{y0},fps={FPS}[v]")
    audio = "".join(f"[{i}:a]" for i in range(n)) + f"amix=inputs={n}:normalize=0,aformat=channel_layouts=stereo[a]"
    bps, keyint = CONFIG.video_bitrate, CONFIG.keyint_frames
    cmd += ["-filter_complex", f"{video};{audio}", "-map", "[v]", "-map", "[a]",
            "-c:v", "libx264", "-preset", preset, "-tune", "zerolatency", "-pix_fmt", "yuv420p",
            "-b:v", str(bps), "-maxrate", str(bps), "-bufsize", str(bps), "-g", str(keyint),
            "-keyint_min", str(keyint), "-sc_threshold", "0",
            "-c:a", "aac", "-b:a", str(CONFIG.audio_bitrate), "-ar", "48000", "-ac", "2",
            "-f", "hls", "-hls_time", str(CONFIG.keyint_s), "-hls_list_size", "6",
            "-hls_segment_filename", str(out / "seg-%d.ts"), str(out / "live.m3u8")]
    for i in range(n):  # the recorder's 8 files: each input's video and audio, as received
        for kind in ("video", "audio"):  # 1 s clusters, as our writers keep files crash-safe
            cmd += ["-map", f"{i}:{kind[0]}", "-c", "copy", "-f", "webm", "-cluster_time_limit", "1000",
                    "-flush_packets", "1", str(out / f"track-{i}-{kind}.webm")]
    return cmd


def run_peer(clip: Clip, tmp: Path, *, warmup: float, window: float, preset: str) -> dict[str, Any]:
    out = tmp / "peer"
    out.mkdir()
    # each input from another keyframe of the clip, so the four tiles differ; no input reaches the clip's end
    # during the run (ffmpeg's -stream_loop with -ss restarts an input's timestamps and xstack then waits)
    offsets = [i * CLIP_KEYINT / CLIP_FPS for i in range(4)]
    if offsets[-1] + warmup + window + 2 > clip.frames / CLIP_FPS:
        raise SystemExit(f"the peer's run ({warmup + window:g} s) must fit in the {clip.frames / CLIP_FPS:g} s clip")
    cmd = ffmpeg_peer_command(clip, out, offsets, preset)
    log_file = open(tmp / "ffmpeg-peer.log", "w")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        time.sleep(warmup)
        if proc.poll() is not None:
            raise SystemExit(f"ffmpeg peer exited ({proc.returncode}): {(tmp / 'ffmpeg-peer.log').read_text()[-2000:]}")
        tracks0 = {p.name: p.stat().st_size for p in out.glob("track-*")}
        cpu0, w0, m0 = pid_cpu_s(proc.pid), time.time(), time.monotonic()
        time.sleep(window)
        cpu1, w1, m1 = pid_cpu_s(proc.pid), time.time(), time.monotonic()
        tracks1 = {p.name: p.stat().st_size for p in out.glob("track-*")}
        kept = segments_in(out, w0, w1, tmp / "window-peer", skip_last=True)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()
    return {
        "cpu_s_per_s": (cpu1 - cpu0) / (m1 - m0),
        "program": program_check(kept),
        "tracks_growing": sum(1 for k, v in tracks1.items() if v > tracks0.get(k, 0)),
        "command": " ".join(cmd),
    }


# --- ours --------------------------------------------------------------------------------------------------------

def measure(stack: LiveStack, classes: list[Any], *, window: float, tag: str) -> dict[str, Any]:
    jobs = stack.job_pids()
    tracks0 = {c.class_id: {p: p.stat().st_size for p in c.recording_tracks()} for c in classes}
    stats0 = {c.class_id: c.stats() for c in classes}
    dropped0 = {cid: j.get("broadcast_stats", {}).get("dropped_frames", 0) for cid, j in stack.jobs().items()}
    procs0, jobs0 = stack.cpu_s(), {k: pid_cpu_s(p) for k, p in jobs.items()}
    pubs0 = {c.class_id: c.cpu_s() for c in classes}
    host0, w0, m0 = host_busy_s(), time.time(), time.monotonic()
    time.sleep(window)
    procs1, jobs1 = stack.cpu_s(), {k: pid_cpu_s(p) for k, p in jobs.items()}
    pubs1 = {c.class_id: c.cpu_s() for c in classes}
    host1, w1, m1 = host_busy_s(), time.time(), time.monotonic()
    stats1 = {c.class_id: c.stats() for c in classes}
    jobs_after = stack.jobs()
    kept = {c.class_id: segments_in(c.hls_folder(), w0, w1, stack.tmp / f"window-{tag}-class-{c.info.number}")
            for c in classes}
    tracks1 = {c.class_id: {p: p.stat().st_size for p in c.recording_tracks()} for c in classes}
    span = m1 - m0
    per_class = {}
    for c in classes:
        grown = [p for p, size in tracks1[c.class_id].items() if size > tracks0[c.class_id].get(p, -1)]
        sent = sum(m["video_sent"] for m in stats1[c.class_id]["members"].values()) - sum(
            m["video_sent"] for m in stats0[c.class_id]["members"].values())
        per_class[c.info.number] = {
            "kept": kept[c.class_id],
            "tracks": len(tracks1[c.class_id]),
            "tracks_growing": len(grown),
            "recording_kbit_per_s": (sum(tracks1[c.class_id].values()) - sum(tracks0[c.class_id].values())) * 8 / span / 1000,
            "publisher_cpu_s_per_s": (pubs1[c.class_id] - pubs0[c.class_id]) / span,
            "published_fps_per_member": sent / 4 / span,
            "compositor_dropped_frames": jobs_after.get(c.class_id, {}).get("broadcast_stats", {}).get("dropped_frames", 0)
            - dropped0.get(c.class_id, 0),
        }
    return {
        "span_s": span,
        "procs": {k: (procs1[k] - procs0[k]) / span for k in procs0},
        "jobs": {k: (jobs1[k] - jobs0[k]) / span for k in jobs0},
        "host_busy": (host1 - host0) / span,
        "classes": per_class,
    }


def analyse(phase: dict[str, Any]) -> None:
    for number, c in phase["classes"].items():
        c["program"] = program_check(c.pop("kept"))


# --- output ------------------------------------------------------------------------------------------------------

PROC_LABELS = [("web", "web: daphne + media node (SFU)"), ("media", "media worker (Celery -Q media)"),
               ("packager", "packager (RTMP ingest -> HLS)"), ("default", "default worker (Celery -Q default)"),
               ("beat", "beat")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--window", type=float, default=20.0)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, segments, recordings)")
    parser.add_argument("--no-peer", action="store_true", help="skip the ffmpeg peer (development)")
    parser.add_argument("--no-presets", action="store_true", help="skip the x264 preset quality/CPU table")
    parser.add_argument("--x264-preset", default=CONFIG.x264_preset,
                        help="CLASSCAST_X264_PRESET for our compositor and -preset for the peer (default: the product's)")
    args = parser.parse_args()
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="class-capacity-"))
    result: dict[str, Any] = {"classes": args.classes, "warmup_s": args.warmup, "window_s": args.window,
                              "cores": os.cpu_count(), "x264_preset": args.x264_preset}
    try:
        busy_before = host_busy_cores()
        result["host_busy_cores_before_run"] = round(busy_before, 2)
        log(f"host busy before: {busy_before:.2f} cores; encoding the publishers' clip")
        clip = clip_make(tmp / "clip.webm")
        presets = [] if args.no_presets else preset_table(clip, ["veryfast", "superfast", "ultrafast"])
        peer = None
        if not args.no_peer:
            log("peer: ffmpeg -re, 4 inputs -> xstack -> x264 + amix/AAC -> HLS, + 8 stream copies")
            peer = run_peer(clip, tmp, warmup=min(args.warmup, 8.0), window=args.window, preset=args.x264_preset)
            log(f"peer: {peer['cpu_s_per_s']:.3f} cpu s/s, program {peer['program']['fps']:.2f} fps")
        log("starting the stack (web + media node, packager, media worker, default worker, beat)")
        with LiveStack(tmp, classes_max=args.classes, keep=args.keep,
                       extra_env={"CLASSCAST_X264_PRESET": args.x264_preset}) as stack:
            log("class 1: 4 members on stage, broadcast + recording")
            first = stack.class_start(1, clip)
            stack.wait_on_air([first])
            log(f"class 1 on air (setup {first.ready['setup_s']} s); warm-up {args.warmup:g} s")
            time.sleep(args.warmup)
            one = measure(stack, [first], window=args.window, tag="one")
            log(f"one class: server {sum(one['procs'].values()):.3f} cpu s/s")
            many = None
            if args.classes > 1:
                others = list(range(2, args.classes + 1))
                log(f"classes {others}: starting")
                started = stack.classes_start(others, clip)
                missing = stack.wait_on_air(started, strict=False)
                result[f"not_on_air_after_90s_{args.classes}_classes"] = missing
                if missing:
                    log(f"not all on air after 90 s (measured anyway): {missing}")
                time.sleep(args.warmup)
                many = measure(stack, stack.classes, window=args.window, tag="many")
                log(f"{args.classes} classes: server {sum(many['procs'].values()):.3f} cpu s/s")
            stack.check_alive()
        log("decoding the programs' segments")
        analyse(one)
        if many:
            analyse(many)
    finally:
        if args.keep:
            log(f"kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report(args, result, one, many, peer, busy_before)
    if presets:
        print(f"\nx264 presets on the same 2x2 grid of the clip ({CONFIG.video_bitrate // 1000} kbit/s, zerolatency, "
              f"keyint {CONFIG.keyint_frames}; encoder alone, 150 frames)")
        print(f"{'preset':<10} | {'cpu s/s':>7} | {'kbit/s':>6} | {'PSNR-Y vs source':>16} | {'PSNR-Y vs veryfast':>18}")
        for row in presets:
            print(f"{row['preset']:<10} | {row['cpu_s_per_s']:7.3f} | {row['kbit_per_s']:6.0f} | "
                  f"{row['psnr_y_vs_source_db']:13.2f} dB | {row['psnr_y_vs_veryfast_db']:15.2f} dB")
            for key in ("cpu_s_per_s", "kbit_per_s", "psnr_y_vs_source_db"):
                result[f"x264_{row['preset']}_{key}"] = round(row[key], 3 if key == "cpu_s_per_s" else 2)
    result["run_s"] = round(time.monotonic() - t_start, 1)
    print(f"\nRESULT {json.dumps(result)}")


def report(args: Any, result: dict[str, Any], one: dict[str, Any], many: dict[str, Any] | None,
           peer: dict[str, Any] | None, busy_before: float) -> None:
    n = args.classes
    total1 = sum(one["procs"].values())
    totaln = sum(many["procs"].values()) if many else None
    peer_cpu = peer["cpu_s_per_s"] if peer else None
    print(f"\nClass capacity: 4 stage members per class, 2x2 composite 1280x720@{FPS} (x264 {args.x264_preset}), "
          f"RTMP -> HLS, 8 tracks recorded; {args.window:g} s window after {args.warmup:g} s warm-up; "
          f"{os.cpu_count()} cores, host busy before: {busy_before:.2f}\n")
    head = f"{'cpu s/s':<40} | {'1 class':>8} | {f'{n} classes':>10} | {'per class':>9}"
    print(head)
    print("-" * len(head))

    def row(label: str, a: float | None, b: float | None) -> None:
        fa = f"{a:8.3f}" if a is not None else f"{'-':>8}"
        fb = f"{b:10.3f}" if b is not None else f"{'-':>10}"
        fc = f"{b / n:9.3f}" if b is not None else f"{'-':>9}"
        print(f"{label:<40} | {fa} | {fb} | {fc}")

    for key, label in PROC_LABELS:
        row(label, one["procs"][key], many["procs"][key] if many else None)
        if key == "media":
            for kind in ("compositor", "recorder"):
                a = sum(v for k, v in one["jobs"].items() if k.startswith(kind))
                b = sum(v for k, v in many["jobs"].items() if k.startswith(kind)) if many else None
                row(f"  of which {kind} job(s)", a, b)
    row("SERVER TOTAL", total1, totaln)
    pub1 = sum(c["publisher_cpu_s_per_s"] for c in one["classes"].values())
    pubn = sum(c["publisher_cpu_s_per_s"] for c in many["classes"].values()) if many else None
    row("publishers (browsers' stand-ins; not counted)", pub1, pubn)
    row("host busy (all processes)", one["host_busy"], many["host_busy"] if many else None)
    if peer:
        print(f"{'ffmpeg CLI peer (one class media job)':<40} | {peer_cpu:8.3f} |")
        print(f"{'ratio ours / ffmpeg':<40} | {total1 / peer_cpu:8.2f} | {'':>10} | "
              f"{(totaln / n / peer_cpu) if totaln else 0:9.2f}")

    print(f"\n{'program (HLS, decoded)':<26} | {'fps':>6} | {'frames':>6} | {'media s':>7} | {'skipped':>7} | "
          f"{'kbit/s':>6} | {'stamps':>6} | {'tile input fps':>24} | {'longest repeat':>16} | {'tracks growing':>14} | {'pub fps':>7}")
    programs = [("1 class: class 1", one["classes"][1])]
    if many:
        programs += [(f"{n} classes: class {k}", c) for k, c in sorted(many["classes"].items())]
    for label, c in programs:
        p = c["program"]
        print(f"{label:<26} | {p['fps']:6.2f} | {p['frames']:6d} | {p['media_s']:7.2f} | {p.get('skipped_frames', 0):7d} | "
              f"{p.get('video_kbit_per_s', 0):6.0f} | {p.get('stamps_read', 0):6.2f} | "
              f"{str(p.get('tile_input_fps')):>24} | {str(p.get('tile_longest_repeat')):>16} | "
              f"{c['tracks_growing']:>6} of {c['tracks']:<5} | "
              f"{c['published_fps_per_member']:7.1f}")
    if peer:
        p = peer["program"]
        print(f"{'ffmpeg peer':<26} | {p['fps']:6.2f} | {p['frames']:6d} | {p['media_s']:7.2f} | {p.get('skipped_frames', 0):7d} | "
              f"{p.get('video_kbit_per_s', 0):6.0f} | {p.get('stamps_read', 0):6.2f} | "
              f"{str(p.get('tile_input_fps')):>24} | {str(p.get('tile_longest_repeat')):>16} | "
              f"{peer['tracks_growing']:>6} of 8     |")

    r = result
    r["cpu_s_per_s_one_class"] = round(total1, 3)
    for key, _ in PROC_LABELS:
        r[f"cpu_s_per_s_one_class_{key}"] = round(one["procs"][key], 3)
    r["cpu_s_per_s_one_class_compositor_job"] = round(sum(v for k, v in one["jobs"].items() if k.startswith("compositor")), 3)
    r["cpu_s_per_s_one_class_recorder_job"] = round(sum(v for k, v in one["jobs"].items() if k.startswith("recorder")), 3)
    r["publisher_cpu_s_per_s_one_class"] = round(pub1, 3)
    r["host_busy_cores_one_class"] = round(one["host_busy"], 2)
    c1 = one["classes"][1]
    r["program_fps_one_class"] = round(c1["program"]["fps"], 2)
    r["program_skipped_frames_one_class"] = c1["program"].get("skipped_frames", 0)
    r["tile_input_fps_min_one_class"] = min(c1["program"].get("tile_input_fps") or [0])
    r["tile_longest_repeat_frames_one_class"] = max(c1["program"].get("tile_longest_repeat") or [0])
    r["tracks_growing_one_class"] = c1["tracks_growing"]
    r["program_video_kbit_per_s_one_class"] = round(c1["program"].get("video_kbit_per_s", 0))
    if many:
        r[f"cpu_s_per_s_{n}_classes"] = round(totaln, 3)
        r[f"cpu_s_per_s_per_class_of_{n}"] = round(totaln / n, 3)
        for key, _ in PROC_LABELS:
            r[f"cpu_s_per_s_{n}_classes_{key}"] = round(many["procs"][key], 3)
        r[f"publisher_cpu_s_per_s_{n}_classes"] = round(pubn, 3)
        r[f"host_busy_cores_{n}_classes"] = round(many["host_busy"], 2)
        for k, c in sorted(many["classes"].items()):
            r[f"program_fps_class_{k}"] = round(c["program"]["fps"], 2)
            r[f"program_skipped_frames_class_{k}"] = c["program"].get("skipped_frames", 0)
            r[f"tile_input_fps_min_class_{k}"] = min(c["program"].get("tile_input_fps") or [0])
            r[f"tile_longest_repeat_frames_class_{k}"] = max(c["program"].get("tile_longest_repeat") or [0])
            r[f"tracks_growing_class_{k}"] = c["tracks_growing"]
            r[f"compositor_dropped_frames_class_{k}"] = c["compositor_dropped_frames"]
    if peer:
        r["ffmpeg_cpu_s_per_s"] = round(peer_cpu, 3)
        r["ffmpeg_program_fps"] = round(peer["program"]["fps"], 2)
        r["ffmpeg_tracks_growing"] = peer["tracks_growing"]
        r["ratio_vs_ffmpeg"] = round(total1 / peer_cpu, 2)
        if many:
            r[f"ratio_vs_ffmpeg_per_class_of_{n}"] = round(totaln / n / peer_cpu, 2)
    r["target_cpu_s_per_s_per_class"] = TARGET_CPU_S_PER_S
    r["target_met_one_class"] = total1 <= TARGET_CPU_S_PER_S
    r["one_class_at_full_frame_rate"] = c1["program"]["fps"] >= 29.5 and r["tile_input_fps_min_one_class"] >= 28.5
    if many:
        # full frame rate = the program at 30 fps *and* every tile showing a new input frame ~30 times a second
        fps_ok = all(c["program"]["fps"] >= 29.5 and min(c["program"].get("tile_input_fps") or [0]) >= 28.5
                     for c in many["classes"].values())
        r[f"{n}_classes_at_full_frame_rate"] = fps_ok
    r["livekit_egress_documented_cpus_per_room_composite"] = LIVEKIT_EGRESS_CPUS


if __name__ == "__main__":
    main()
