"""Layouts as pure geometry: where each stage member's tile goes on the program canvas.

Every coordinate and size is even (YUV420 chroma is subsampled 2x2). Cells are 16:9; a video whose
aspect differs is fitted inside its cell (`fit_rect`) and letterboxed.

* grid: cols = ceil(sqrt(n)), rows = ceil(n / cols): 1, 2x1, 2x2, 3x2, 3x3, 4x3, 4x4. A short last
  row is centred. At most 16 tiles; beyond that the first 16 in stage order are shown, with the active
  speaker (if hidden) taking the last slot.
* speaker: the focused participant (else the active speaker, else the instructor, else the first) in a
  large 16:9 cell at the top, the others in a bottom strip of 1/5 of the height, as many as fit.
* single: the focused participant (else the instructor, else the first) alone, full canvas.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .config import LAYOUTS, ConfigError, Participant

MAX_GRID_TILES = 16
GAP = 4  # pixels between cells; none at the canvas edges


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class Tile:
    user_id: int
    x: int
    y: int
    w: int
    h: int
    name_tag: Rect  # the area a name tag may use (bottom-left of the cell); the tag is as wide as its text

    @property
    def rect(self) -> Rect:
        return Rect(self.x, self.y, self.w, self.h)


def _even(v: float) -> int:
    return int(v) // 2 * 2


def fit_16x9(w: int, h: int) -> tuple[int, int]:
    """The largest even 16:9 size inside w x h."""
    cw, ch = _even(w), _even(w * 9 / 16)
    if ch > h:
        ch = _even(h)
        cw = _even(ch * 16 / 9)
    return cw, ch


def fit_rect(src_w: int, src_h: int, box: Rect) -> Rect:
    """A src_w x src_h picture scaled to fit inside box, aspect kept, centred, even."""
    if src_w <= 0 or src_h <= 0:
        return box
    scale = min(box.w / src_w, box.h / src_h)
    w = max(2, min(box.w, _even(src_w * scale + 1)))  # +1: round, not floor, before making even
    h = max(2, min(box.h, _even(src_h * scale + 1)))
    # cells are 16:9 only to the nearest even pixel: fill them rather than leave 2-4 px slivers
    w = box.w if box.w - w <= 4 else w
    h = box.h if box.h - h <= 4 else h
    return Rect(box.x + _even((box.w - w) / 2), box.y + _even((box.h - h) / 2), w, h)


def name_tag_rect(x: int, y: int, w: int, h: int) -> Rect:
    tag_h = min(40, max(14, _even(h * 0.09)))
    margin = max(2, _even(h / 60))
    return Rect(x + margin, y + h - margin - tag_h, max(2, w - 2 * margin), tag_h)


def _tile(user_id: int, x: int, y: int, w: int, h: int) -> Tile:
    return Tile(user_id, x, y, w, h, name_tag_rect(x, y, w, h))


def grid_dims(n: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n))
    return cols, math.ceil(n / cols)


def _grid(ids: list[int], width: int, height: int, active_speaker_id: int | None) -> list[Tile]:
    if len(ids) > MAX_GRID_TILES:
        shown = ids[:MAX_GRID_TILES]
        if active_speaker_id in ids and active_speaker_id not in shown:
            shown[-1] = active_speaker_id
        ids = shown
    n = len(ids)
    cols, rows = grid_dims(n)
    cell_w, cell_h = fit_16x9((width - (cols - 1) * GAP) / cols, (height - (rows - 1) * GAP) / rows)
    grid_h = rows * cell_h + (rows - 1) * GAP
    y0 = _even((height - grid_h) / 2)
    tiles = []
    for i, uid in enumerate(ids):
        row, col = divmod(i, cols)
        in_row = min(cols, n - row * cols)
        row_w = in_row * cell_w + (in_row - 1) * GAP
        x0 = _even((width - row_w) / 2)
        tiles.append(_tile(uid, x0 + col * (cell_w + GAP), y0 + row * (cell_h + GAP), cell_w, cell_h))
    return tiles


def _single(uid: int, width: int, height: int) -> list[Tile]:
    w, h = fit_16x9(width, height)
    return [_tile(uid, _even((width - w) / 2), _even((height - h) / 2), w, h)]


def _speaker(main: int, others: list[int], width: int, height: int) -> list[Tile]:
    if not others:
        return _single(main, width, height)
    thumb_h = _even(height / 5)
    thumb_w = _even(thumb_h * 16 / 9)
    fits = max(1, (width + GAP) // (thumb_w + GAP))
    others = others[:fits]
    main_w, main_h = fit_16x9(width, height - thumb_h - GAP)
    tiles = [_tile(main, _even((width - main_w) / 2), 0, main_w, main_h)]
    strip_w = len(others) * thumb_w + (len(others) - 1) * GAP
    x0 = _even((width - strip_w) / 2)
    y = height - thumb_h
    tiles += [_tile(uid, x0 + i * (thumb_w + GAP), y, thumb_w, thumb_h) for i, uid in enumerate(others)]
    return tiles


def pick_main(
    participants: Sequence[Participant], *, focus_user_id: int | None, active_speaker_id: int | None
) -> int:
    ids = [p.user_id for p in participants]
    for candidate in (focus_user_id, active_speaker_id):
        if candidate is not None and candidate in ids:
            return candidate
    instructor = next((p.user_id for p in participants if p.role == "instructor"), None)
    return instructor if instructor is not None else ids[0]


def layout_compute(
    kind: str,
    participants: Sequence[Participant],
    *,
    width: int,
    height: int,
    focus_user_id: int | None = None,
    active_speaker_id: int | None = None,
) -> list[Tile]:
    if kind not in LAYOUTS:
        raise ConfigError(f"unknown layout {kind!r} (one of {', '.join(LAYOUTS)})")
    if width % 2 or height % 2:
        raise ConfigError("canvas size must be even")
    if not participants:
        return []
    ids = list(dict.fromkeys(p.user_id for p in participants))  # stage order, no duplicates
    if kind == "grid":
        return _grid(ids, width, height, active_speaker_id)
    if kind == "single":
        return _single(pick_main(participants, focus_user_id=focus_user_id, active_speaker_id=None), width, height)
    main = pick_main(participants, focus_user_id=focus_user_id, active_speaker_id=active_speaker_id)
    return _speaker(main, [uid for uid in ids if uid != main], width, height)
