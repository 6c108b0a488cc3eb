"""Golden tests for the pure parts of the compositor: layout geometry and active speaker detection."""
from __future__ import annotations

import pytest

from compositor.config import ConfigError, Participant
from compositor.layout import Rect, fit_rect, grid_dims, layout_compute
from compositor.speaker import ActiveSpeakerDetector

pytestmark = pytest.mark.once  # pure media: the deployment mode does not matter

W, H = 1280, 720


def stage(n: int) -> list[Participant]:
    return [Participant(i, f"User {i}", "instructor" if i == 1 else "student") for i in range(1, n + 1)]


def boxes(tiles) -> list[tuple[int, int, int, int, int]]:
    return [(t.user_id, t.x, t.y, t.w, t.h) for t in tiles]


@pytest.mark.parametrize(
    "n, dims", [(1, (1, 1)), (2, (2, 1)), (3, (2, 2)), (4, (2, 2)), (5, (3, 2)), (6, (3, 2)), (7, (3, 3)),
                (9, (3, 3)), (10, (4, 3)), (12, (4, 3)), (13, (4, 4)), (16, (4, 4))],
)
def test_grid_dims(n, dims):
    assert grid_dims(n) == dims


GRID_GOLDEN = {
    1: [(1, 0, 0, 1280, 720)],
    2: [(1, 0, 180, 638, 358), (2, 642, 180, 638, 358)],  # one row, letterboxed top and bottom
    3: [(1, 0, 0, 638, 358), (2, 642, 0, 638, 358), (3, 320, 362, 638, 358)],  # short last row centred
    4: [(1, 0, 0, 638, 358), (2, 642, 0, 638, 358), (3, 0, 362, 638, 358), (4, 642, 362, 638, 358)],
    5: [(1, 0, 120, 424, 238), (2, 428, 120, 424, 238), (3, 856, 120, 424, 238),
        (4, 214, 362, 424, 238), (5, 642, 362, 424, 238)],
    9: [(1, 8, 2, 418, 236), (2, 430, 2, 418, 236), (3, 852, 2, 418, 236),
        (4, 8, 242, 418, 236), (5, 430, 242, 418, 236), (6, 852, 242, 418, 236),
        (7, 8, 482, 418, 236), (8, 430, 482, 418, 236), (9, 852, 482, 418, 236)],
}


@pytest.mark.parametrize("n", sorted(GRID_GOLDEN))
def test_grid_golden(n):
    assert boxes(layout_compute("grid", stage(n), width=W, height=H)) == GRID_GOLDEN[n]


@pytest.mark.parametrize("n", range(1, 21))
def test_grid_invariants(n):
    tiles = layout_compute("grid", stage(n), width=W, height=H)
    assert len(tiles) == min(n, 16)
    for t in tiles:
        assert all(v % 2 == 0 for v in (t.x, t.y, t.w, t.h)), t  # YUV420
        assert 0 <= t.x and t.x + t.w <= W and 0 <= t.y and t.y + t.h <= H
        assert abs(t.w / t.h - 16 / 9) < 0.02  # 16:9 cells to the pixel
        tag = t.name_tag
        assert t.x <= tag.x and tag.x + tag.w <= t.x + t.w and t.y <= tag.y and tag.y + tag.h <= t.y + t.h
        assert all(v % 2 == 0 for v in (tag.x, tag.y, tag.w, tag.h))
    for a in tiles:  # no overlaps
        for b in tiles:
            if a is not b:
                assert a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or b.y + b.h <= a.y


def test_grid_beyond_16_keeps_the_active_speaker_visible():
    tiles = layout_compute("grid", stage(20), width=W, height=H, active_speaker_id=19)
    assert [t.user_id for t in tiles] == list(range(1, 16)) + [19]
    assert boxes(tiles)[:2] == [(1, 10, 2, 312, 176), (2, 326, 2, 312, 176)]


def test_speaker_layout_golden():
    tiles = layout_compute("speaker", stage(4), width=W, height=H, active_speaker_id=3)
    assert boxes(tiles) == [
        (3, 132, 0, 1016, 572),  # the active speaker, large, on top
        (1, 252, 576, 256, 144), (2, 512, 576, 256, 144), (4, 772, 576, 256, 144),  # the strip, centred
    ]
    assert tiles[0].name_tag == Rect(140, 524, 1000, 40)
    assert tiles[1].name_tag == Rect(254, 704, 252, 14)


def test_speaker_layout_picks_focus_then_speaker_then_instructor_and_caps_the_strip():
    ps = stage(8)
    assert layout_compute("speaker", ps, width=W, height=H, focus_user_id=5, active_speaker_id=3)[0].user_id == 5
    assert layout_compute("speaker", ps, width=W, height=H, active_speaker_id=99)[0].user_id == 1
    tiles = layout_compute("speaker", ps, width=W, height=H)
    assert [t.user_id for t in tiles] == [1, 2, 3, 4, 5]  # 4 thumbnails fit in 1280 px
    assert boxes(layout_compute("speaker", ps[:1], width=W, height=H)) == [(1, 0, 0, 1280, 720)]


