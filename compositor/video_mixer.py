"""The video compositor: pastes the latest frame of each participant into YUV420 planes with numpy.

One reused scaler (`VideoReformatter`) per participant; a frame already scaled for the same rect is not
scaled again (inputs often run slower than the program). A yuv420p frame at most `CROP_MAX` larger than
its rect in each dimension (a 640x360 camera in a 638x358 grid cell) is centre-cropped instead: a
plane slice, no resampling pass, and sharper than a 0.3 % rescale. Output frames come from a ring of two reused
buffers (libx264 copies its input during `encode`), each remembering what it shows, so a tile whose
content did not change since that buffer last showed it is neither pasted nor re-tagged, and the
background is repainted only when the layout changes. Never converts through RGB."""
from __future__ import annotations

from dataclasses import dataclass, field

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from . import nametag
from .layout import Rect, Tile, fit_rect
from .nametag import BLACK_Y, NEUTRAL_C

Planes = tuple[np.ndarray, np.ndarray, np.ndarray]
CROP_MAX = 0.02  # crop rather than scale when the frame is at most 2 % larger than the rect (each side)


@dataclass
class LatestFrame:
    frame: av.VideoFrame
    received_at: float  # monotonic seconds
    seq: int  # increases with every pushed frame, so the mixer knows when to rescale


def plane_array(frame: av.VideoFrame, index: int) -> np.ndarray:
    """A view of one plane without its line padding."""
    plane = frame.planes[index]
    return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]


def fill(planes: Planes, rect: Rect, yuv: tuple[int, int, int] = (BLACK_Y, NEUTRAL_C, NEUTRAL_C)) -> None:
    y, u, v = planes
    y[rect.y : rect.y + rect.h, rect.x : rect.x + rect.w] = yuv[0]
    cx, cy, cw, ch = rect.x // 2, rect.y // 2, rect.w // 2, rect.h // 2
    u[cy : cy + ch, cx : cx + cw] = yuv[1]
    v[cy : cy + ch, cx : cx + cw] = yuv[2]


def tag_area(tile: Tile, picture: Rect) -> Rect:
    """The tile's name tag moved onto the picture (pillar/letterboxed content), with the same margins."""
    tag = tile.name_tag
    left, bottom = tag.x - tile.x, tile.y + tile.h - (tag.y + tag.h)
    return Rect(picture.x + left, max(picture.y, picture.y + picture.h - bottom - tag.h),
                min(tag.w, picture.w - 2 * left), tag.h)


@dataclass
class _Scaled:
    seq: int
    rect: Rect
    planes: Planes


@dataclass
class _Slot:
    frame: av.VideoFrame
    planes: Planes
    layout: tuple[Tile, ...] | None = None
    painted: dict[int, tuple] = field(default_factory=dict)  # user_id -> what the tile shows


class VideoMixer:
    def __init__(self, *, width: int, height: int, stale_after_s: float = 2.0) -> None:
        self.width, self.height = width, height
        self.stale_after_s = stale_after_s
        self._scalers: dict[int, VideoReformatter] = {}  # only for inputs that are rescaled, not cropped
        self._scaled: dict[int, _Scaled] = {}
        self._ring = [self._slot(), self._slot()]
        self._next = 0

    def _slot(self) -> _Slot:
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        return _Slot(frame, (plane_array(frame, 0), plane_array(frame, 1), plane_array(frame, 2)))

    def user_ids(self) -> set[int]:
        return set(self._scaled)  # everyone whose picture was prepared (scaled or cropped) at least once

    def forget(self, user_id: int) -> None:
        self._scalers.pop(user_id, None)
        self._scaled.pop(user_id, None)

    def compose(
        self,
        tiles: list[Tile],
        latest: dict[int, LatestFrame],
        *,
        names: dict[int, str],
        muted: frozenset[int] = frozenset(),
        now: float,
    ) -> av.VideoFrame:
        slot = self._ring[self._next]
        self._next = 1 - self._next
        layout = tuple(tiles)
        if slot.layout != layout:
            fill(slot.planes, Rect(0, 0, self.width, self.height))
            slot.layout, slot.painted = layout, {}
        for tile in tiles:
            self._paint(slot, tile, latest.get(tile.user_id), names.get(tile.user_id, ""),
                        tile.user_id in muted, now)
        return slot.frame

    def _paint(self, slot: _Slot, tile: Tile, entry: LatestFrame | None, name: str, muted: bool, now: float) -> None:
        fresh = entry is not None and not muted and now - entry.received_at <= self.stale_after_s
        if fresh:
            rect = fit_rect(entry.frame.width, entry.frame.height, tile.rect)
            shows: tuple = ("video", entry.seq, rect, name)
        else:
            rect = fit_rect(16, 9, tile.rect)
            shows = ("card", rect, name)
        before = slot.painted.get(tile.user_id)
        if before == shows:
            return  # this buffer already shows exactly that
        if before is not None and before[-2] != rect:
            fill(slot.planes, tile.rect)  # the picture's shape changed: repaint the bars
        if fresh:
            sy, su, sv = self._scale(entry, rect, tile.user_id)
        else:
            sy, su, sv = nametag.name_card(tile.user_id, name, rect.w, rect.h)
        y, u, v = slot.planes
        y[rect.y : rect.y + rect.h, rect.x : rect.x + rect.w] = sy
        cx, cy, cw, ch = rect.x // 2, rect.y // 2, rect.w // 2, rect.h // 2
        u[cy : cy + ch, cx : cx + cw] = su
        v[cy : cy + ch, cx : cx + cw] = sv
        area = tag_area(tile, rect)  # inside the picture, so it is repainted with it (no build-up)
        tag = nametag.name_tag(name, area.h, area.w) if area.h <= rect.h else None
        if tag is not None:
            tag.blend(y, u, v, area.x, area.y)
        slot.painted[tile.user_id] = shows

    def _scale(self, entry: LatestFrame, rect: Rect, user_id: int) -> Planes:
        cached = self._scaled.get(user_id)
        if cached is not None and cached.seq == entry.seq and cached.rect == rect:
            return cached.planes
        planes = crop_planes(entry.frame, rect.w, rect.h)
        if planes is None:
            scaler = self._scalers.get(user_id)
            if scaler is None:
                scaler = self._scalers[user_id] = VideoReformatter()
            scaled = scaler.reformat(entry.frame, width=rect.w, height=rect.h, format="yuv420p")
            planes = (plane_array(scaled, 0), plane_array(scaled, 1), plane_array(scaled, 2))
        self._scaled[user_id] = _Scaled(entry.seq, rect, planes)
        return planes


def crop_planes(frame: av.VideoFrame, w: int, h: int) -> Planes | None:
    """Views of a yuv420p frame's planes centre-cropped to w x h (even offsets, so chroma stays aligned),
    or None when the frame is not yuv420p or not within CROP_MAX above w x h (then it is scaled)."""
    fw, fh = frame.width, frame.height
    if frame.format.name != "yuv420p" or not (w <= fw <= w * (1 + CROP_MAX) and h <= fh <= h * (1 + CROP_MAX)):
        return None
    x0, y0 = (fw - w) // 4 * 2, (fh - h) // 4 * 2
    y, u, v = plane_array(frame, 0), plane_array(frame, 1), plane_array(frame, 2)
    return (y[y0 : y0 + h, x0 : x0 + w], u[y0 // 2 : (y0 + h) // 2, x0 // 2 : (x0 + w) // 2],
            v[y0 // 2 : (y0 + h) // 2, x0 // 2 : (x0 + w) // 2])
