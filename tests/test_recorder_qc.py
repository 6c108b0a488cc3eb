"""recorder.qc: FFmpeg's detectors on real generated media, their log parsers golden-tested against logs
captured from real runs (tests/golden/recorder/qc_*.txt), and the rules that make warnings of them."""
from __future__ import annotations

import json
import os
import stat
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest

from recorder import RecorderError
from recorder.ffmpeg_bin import FfmpegError, ffmpeg_default, log_end_s, stderr_tail
from recorder.qc import (
    DetectorError,
    Interval,
    QcThresholds,
    QcTrackInput,
    QcWarning,
    detect_black,
    detect_freeze,
    detect_silence,
    detect_video,
    parse_blackdetect,
    parse_freezedetect,
    parse_silencedetect,
    qc_evaluate,
)

pytestmark = pytest.mark.once  # pure media: the deployment mode does not matter

GOLDEN = Path(__file__).resolve().parent / "golden" / "recorder"
TOLERANCE_S = 0.3


def golden(name: str) -> str:
    return (GOLDEN / name).read_text(encoding="utf-8")


# --- the binary ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ffmpeg() -> str:
    return ffmpeg_default()


def test_ffmpeg_default_prefers_path(tmp_path, monkeypatch):
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert ffmpeg_default() == str(fake)


def test_ffmpeg_default_falls_back_to_imageio(tmp_path, monkeypatch):
    import imageio_ffmpeg

    monkeypatch.setenv("PATH", str(tmp_path))  # no ffmpeg there
    assert ffmpeg_default() == imageio_ffmpeg.get_ffmpeg_exe()
    assert os.access(ffmpeg_default(), os.X_OK)


def test_the_binary_has_the_detectors_and_the_hls_demuxer(ffmpeg):
    filters = subprocess.run([ffmpeg, "-hide_banner", "-filters"], capture_output=True, text=True, check=True).stdout
    names = {line.split()[1] for line in filters.splitlines() if len(line.split()) > 2}
    assert {"blackdetect", "freezedetect", "silencedetect", "scale"} <= names
    demuxers = subprocess.run([ffmpeg, "-hide_banner", "-demuxers"], capture_output=True, text=True, check=True).stdout
    assert any(line.split()[1:2] == ["hls"] for line in demuxers.splitlines())


# --- parsers, on logs of real runs ----------------------------------------------------------------------------

def test_parse_blackdetect_golden():
    assert parse_blackdetect(golden("qc_blackdetect.txt")) == [Interval(2.0, 5.033333)]


def test_parse_blackdetect_until_end_golden():
    # ffmpeg 9 closes black that lasts to the end itself, at the last frame
    assert parse_blackdetect(golden("qc_blackdetect_until_end.txt")) == [Interval(5.0, 7.966667)]


def test_parse_freezedetect_golden():
    assert parse_freezedetect(golden("qc_freezedetect.txt")) == [Interval(2.0, 5.0)]


def test_parse_freezedetect_with_metadata_print_counts_each_freeze_once():
    assert parse_freezedetect(golden("qc_freezedetect_metadata_print.txt")) == [Interval(2.0, 5.0)]


def test_parse_freezedetect_until_end_is_closed_by_end_s():
    text = golden("qc_freezedetect_until_end.txt")
    assert parse_freezedetect(text, end_s=8.0) == [Interval(5.0, 8.0)]
    assert parse_freezedetect(text) == []  # nothing says how long it lasted
    assert log_end_s(text) == 8.0


def test_parse_silencedetect_golden():
    assert parse_silencedetect(golden("qc_silencedetect.txt"), end_s=10.0) == [Interval(3.008, 7.018542)]


def test_parse_silencedetect_until_end_golden():
    assert parse_silencedetect(golden("qc_silencedetect_until_end.txt"), end_s=None) == [Interval(4.010958, 8.0)]


def test_parse_silencedetect_open_interval_as_older_ffmpeg_leaves_it():
    text = "\n".join(line for line in golden("qc_silencedetect_until_end.txt").splitlines() if "silence_end" not in line)
    assert parse_silencedetect(text, end_s=8.0) == [Interval(4.010958, 8.0)]
    assert parse_silencedetect(text, end_s=None) == []


def test_parsers_clamp_negative_starts_and_read_several_intervals():
    text = (
        "[Parsed_silencedetect_0 @ 0x1] silence_start: -0.00133\n"
        "[Parsed_silencedetect_0 @ 0x1] silence_end: 3.5 | silence_duration: 3.50133\n"
        "[Parsed_silencedetect_0 @ 0x1] silence_start: 10\n"
        "[Parsed_silencedetect_0 @ 0x1] silence_end: 14.25 | silence_duration: 4.25\n"
    )
    assert parse_silencedetect(text, end_s=None) == [Interval(0.0, 3.5), Interval(10.0, 14.25)]
    assert parse_blackdetect("black_start:0 black_end:2.5 black_duration:2.5\nblack_start:7 black_end:9 black_duration:2\n") == [
        Interval(0.0, 2.5),
        Interval(7.0, 9.0),
    ]