def test_single_layout():
    students_first = [Participant(7, "S"), Participant(3, "Teacher", "instructor")]
    assert boxes(layout_compute("single", students_first, width=W, height=H)) == [(3, 0, 0, 1280, 720)]
    assert boxes(layout_compute("single", students_first, width=W, height=H, focus_user_id=7)) == [(7, 0, 0, 1280, 720)]
    assert boxes(layout_compute("single", [Participant(7, "S")], width=W, height=H, focus_user_id=1)) == [(7, 0, 0, 1280, 720)]
    # a 4:3 canvas gets a letterboxed 16:9 cell
    assert boxes(layout_compute("single", stage(1), width=640, height=480)) == [(1, 0, 60, 640, 360)]


def test_layout_edge_cases():
    assert layout_compute("grid", [], width=W, height=H) == []
    with pytest.raises(ConfigError):
        layout_compute("mosaic", stage(2), width=W, height=H)
    dup = [Participant(1, "A"), Participant(1, "A again"), Participant(2, "B")]
    assert [t.user_id for t in layout_compute("grid", dup, width=W, height=H)] == [1, 2]


def test_fit_rect_keeps_aspect_and_letterboxes():
    cell = Rect(0, 0, 638, 358)
    assert fit_rect(640, 480, cell) == Rect(80, 0, 478, 358)  # 4:3 pillarboxed
    assert fit_rect(1280, 720, Rect(642, 0, 638, 358)) == Rect(642, 0, 638, 358)  # 16:9 fills the cell
    assert fit_rect(360, 640, Rect(0, 0, 1280, 720)) == Rect(436, 0, 406, 720)  # portrait phone
    assert fit_rect(1920, 800, Rect(0, 0, 1280, 720)) == Rect(0, 92, 1280, 534)  # cinema letterboxed


# --- active speaker ------------------------------------------------------------------------------------------

def feed(detector: ActiveSpeakerDetector, script, *, until: float, step: float = 0.02) -> list[tuple[float, int | None]]:
    """script(t) -> {user_id: level}; returns (t, active) at each change."""
    changes: list[tuple[float, int | None]] = []
    last = None
    for i in range(int(until / step) + 1):
        t = round(i * step, 3)
        for uid, level in script(t).items():
            detector.observe(uid, level, t)
        if detector.active_speaker_id != last:
            last = detector.active_speaker_id
            changes.append((t, last))
    return changes


def test_first_speaker_is_active_at_once_and_silence_keeps_them():
    d = ActiveSpeakerDetector()
    changes = feed(d, lambda t: {1: -20.0 if 0.5 <= t < 2 else -90.0, 2: -90.0}, until=6)
    assert changes == [(0.5, 1)]


def test_switch_needs_a_louder_candidate_for_1_5_s():
    d = ActiveSpeakerDetector()
    # 1 talks throughout; 2 talks louder from t=3
    changes = feed(d, lambda t: {1: -25.0, 2: -15.0 if t >= 3 else -90.0}, until=6)
    assert changes == [(0.0, 1), (4.5, 2)]


def test_short_interjections_do_not_switch():
    d = ActiveSpeakerDetector()
    # 2 interjects (7 dB louder) for 1 s at t=2 and again for 1.2 s at t=4: with the meter's release
    # (30 dB/s) that is louder for 1.2 s and 1.4 s, never 1.5 s in a row
    def script(t):
        loud = 2.0 <= t < 3.0 or 4.0 <= t < 5.2
        return {1: -25.0, 2: -18.0 if loud else -90.0}
    assert feed(d, script, until=8) == [(0.0, 1)]


def test_pauses_between_words_do_not_reset_the_candidate():
    d = ActiveSpeakerDetector()
    # 1 went quiet; 2 talks in 200 ms bursts with 100 ms pauses from t=1: held level bridges the pauses
    def script(t):
        return {1: -30.0 if t < 1 else -90.0, 2: -20.0 if t >= 1 and (t - 1) % 0.3 < 0.2 else -90.0}
    changes = feed(d, script, until=4)
    assert changes[0] == (0.0, 1)
    assert changes[1][1] == 2 and 2.5 <= changes[1][0] <= 2.6


def test_forget_drops_a_participant_who_left():
    d = ActiveSpeakerDetector()
    d.observe(1, -20, 0.0)
    assert d.active_speaker_id == 1
    d.forget(1)
    assert d.active_speaker_id is None
    d.observe(2, -30, 0.1)
    assert d.active_speaker_id == 2


def test_config_validation():
    from compositor.config import Destination, ProgramConfig
    assert ProgramConfig().keyint_frames == 60
    assert ProgramConfig(fps=25, keyint_s=1.0).keyint_frames == 25
    for bad in ({"width": 1281}, {"fps": 0}, {"layout": "mosaic"}, {"keyint_s": 0}):
        with pytest.raises(ConfigError):
            ProgramConfig(**bad)
    assert Destination(id="yt", url="rtmp://a.example/live/k").is_rtmp
    assert Destination(id="f", url="file:///tmp/x.flv").path == "/tmp/x.flv"
    with pytest.raises(ConfigError):
        Destination(id="x", url="http://example.com/ingest")
