"""Encode once: H.264 (libx264) and AAC, into packets every sink muxes as they are; with a quality ladder,
one more libx264 encoder per lower video rung, and one more AAC encoder (of the same mix) for a rung
that asks for its own audio bitrate; the others share the program's AAC.

The encoders live as streams of a `null` muxer container that never receives a packet: its streams,
once opened, carry the codec parameters (SPS/PPS and AudioSpecificConfig as extradata, global header)
that each sink copies with `add_stream_from_template(opaque=True)`, which opens no encoder of its own.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.codec.context import Flags

from . import CompositorError
from .config import ProgramConfig

AAC_FRAME_SAMPLES = 1024


class EncoderError(CompositorError):
    """The program's encoder failed (our fault)."""


@dataclass(frozen=True)
class EncodedPacket:
    kind: str  # "video" | "audio"
    data: bytes
    pts: int
    dts: int
    duration: int
    time_base: Fraction
    is_keyframe: bool
    rendition: str = ""  # the rung whose encoder made it ("": the program's; its AAC serves every rung without its own)

    def to_av(self, stream: av.stream.Stream) -> av.Packet:
        packet = av.Packet(self.data)
        packet.pts, packet.dts, packet.time_base = self.pts, self.dts, self.time_base
        packet.duration = self.duration
        packet.is_keyframe = self.is_keyframe
        packet.stream = stream
        return packet


def x264_options(config: ProgramConfig, *, video_bitrate: int | None = None, level: str | None = None) -> dict[str, str]:
    """The program's x264 options; a ladder rung passes its own bitrate and level and keeps the rest,
    so every rung has its keyframes on the same ticks and players switch at segment and part starts."""
    keyint = str(config.keyint_frames)
    kbps = str((video_bitrate or config.video_bitrate) // 1000)
    level = config.h264_level if level is None else level
    return {
        "preset": config.x264_preset,
        "tune": "zerolatency",
        "g": keyint,
        "keyint_min": keyint,
        "sc_threshold": "0",  # no scene-cut keyframes: segments cut on the fixed cadence only
        "forced-idr": "1",  # keyframes we force (after skipped ticks) are IDR, so a segment can start there
        "maxrate": f"{kbps}k",
        "bufsize": f"{kbps}k",  # a 1 s VBV: steady enough for RTMP and HLS segments
        "threads": str(config.x264_threads),
        **({"profile": "high", "level": level} if level else {}),  # what the master playlist's CODECS says
    }


class ProgramEncoder:
    def __init__(self, config: ProgramConfig) -> None:
        self.config = config
        self.video_time_base = Fraction(1, config.fps)
        self.audio_time_base = Fraction(1, config.sample_rate)
        self._container = av.open(os.devnull, "w", format="null")
        try:
            video = self._add_video(config.width, config.height, x264_options(config), config.video_bitrate)
            rungs = {
                r.name: self._add_video(
                    r.width, r.height, x264_options(config, video_bitrate=r.video_bitrate, level=r.h264_level), r.video_bitrate
                )
                for r in config.renditions if not r.audio_only
            }
            audio = self._add_audio(config.audio_bitrate)
            own_audio = {r.name: self._add_audio(r.audio_bitrate) for r in config.renditions if r.audio_bitrate}
            self._container.start_encoding()  # opens both encoders; their parameters land in the streams
        except (av.FFmpegError, ValueError) as exc:
            self._container.close()
            raise EncoderError(f"cannot open the program encoders: {exc}") from exc
        self.audio_templates: dict[str, av.audio.stream.AudioStream] = {"": audio, **own_audio}
        # every video encoder by rung ("": the program)
        self.video_templates: dict[str, av.video.stream.VideoStream] = {"": video, **rungs}
        self.keyframes_by_rendition = dict.fromkeys(self.video_templates, 0)

    @property
    def keyframes(self) -> int:
        return self.keyframes_by_rendition[""]

    def _add_video(self, width: int, height: int, options: dict[str, str], bit_rate: int) -> av.video.stream.VideoStream:
        video = self._container.add_stream("libx264", rate=self.config.fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.time_base = self.video_time_base
        video.codec_context.time_base = self.video_time_base
        video.codec_context.bit_rate = bit_rate
        video.codec_context.options = options
        video.codec_context.flags |= Flags.global_header  # extradata for FLV/MP4, not in-band
        return video

    def _add_audio(self, bit_rate: int) -> av.audio.stream.AudioStream:
        audio = self._container.add_stream("aac", rate=self.config.sample_rate, layout="stereo")
        audio.codec_context.bit_rate = bit_rate
        audio.codec_context.flags |= Flags.global_header
        audio.time_base = self.audio_time_base
        return audio

    def encode_video(
        self, frame: av.VideoFrame, *, pts: int, keyframe: bool = False, rendition: str = ""
    ) -> list[EncodedPacket]:
        frame.pts, frame.time_base = pts, self.video_time_base
        # set every time: the mixer reuses its frames, and a stale I would force a keyframe
        frame.pict_type = av.video.frame.PictureType.I if keyframe else av.video.frame.PictureType.NONE
        return self._wrap("video", self.video_templates[rendition].encode(frame), rendition)

    def encode_audio(self, samples: np.ndarray, *, pts: int) -> list[EncodedPacket]:
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.float32), format="fltp", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = self.config.sample_rate, pts, self.audio_time_base
        out = []
        for name, template in self.audio_templates.items():  # one mix, each AAC bitrate encoded once
            out += self._wrap("audio", template.encode(frame), name)
        return out

    def flush(self) -> list[EncodedPacket]:
        out = []
        for name, template in self.video_templates.items():
            out += self._wrap("video", template.encode(None), name)
        for name, template in self.audio_templates.items():
            out += self._wrap("audio", template.encode(None), name)
        return out

    def close(self) -> None:
        self._container.close()

    def _wrap(self, kind: str, packets: list[av.Packet], rendition: str = "") -> list[EncodedPacket]:
        out = []
        for p in packets:
            if p.size == 0:
                continue
            if kind == "video" and p.is_keyframe:
                self.keyframes_by_rendition[rendition] += 1
            out.append(EncodedPacket(kind, bytes(p), p.pts, p.dts, p.duration or 0, p.time_base, p.is_keyframe, rendition))
        return out
