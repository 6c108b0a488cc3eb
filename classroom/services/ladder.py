"""The HLS quality ladder from settings (CLASSCAST_HLS_LADDER), and what the compositor, the packager and
the viewers' master playlist are each told of it. One parse, three views, so they always agree.

Grammar: a comma list of rungs, top first. `<height>p` is a video rung (width from the program's aspect,
bitrate from the table below unless `:<bitrate>` says, e.g. `360p:500k`), `audio` the AAC alone. The
first rung is the program itself (its size, frame rate and bitrate are the CLASSCAST_PROGRAM_* ones).
A lower rung may ask for an AAC bitrate of its own (`180p:120k:48k`, `audio:64k`: the same mix encoded
once more), which a rung for a weak link needs; the others share the program's AAC.
One rung means no ladder: the compositor publishes the plain stream key, as OBS does."""
from __future__ import annotations

import re
from dataclasses import dataclass

from django.conf import settings

from compositor.config import RenditionConfig
from hls_packager.ladder import AAC_LC, RENDITION_SEPARATOR, Rendition, h264_codecs, h264_level

AUDIO = "audio"
# Video bitrates by height when the setting names none (in line with common ABR ladders).
DEFAULT_VIDEO_BITRATES = {1080: 4_500_000, 720: 2_500_000, 540: 1_200_000, 480: 900_000, 360: 600_000,
                          270: 400_000, 240: 300_000, 180: 200_000, 144: 150_000}
# What MPEG-TS adds (hls_packager.segmenter.mpegts_options), measured on our segments: ~5 % on video plus,
# per frame, a PES header and the stuffing of its last 188-byte packet (~120 bytes: a quarter of a 180p
# rung's small frames); audio PES of ~0.1 s and PAT/PMT about once per part: 128 kbit/s AAC comes out at
# 150-154 kbit/s, the 180p rung (120k + 48k AAC) at 181-227 kbit/s by segment.
VIDEO_TS_OVERHEAD = 1.05
VIDEO_TS_FRAME_BYTES = 120
AUDIO_TS_EXTRA_BPS = 40_000
PEAK_OVER_AVERAGE = 1.1  # x264's VBV (maxrate = bitrate, 1 s buffer) lets a segment run a little over
_RATE = r"\d+(?:\.\d+)?[kKmM]?"
_RUNG = re.compile(rf"^(?:(?P<height>\d{{2,4}})p(?::(?P<rate>{_RATE}))?|(?P<audio>audio))(?::(?P<own_audio>{_RATE}))?$")


class LadderSettingError(ValueError):
    """CLASSCAST_HLS_LADDER cannot be used as written."""


@dataclass(frozen=True)
class Rung:
    name: str
    width: int  # 0: audio only
    height: int
    fps: int
    video_bitrate: int  # 0: audio only
    audio_bitrate: int
    own_audio: bool = False  # an AAC of its own at audio_bitrate, not the program's

    @property
    def audio_only(self) -> bool:
        return self.width == 0

    @property
    def h264_level(self) -> str:
        return "" if self.audio_only else h264_level(width=self.width, height=self.height, fps=self.fps)


def _bitrate(text: str) -> int:
    unit = text[-1].lower() if text[-1].isalpha() else ""
    return int(float(text.rstrip("kKmM")) * {"": 1, "k": 1_000, "m": 1_000_000}[unit])


