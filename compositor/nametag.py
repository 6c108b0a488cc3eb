"""Text rasterised once per name with Pillow into alpha masks (cached), and the YUV colours they are
blended with. The only Pillow use in the compositor: frames never go through RGB."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BLACK_Y, WHITE_Y, NEUTRAL_C = 16, 235, 128  # limited-range BT.601 luma, neutral chroma
TAG_BOX_ALPHA = 0.6

# Name card backgrounds (RGB constants converted once to YUV; the frames themselves never are).
CARD_COLORS = ((0x3B, 0x5B, 0xA9), (0x2E, 0x8B, 0x57), (0x8E, 0x44, 0xAD), (0xC0, 0x6C, 0x1E), (0x1F, 0x7A, 0x8C), (0xA9, 0x32, 0x3B))


def rgb_to_yuv(r: int, g: int, b: int) -> tuple[int, int, int]:
    y = 16 + (65.738 * r + 129.057 * g + 25.064 * b) / 256
    u = 128 + (-37.945 * r - 74.494 * g + 112.439 * b) / 256
    v = 128 + (112.439 * r - 94.154 * g - 18.285 * b) / 256
    return round(y), round(u), round(v)


def card_color(user_id: int) -> tuple[int, int, int]:
    return rgb_to_yuv(*CARD_COLORS[user_id % len(CARD_COLORS)])


def initials(name: str) -> str:
    words = [w for w in name.replace("_", " ").split() if w]
    if not words:
        return "?"
    if len(words) == 1:
        return words[0][:2].upper()
    return (words[0][0] + words[-1][0]).upper()


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


@lru_cache(maxsize=512)
def text_mask(text: str, height: int) -> np.ndarray:
    """An alpha mask (uint8, even width) of `text` drawn to fit `height` pixels."""
    font = _font(max(6, int(height * 0.72)))
    left, top, right, bottom = font.getbbox(text)
    w = max(2, (right - left + 1) // 2 * 2 + 2)
    img = Image.new("L", (w, height), 0)
    ImageDraw.Draw(img).text((-left, (height - (bottom - top)) // 2 - top), text, fill=255, font=font)
    return np.asarray(img, dtype=np.uint8)


class Overlay:
    """A precomputed blend: plane = plane * (1 - a) + premultiplied, per plane (Y full size, U/V half)."""

    __slots__ = ("y_a", "y_p", "c_a", "c_p", "w", "h")

    def __init__(self, alpha_y: np.ndarray, value_y: np.ndarray, alpha_c: np.ndarray) -> None:
        self.h, self.w = alpha_y.shape
        self.y_a = (1.0 - alpha_y).astype(np.float32)
        self.y_p = (alpha_y * value_y).astype(np.float32)
        self.c_a = (1.0 - alpha_c).astype(np.float32)
        self.c_p = (alpha_c * NEUTRAL_C).astype(np.float32)

    def blend(self, y: np.ndarray, u: np.ndarray, v: np.ndarray, x0: int, y0: int) -> None:
        ys = y[y0 : y0 + self.h, x0 : x0 + self.w]
        ys[...] = ys * self.y_a + self.y_p
        cy, cx, ch, cw = y0 // 2, x0 // 2, self.h // 2, self.w // 2
        for plane in (u, v):
            cs = plane[cy : cy + ch, cx : cx + cw]
            cs[...] = cs * self.c_a + self.c_p


@lru_cache(maxsize=256)
def name_tag(name: str, height: int, max_width: int) -> Overlay | None:
    """A dark translucent box with the name in white, as wide as the text (clipped to max_width)."""
    if not name or height < 6 or max_width < 8:
        return None
    text = text_mask(name, height).astype(np.float32) / 255
    pad = max(2, height // 4 // 2 * 2)
    w = min(max_width // 2 * 2, text.shape[1] + 2 * pad)
    text_a = np.zeros((height, w), np.float32)
    visible = text[:, : max(0, w - 2 * pad)]
    text_a[:, pad : pad + visible.shape[1]] = visible
    alpha = 1 - (1 - TAG_BOX_ALPHA) * (1 - text_a)
    value = (BLACK_Y * TAG_BOX_ALPHA * (1 - text_a) + WHITE_Y * text_a) / alpha
    chroma_a = alpha.reshape(height // 2, 2, w // 2, 2).mean(axis=(1, 3))
    return Overlay(alpha, value, chroma_a)


@lru_cache(maxsize=128)
def name_card(user_id: int, name: str, w: int, h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Y, U, V planes of a card: the participant's colour with their initials, for a tile without video."""
    cy, cu, cv = card_color(user_id)
    y = np.full((h, w), cy, np.uint8)
    u = np.full((h // 2, w // 2), cu, np.uint8)
    v = np.full((h // 2, w // 2), cv, np.uint8)
    glyph_h = max(8, (h // 3) // 2 * 2)
    mask = text_mask(initials(name), glyph_h)[:, : w // 2 * 2]
    mh, mw = mask.shape
    x0, y0 = (w - mw) // 4 * 2, (h - mh) // 4 * 2
    a = mask.astype(np.float32) / 255
    region = y[y0 : y0 + mh, x0 : x0 + mw]
    region[...] = region * (1 - a) + WHITE_Y * a
    ca = a.reshape(mh // 2, 2, mw // 2, 2).mean(axis=(1, 3))
    for plane in (u, v):
        cs = plane[y0 // 2 : y0 // 2 + mh // 2, x0 // 2 : x0 // 2 + mw // 2]
        cs[...] = cs * (1 - ca) + NEUTRAL_C * ca
    return y, u, v