def test_log_end_s_prefers_the_last_stats_time_then_the_duration_header():
    assert log_end_s("  Duration: 00:01:02.50, start: 0\nframe=1 time=00:00:01.00\rframe=9 time=01:00:03.25 x") == 3603.25
    assert log_end_s("  Duration: 00:01:02.50, start: 0.000000, bitrate: 1 kb/s\n") == 62.5
    assert log_end_s("  Duration: N/A, start: 0\n time=N/A") is None


def test_stderr_tail_keeps_the_last_lines():
    assert stderr_tail("a\nb\r\nc\rd\n\n", lines=2) == "c\nd"


# --- detectors on real media ----------------------------------------------------------------------------------

def make(ffmpeg: str, out: Path, *args: str) -> Path:
    subprocess.run([ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args, str(out)], check=True)
    return out


X264 = ("-c:v", "libx264", "-preset", "veryfast", "-g", "30", "-pix_fmt", "yuv420p")
PATTERN = "testsrc2=size=320x180:rate=30:duration=8"


@pytest.fixture(scope="module")
def media(ffmpeg, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("qc-media")
    return {
        # 3 s of black from 2 s, 3 s of frozen picture from 2 s (frames 60-150 repeat frame 60),
        # 4 s of silence from 3 s; a clean clip with moving picture and a tone
        "black": make(ffmpeg, d / "black.mp4", "-f", "lavfi", "-i", f"{PATTERN},drawbox=enable='between(t,2,5)':c=black:t=fill", *X264),
        "frozen": make(
            ffmpeg, d / "frozen.mp4", "-filter_complex", f"{PATTERN},split[a][b];[a][b]freezeframes=first=60:last=150:replace=60", *X264
        ),
        "frozen_end": make(
            ffmpeg, d / "frozen_end.mp4", "-filter_complex", f"{PATTERN},split[a][b];[a][b]freezeframes=first=150:last=239:replace=150", *X264
        ),
        "silence": make(
            ffmpeg, d / "silence.m4a", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=10,volume=enable='between(t,3,7)':volume=0", "-c:a", "aac"
        ),
        "clean": make(
            ffmpeg, d / "clean.mp4", "-f", "lavfi", "-i", PATTERN, "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=8", *X264, "-c:a", "aac", "-shortest"
        ),
    }


def near(found: list[Interval], start_s: float, end_s: float) -> bool:
    return len(found) == 1 and abs(found[0].start_s - start_s) <= TOLERANCE_S and abs(found[0].end_s - end_s) <= TOLERANCE_S


def test_detect_black_finds_the_black_interval(media, ffmpeg):
    found = detect_black(path=media["black"], ffmpeg=ffmpeg)
    assert near(found, 2.0, 5.0), found


def test_detect_freeze_finds_the_frozen_interval(media, ffmpeg):
    found = detect_freeze(path=media["frozen"], ffmpeg=ffmpeg)
    assert near(found, 2.0, 5.0), found


def test_detect_freeze_closes_a_freeze_at_the_end_of_the_file(media, ffmpeg):
    found = detect_freeze(path=media["frozen_end"], ffmpeg=ffmpeg)
    assert near(found, 5.0, 8.0), found


def test_detect_video_runs_both_detectors_in_one_pass(media, ffmpeg):
    black = detect_video(path=media["black"], ffmpeg=ffmpeg)
    assert near(black.black, 2.0, 5.0), black  # a black stretch is a still picture too
    frozen = detect_video(path=media["frozen"], ffmpeg=ffmpeg)
    assert frozen.black == [] and near(frozen.frozen, 2.0, 5.0), frozen
    clean = detect_video(path=media["clean"], ffmpeg=ffmpeg)
    assert clean.black == [] and clean.frozen == []
    assert detect_video(path=media["black"], ffmpeg=ffmpeg, black_s=4.0).black == []


def test_detect_silence_finds_the_silent_interval(media, ffmpeg):
    found = detect_silence(path=media["silence"], ffmpeg=ffmpeg)
    assert near(found, 3.0, 7.0), found


def test_detectors_find_nothing_in_a_clean_clip(media, ffmpeg):
    clean = media["clean"]
    assert detect_black(path=clean, ffmpeg=ffmpeg) == []
    assert detect_freeze(path=clean, ffmpeg=ffmpeg) == []
    assert detect_silence(path=clean, ffmpeg=ffmpeg) == []


def test_thresholds_are_passed_to_the_detectors(media, ffmpeg):
    assert detect_black(path=media["black"], ffmpeg=ffmpeg, min_s=4.0) == []
    assert detect_silence(path=media["silence"], ffmpeg=ffmpeg, min_s=5.0) == []
    assert detect_freeze(path=media["frozen"], ffmpeg=ffmpeg, min_s=3.5, noise_db=-60.0) == []


def test_a_detector_on_an_unreadable_file_raises_with_ffmpegs_words(tmp_path, ffmpeg):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 50)
    with pytest.raises(DetectorError) as caught:
        detect_black(path=junk, ffmpeg=ffmpeg)
    assert isinstance(caught.value, RecorderError) and isinstance(caught.value, FfmpegError)
    assert "junk.mp4" in caught.value.stderr_tail
    with pytest.raises(DetectorError):
        detect_silence(path=tmp_path / "absent.m4a", ffmpeg=ffmpeg)