def ladder_parse(
    text: str, *, width: int, height: int, fps: int, video_bitrate: int, audio_bitrate: int
) -> tuple[Rung, ...]:
    """The rungs `text` names, top (the program) first. Empty text: the program alone."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        return (Rung(f"{height}p", width, height, fps, video_bitrate, audio_bitrate),)
    rungs: list[Rung] = []
    for position, item in enumerate(items):
        match = _RUNG.match(item)
        if match is None:
            raise LadderSettingError(
                f"{item!r}: a rung is '<height>p[:<video bitrate>[:<audio bitrate>]]' or 'audio[:<audio bitrate>]'"
            )
        rate = _bitrate(match["rate"]) if match["rate"] else None
        own = _bitrate(match["own_audio"]) if match["own_audio"] else None
        if own is not None and own < 8_000:
            raise LadderSettingError(f"{item!r}: an AAC bitrate below 8k cannot be encoded")
        if position == 0 and (match["audio"] or int(match["height"]) != height or rate or own):
            raise LadderSettingError(f"the first rung is the program ({width}x{height}): write it as '{height}p'")
        if match["audio"]:
            rungs.append(Rung(AUDIO, 0, 0, fps, 0, own or audio_bitrate, own_audio=own is not None))
            continue
        h = int(match["height"])
        if position == 0:
            rungs.append(Rung(item, width, height, fps, video_bitrate, audio_bitrate))
            continue
        if not 0 < h < height:
            raise LadderSettingError(f"{item!r}: a lower rung must be smaller than the program ({height}p)")
        w = round(width * h / height / 2) * 2  # the program's aspect, even for YUV 4:2:0
        bitrate = rate or DEFAULT_VIDEO_BITRATES.get(h) or int(video_bitrate * ((w * h) / (width * height)) ** 0.75)
        rungs.append(Rung(f"{h}p", w, h - h % 2, fps, bitrate, own or audio_bitrate, own_audio=own is not None))
    names = [r.name for r in rungs]
    if len(set(names)) != len(names):
        raise LadderSettingError(f"a rung is named twice in {text!r}")
    return tuple(rungs)


def ladder_from_settings() -> tuple[Rung, ...]:
    return ladder_parse(
        settings.CLASSCAST_HLS_LADDER,
        width=settings.CLASSCAST_PROGRAM_WIDTH,
        height=settings.CLASSCAST_PROGRAM_HEIGHT,
        fps=settings.CLASSCAST_PROGRAM_FPS,
        video_bitrate=settings.CLASSCAST_PROGRAM_VIDEO_BITRATE,
        audio_bitrate=settings.CLASSCAST_PROGRAM_AUDIO_BITRATE,
    )


def ladder_renditions(rungs: tuple[Rung, ...]) -> tuple[Rendition, ...]:
    """The master playlist's view (the packager's config): declared bandwidths, resolution, CODECS."""
    out = []
    for r in rungs:
        audio = r.audio_bitrate + AUDIO_TS_EXTRA_BPS
        frames = 0 if r.audio_only else r.fps * VIDEO_TS_FRAME_BYTES * 8
        average = int(r.video_bitrate * VIDEO_TS_OVERHEAD + frames + audio)
        peak = int(r.video_bitrate * PEAK_OVER_AVERAGE * VIDEO_TS_OVERHEAD + frames + audio)
        codecs = AAC_LC if r.audio_only else h264_codecs(r.h264_level)
        out.append(Rendition(r.name, peak, average, codecs, r.width, r.height, 0.0 if r.audio_only else float(r.fps)))
    return tuple(out)


def ladder_program_renditions(rungs: tuple[Rung, ...]) -> tuple[RenditionConfig, ...]:
    """The compositor's view: the rungs below the program, which it scales and encodes once more."""
    out = []
    for r in rungs[1:]:
        own = r.audio_bitrate if r.own_audio else 0
        if r.audio_only:
            out.append(RenditionConfig(r.name, audio_bitrate=own))
        else:
            out.append(RenditionConfig(r.name, r.width, r.height, r.video_bitrate, r.h264_level, audio_bitrate=own))
    return tuple(out)


def ladder_stream_key(stream_key: str, rung: str) -> str:
    """What the compositor publishes a rung with: `<key>~<rung>` (the packager puts it in its folder)."""
    return f"{stream_key}{RENDITION_SEPARATOR}{rung}"


def ladder_cost_pixels(rungs: tuple[Rung, ...]) -> int:
    """Pixels per second all video rungs encode (x264's work, which sizes a compositor job)."""
    return sum(r.width * r.height * r.fps for r in rungs if not r.audio_only)
