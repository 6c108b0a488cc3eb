"""The getStats summariser of tests/netlab_stage.py, on hand-made samples (golden figures)."""
from __future__ import annotations

from typing import Any

import pytest

from tests.netlab_stage import (
    counter_delta, first_time, freeze_threshold_s, sampler_script, stalls, summarise_flow, video_back_after,
)

pytestmark = pytest.mark.once


def sample(t: float, frames: int, *, height: int = 360, vbytes: int = 0, concealed: int = 0, played: int = 0,
           fec: int = 0, sent: int | None = None, limit: str = "") -> dict[str, Any]:
    """One sampler entry as STATS_SAMPLER_JS writes it (only the fields the summariser reads)."""
    s: dict[str, Any] = {
        "t": t,
        "video": {"frames": frames, "bytes": vbytes, "rtx_bytes": vbytes // 10, "lost": 0, "nacks": 0, "freeze_count": 0, "freezes_s": 0,
                  "width": height * 16 // 9, "height": height},
        "audio": {"concealed": concealed, "samples": played, "fec": fec, "lost": 0, "bytes": 0},
        "out": None,
    }
    if sent is not None:
        s["out"] = {"bytes": sent, "rtx_bytes": 0, "width": 640, "height": 360, "limit": limit}
    return s


def test_counter_delta_restarts_from_zero_when_a_stream_is_replaced() -> None:
    assert counter_delta([10, 20, 30]) == 20
    assert counter_delta([10, 20, 5, 8]) == 10 + 5 + 3  # 20 -> 5: a new stream counted 5 so far


def test_freeze_threshold_is_three_frame_intervals_or_150_ms() -> None:
    assert freeze_threshold_s(30) == 0.150
    assert freeze_threshold_s(10) == pytest.approx(0.3)
    assert freeze_threshold_s(0) == 0.150


def test_steady_frames_make_no_freeze_even_when_sampled_slower_than_the_threshold() -> None:
    points = [(i * 0.3, i * 9) for i in range(11)]  # 30 fps sampled every 300 ms > 150 ms threshold
    assert stalls(points, 0.0, 3.0, 0.15) == []


def test_a_stall_runs_from_the_last_progress_to_the_next_and_an_open_one_to_the_window_end() -> None:
    frames = [0, 9, 18, 18, 18, 27, 36, 36, 36, 36]
    points = [(i * 0.5, f) for i, f in enumerate(frames)]
    # progress at 1.0, none at 1.5 and 2.0, progress at 2.5: a 1.5 s gap; then none after 3.0 until 5.0
    assert stalls(points, 0.0, 5.0, 0.15) == pytest.approx([1.5, 2.0])


def test_a_window_without_any_new_frame_is_one_gap_of_its_length() -> None:
    points = [(0.0, 100), (1.0, 100), (2.0, 100)]
    assert stalls(points, 0.0, 2.0, 0.15) == [2.0]


def test_summary_of_a_window() -> None:
    # a baseline before the window, then 10 frames every 0.5 s but none at 4.5, 5.0 and 5.5 s into it
    # (a 2 s stall), 500 kbit/s of video, 48 kHz audio with 480 samples concealed per sample, 3 FEC packets; the page sent 1000 kbit/s, cpu-limited.
    samples = [sample(99.5, 0, vbytes=0, sent=0)]
    frames = 0
    for i in range(21):
        t = 100 + i * 0.5
        if not 4 < t - 100 < 6:
            frames += 10
        height = 180 if i < 5 else 360
        samples.append(sample(t, frames, height=height, vbytes=int((t - 99.5) * 62_500),
                              concealed=480 * i, played=int((t - 99.5) * 48_000), fec=3 if i > 10 else 0,
                              sent=int((t - 99.5) * 125_000), limit="cpu" if i % 2 else ""))
    fig = summarise_flow(samples, 100.0, 110.0)
    assert fig.seconds == 10.0
    assert fig.fps == pytest.approx(180 / 10.5)  # 18 advancing samples of 10 frames since the baseline
    assert fig.longest_freeze_s == pytest.approx(2.0)  # last progress at 4.0, next at 6.0
    assert fig.frozen_s == pytest.approx(2.0)
    assert fig.freezes == 1
    assert (fig.width, fig.height) == (640, 360)
    assert fig.kbps == pytest.approx(500.0)
    assert fig.rtx_kbps == pytest.approx(50.0, abs=0.01)
    assert fig.concealed_pct == pytest.approx(100 * 480 * 20 / (48_000 * 10.5))
    assert fig.fec_packets == 3
    assert fig.sent_kbps == pytest.approx(1000.0)
    assert fig.sent_height == 360
    assert fig.limit == "cpu"


def test_no_audio_played_is_no_concealment_figure() -> None:
    fig = summarise_flow([sample(0, 0), sample(1, 30)], 0.0, 1.0)
    assert fig.concealed_pct is None
    assert fig.sent_kbps is None


def test_first_frame_at_a_resolution_and_video_back_after_an_outage() -> None:
    samples = [sample(0, 0, height=0), sample(1, 10, height=180), sample(2, 20, height=270),
               sample(3, 30, height=360), sample(4, 30), sample(5, 30), sample(6, 40)]
    assert first_time(samples) == 1
    assert first_time(samples, min_height=360) == 3
    assert first_time(samples, min_height=720) is None
    assert video_back_after(samples, restored=4.5) == pytest.approx(1.5)


def test_sampler_script_names_the_connections_and_interval() -> None:
    js = sampler_script("({rx: [window.pc]})", every_ms=250)
    assert "({rx: [window.pc]})" in js
    assert "}, 250);" in js
    assert "%(" not in js