def test_a_detector_on_a_file_without_that_kind_of_stream_raises(media, ffmpeg):
    with pytest.raises(DetectorError):
        detect_silence(path=media["black"], ffmpeg=ffmpeg)  # video only


def test_a_missing_binary_is_a_detector_error(media, tmp_path):
    with pytest.raises(DetectorError, match="cannot run"):
        detect_black(path=media["black"], ffmpeg=str(tmp_path / "no-ffmpeg"))


# --- rules ----------------------------------------------------------------------------------------------------

def track(**overrides) -> QcTrackInput:
    values = dict(track_id="t1", kind="video", expected_ms=600_000, duration_ms=600_000, frames=18_000)
    values.update(overrides)
    return QcTrackInput(**values)


def codes(warnings: list[QcWarning]) -> list[str]:
    return [w.code for w in warnings]


def test_a_clean_track_has_no_warning():
    assert qc_evaluate(tracks=[track()], thresholds=QcThresholds()) == []


def test_track_missing_when_unreadable_and_nothing_else():
    found = qc_evaluate(tracks=[track(duration_ms=None, frames=0, black=[Interval(0, 100)])], thresholds=QcThresholds())
    assert codes(found) == ["track_missing"] and found[0].severity == "error"
    assert found[0].message == "Track t1 (video) is missing or unreadable; 10:00 of recording was expected."


def test_track_missing_when_expected_but_not_given():
    found = qc_evaluate(tracks=[track()], expected=["t1", "t2"], thresholds=QcThresholds())
    assert [(w.code, w.track_id, w.severity) for w in found] == [("track_missing", "t2", "error")]


def test_track_empty_when_no_frames_and_nothing_else():
    found = qc_evaluate(tracks=[track(frames=0, duration_ms=0)], thresholds=QcThresholds())
    assert codes(found) == ["track_empty"] and found[0].severity == "error"


def test_black_video_from_the_threshold_on():
    thresholds = QcThresholds(black_s=2.0)
    found = qc_evaluate(tracks=[track(black=[Interval(62.0, 64.0), Interval(10.0, 11.9)])], thresholds=thresholds)
    assert codes(found) == ["black_video"]
    assert (found[0].start_ms, found[0].end_ms, found[0].severity) == (62_000, 64_000, "warning")
    assert found[0].message == "Track t1 (video) is black from 1:02 to 1:04 (0:02)."


def test_frozen_video():
    found = qc_evaluate(tracks=[track(frozen=[Interval(125.4, 190.0)])], thresholds=QcThresholds(frozen_s=5.0))
    assert codes(found) == ["frozen_video"]
    assert found[0].message == "Track t1 (video) shows a frozen picture from 2:05 to 3:10 (1:05)."


def test_silence_on_an_audio_track():
    found = qc_evaluate(tracks=[track(kind="audio", silent=[Interval(3.0, 7.0)])], thresholds=QcThresholds(silence_s=3.0))
    assert codes(found) == ["silence"] and (found[0].start_ms, found[0].end_ms) == (3000, 7000)
    assert qc_evaluate(tracks=[track(kind="audio", silent=[Interval(3.0, 5.0)])], thresholds=QcThresholds(silence_s=3.0)) == []


@pytest.mark.parametrize(
    ("duration_ms", "expected"),
    [(600_000, []), (601_000, []), (599_000, []), (601_001, ["length_mismatch"]), (540_000, ["length_mismatch"])],
)
def test_length_mismatch_beyond_the_tolerance(duration_ms, expected):
    assert codes(qc_evaluate(tracks=[track(duration_ms=duration_ms)], thresholds=QcThresholds())) == expected


def test_length_mismatch_message():
    (found,) = qc_evaluate(tracks=[track(duration_ms=540_000)], thresholds=QcThresholds(length_tolerance_ms=500))
    assert found.message == "Track t1 (video) lasts 9:00 but was on stage for 10:00 (1:00 shorter)."
    assert (found.start_ms, found.end_ms) == (None, None)


def test_warnings_golden():
    tracks = [
        QcTrackInput("cam-ada", "video", 754_000, 752_500, 22_575, black=[Interval(0.0, 1.5), Interval(300.0, 333.2)], frozen=[Interval(610.25, 640.0)]),
        QcTrackInput("mic-ada", "audio", 754_000, 754_100, 35_348, silent=[Interval(400.0, 470.0), Interval(12.0, 14.0)]),
        QcTrackInput("cam-bob", "video", 185_000, None, 0),
        QcTrackInput("mic-bob", "audio", 185_000, 0, 0),
        QcTrackInput("screen-ada", "video", 4_520_000, 4_400_000, 66_000),
    ]
    found = qc_evaluate(tracks=tracks, expected=["cam-ada", "mic-ada", "cam-bob", "mic-bob", "screen-ada", "cam-eve"], thresholds=QcThresholds())
    assert [asdict(w) for w in found] == json.loads(golden("qc_warnings.json"))
