"""The video compositor (YUV420 planes, keep-aspect fit, name tags, name cards) and the audio mixer
(resampling, mixing without clipping, levels), fed synthetic frames."""
from __future__ import annotations

import math

import av
import numpy as np
import pytest

from compositor.audio_mixer import SILENCE_DBOV, AudioMixer, level_dbov
from compositor.config import Participant
from compositor.layout import fit_rect, layout_compute
from compositor.nametag import BLACK_Y, card_color, rgb_to_yuv
from compositor.video_mixer import LatestFrame, VideoMixer, crop_planes

pytestmark = pytest.mark.once  # pure media: the deployment mode does not matter

W, H = 1280, 720
COLORS = {1: (220, 40, 40), 2: (40, 200, 60), 3: (40, 60, 220), 4: (230, 200, 30)}


def solid(rgb: tuple[int, int, int], w: int = 640, h: int = 360) -> av.VideoFrame:
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rgb
    return av.VideoFrame.from_ndarray(img, format="rgb24")


def yuv_at(frame: av.VideoFrame, x: int, y: int) -> tuple[int, int, int]:
    a = frame.to_ndarray()  # yuv420p: Y rows, then U and V (w/2 wide, packed two rows per row)
    w, h = frame.width, frame.height
    u = a[h : h + h // 4].reshape(h // 2, w // 2)
    v = a[h + h // 4 :].reshape(h // 2, w // 2)
    return int(a[y, x]), int(u[y // 2, x // 2]), int(v[y // 2, x // 2])


def close(actual, expected, tol=4) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected))


def test_grid_of_four_shows_each_colour_in_its_tile_with_letterboxing_and_name_tags():
    stage = [Participant(uid, f"Person {uid}") for uid in COLORS]
    tiles = layout_compute("grid", stage, width=W, height=H)
    latest = {uid: LatestFrame(solid(rgb), 10.0, uid) for uid, rgb in COLORS.items()}
    latest[4] = LatestFrame(solid(COLORS[4], 640, 480), 10.0, 4)  # 4:3: pillarboxed inside its cell
    mixer = VideoMixer(width=W, height=H)
    out = mixer.compose(tiles, latest, names={p.user_id: p.name for p in stage}, now=10.5)
    assert (out.width, out.height, out.format.name) == (W, H, "yuv420p")
    for tile in tiles:
        cx, cy = tile.x + tile.w // 2, tile.y + tile.h // 3
        assert close(yuv_at(out, cx, cy), rgb_to_yuv(*COLORS[tile.user_id])), tile
        # the name tag darkens the bottom-left corner of the tile
        tag = tile.name_tag
        assert yuv_at(out, tag.x + 1, tag.y + 1)[0] < rgb_to_yuv(*COLORS[tile.user_id])[0] - 20
    four = next(t for t in tiles if t.user_id == 4)
    content = fit_rect(640, 480, four.rect)
    assert content.w < four.w  # pillarbox bars left and right
    assert close(yuv_at(out, four.x + 4, four.y + 10), (BLACK_Y, 128, 128), tol=2)
    assert close(yuv_at(out, four.x + four.w - 4, four.y + 10), (BLACK_Y, 128, 128), tol=2)
    assert close(yuv_at(out, content.x + 4, four.y + 10), rgb_to_yuv(*COLORS[4]))
    # its name tag sits on the picture, not on the bar
    margin = four.name_tag.x - four.x
    assert yuv_at(out, content.x + margin + 1, four.name_tag.y + 1)[0] < rgb_to_yuv(*COLORS[4])[0] - 20
    assert close(yuv_at(out, content.x + margin - 2, four.name_tag.y + 1), rgb_to_yuv(*COLORS[4]))
    # the gap between tiles is black
    assert close(yuv_at(out, 640, 100), (BLACK_Y, 128, 128), tol=2)


def test_missing_or_stale_video_shows_a_name_card_and_a_muted_camera_too():
    stage = [Participant(1, "Ada Lovelace"), Participant(2, "Ben Bitdiddle"), Participant(3, "Cleo")]
    tiles = {t.user_id: t for t in layout_compute("grid", stage, width=W, height=H)}
    mixer = VideoMixer(width=W, height=H, stale_after_s=2.0)
    latest = {1: LatestFrame(solid(COLORS[1]), 0.0, 1), 3: LatestFrame(solid(COLORS[3]), 9.0, 2)}
    out = mixer.compose(list(tiles.values()), latest, names={p.user_id: p.name for p in stage},
                        muted=frozenset({3}), now=10.0)
    for uid in (1, 2, 3):  # 1: stale (10 s old), 2: never sent video, 3: camera muted
        t = tiles[uid]
        assert close(yuv_at(out, t.x + 20, t.y + 20), card_color(uid), tol=2), uid
    # the initials are drawn (white) somewhere in the middle of the card
    t = tiles[2]
    middle = out.to_ndarray()[t.y + t.h // 3 : t.y + 2 * t.h // 3, t.x + t.w // 3 : t.x + 2 * t.w // 3]
    assert middle.max() > 200


def test_the_scaler_is_reused_and_an_unchanged_frame_is_not_rescaled():
    stage = [Participant(1, "A")]
    tiles = layout_compute("single", stage, width=W, height=H)
    mixer = VideoMixer(width=W, height=H)
    entry = LatestFrame(solid(COLORS[1]), 1.0, 1)
    mixer.compose(tiles, {1: entry}, names={}, now=1.0)
    scaler, scaled = mixer._scalers[1], mixer._scaled[1]
    mixer.compose(tiles, {1: entry}, names={}, now=1.1)
    assert mixer._scaled[1] is scaled  # same frame, same rect: no new scaling
    mixer.compose(tiles, {1: LatestFrame(solid(COLORS[2]), 1.2, 2)}, names={}, now=1.2)
    assert mixer._scalers[1] is scaler and mixer._scaled[1] is not scaled


def test_a_camera_just_larger_than_its_cell_is_cropped_not_rescaled():
    """640x360 in a 638x358 grid cell: the centre, pixel for pixel, and no scaler; far off sizes scale."""
    rng = np.random.default_rng(1)
    ramp = rng.integers(16, 235, (360, 640, 3), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(ramp, format="rgb24").reformat(format="yuv420p")
    stage = [Participant(i, f"P{i}") for i in (1, 2, 3, 4)]
    tiles = layout_compute("grid", stage, width=W, height=H)
    rect = fit_rect(640, 360, tiles[0].rect)
    assert (rect.w, rect.h) == (638, 358)
    planes = crop_planes(frame, rect.w, rect.h)
    y = frame.to_ndarray()[:360]
    assert planes is not None and planes[0].shape == (358, 638)
    assert np.array_equal(planes[0], y[0:358, 0:638])  # even offsets: (640-638)//4*2 = 0
    mixer = VideoMixer(width=W, height=H)
    out = mixer.compose(tiles[:1], {1: LatestFrame(frame, 1.0, 1)}, names={}, now=1.0)
    top = out.to_ndarray()[:H][rect.y : rect.y + 40, rect.x : rect.x + 600]  # above the name tag
    assert np.array_equal(top, y[:40, :600])
    assert 1 not in mixer._scalers and mixer.user_ids() == {1}  # no scaler was made, still a known input
    assert crop_planes(frame, 320, 180) is None  # half size: scaled, as before


# --- audio ---------------------------------------------------------------------------------------------------

def sine(freq: float, amp: float, *, rate: int = 48_000, n: int = 960, start: int = 0, layout: str = "mono",
         fmt: str = "s16") -> av.AudioFrame:
    t = (np.arange(n) + start) / rate
    x = amp * np.sin(2 * math.pi * freq * t)
    channels = 1 if layout == "mono" else 2
    if fmt == "s16":
        data = np.repeat((x * 32767).astype(np.int16)[None, :], channels, axis=0).T.reshape(1, -1)
    else:  # fltp
        data = np.repeat(x.astype(np.float32)[None, :], channels, axis=0)
    frame = av.AudioFrame.from_ndarray(data, format=fmt, layout=layout)
    frame.sample_rate = rate
    return frame


def run_mixer(mixer: AudioMixer, inputs: dict[int, dict], seconds: float) -> tuple[np.ndarray, list]:
    """Push 20 ms frames per input and pull 1024-sample blocks, as the program does."""
    blocks, levels = [], []
    pushed: dict[int, int] = {uid: 0 for uid in inputs}
    pulled = 0
    total = int(seconds * 48_000)
    while pulled < total:
        for uid, spec in inputs.items():
            rate = spec.get("rate", 48_000)
            while pushed[uid] / rate <= (pulled + 2048) / 48_000:
                n = rate // 50
                mixer.push(uid, sine(spec["freq"], spec["amp"], rate=rate, n=n, start=pushed[uid],
                                     layout=spec.get("layout", "mono"), fmt=spec.get("fmt", "s16")))
                pushed[uid] += n
        block = mixer.mix(1024)
        blocks.append(block.samples)
        levels.append(block.levels)
        pulled += 1024
    return np.concatenate(blocks, axis=1), levels


def test_two_loud_sines_sum_without_clipping_and_levels_are_reported():
    mixer = AudioMixer()
    out, levels = run_mixer(mixer, {1: {"freq": 440, "amp": 0.8}, 2: {"freq": 660, "amp": 0.8, "rate": 16_000}}, 1.0)
    assert out.shape[0] == 2 and out.dtype == np.float32
    assert np.max(np.abs(out)) <= 10 ** (-1 / 20) + 1e-4  # the limiter keeps 1 dB of headroom
    assert level_dbov(out[:, 24_000:]) > -12  # limited, not silenced
    # both sines are in the mix
    spectrum = np.abs(np.fft.rfft(out[0, 12_000:36_000]))
    freqs = np.fft.rfftfreq(24_000, 1 / 48_000)
    for f in (440, 660):
        assert spectrum[np.argmin(np.abs(freqs - f))] > 50 * np.median(spectrum)
    steady = levels[-1]
    assert set(steady) == {1, 2}
    expected = 20 * math.log10(0.8 / math.sqrt(2))  # a sine's RMS
    assert abs(steady[1] - expected) < 0.5 and abs(steady[2] - expected) < 0.5


def test_a_quiet_input_passes_unchanged_and_silence_is_silence():
    mixer = AudioMixer()
    out, _ = run_mixer(mixer, {1: {"freq": 1000, "amp": 0.25, "layout": "stereo", "fmt": "fltp"}}, 0.5)
    steady = out[:, 4096:]
    assert abs(np.max(np.abs(steady)) - 0.25) < 0.01  # gain 1: no limiting below the threshold
    assert mixer.gain == 1.0
    assert level_dbov(np.zeros((2, 1024), np.float32)) == SILENCE_DBOV
    assert AudioMixer().mix(1024).level_dbov == SILENCE_DBOV


def test_buffers_are_bounded_and_underruns_are_padded():
    mixer = AudioMixer(max_buffer_s=0.2, prebuffer_s=0.06)
    for i in range(50):  # 1 s pushed at once: only the newest prebuffer is kept when it overflows
        mixer.push(1, sine(440, 0.5, start=i * 960))
    assert mixer.dropped_samples > 0
    assert mixer._inputs[1].buffered <= int(0.2 * 48_000)
    blocks = [mixer.mix(1024) for _ in range(20)]
    assert 1 in blocks[0].levels
    assert all(b.samples.shape == (2, 1024) for b in blocks)
    assert blocks[-1].level_dbov == SILENCE_DBOV  # ran dry: silence, not a stall


@pytest.mark.parametrize("fmt, layout", [("s16", "mono"), ("fltp", "stereo")])
def test_format_changes_mid_stream_get_a_new_resampler(fmt, layout):
    mixer = AudioMixer(prebuffer_s=0)
    mixer.push(1, sine(440, 0.5, fmt=fmt, layout=layout))
    mixer.push(1, sine(440, 0.5, rate=16_000, n=320, fmt="s16", layout="stereo"))
    assert mixer._inputs[1].buffered > 960


def test_a_source_drained_to_the_sample_is_an_underrun_not_a_crash():
    from compositor.audio_mixer import AudioMixer

    mixer = AudioMixer(rate=48_000)
    frame = av.AudioFrame.from_ndarray(np.full((1, 2048), 1000, np.int16), format="s16", layout="mono")
    frame.sample_rate = 48_000
    frame.pts = 0
    mixer.push(1, frame)
    blocks = [mixer.mix(1024) for _ in range(6)]  # more than was pushed: the source runs dry exactly
    assert all(b.samples.shape == (2, 1024) for b in blocks)
