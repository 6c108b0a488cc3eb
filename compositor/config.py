"""Frozen configuration the classroom app's services build from settings: the program's format, its
destinations, and who is on stage. No I/O here."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from . import CompositorError

LAYOUTS = ("grid", "speaker", "single")


class ConfigError(CompositorError):
    """A configuration value the compositor cannot run with."""


@dataclass(frozen=True)
class RenditionConfig:
    """A lower rung of the HLS quality ladder: the composed program scaled to `width`x`height` and
    encoded once more (same frame rate, same keyframe ticks). `width == 0`: audio only. Its audio is the
    program's AAC, or with `audio_bitrate` an AAC of its own (of the same mix): a low rung for a weak link
    cannot carry 128 kbit/s of audio."""

    name: str
    width: int = 0
    height: int = 0
    video_bitrate: int = 0
    h264_level: str = ""  # "" lets x264 choose; the ladder's CODECS attribute names the level it sets
    audio_bitrate: int = 0  # 0: the program's AAC

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a rendition needs a name")
        if self.audio_bitrate < 0:
            raise ConfigError(f"rendition {self.name!r}: audio bitrate must not be negative")
        if self.audio_only:
            return
        if self.width <= 0 or self.height <= 0 or self.width % 2 or self.height % 2:
            raise ConfigError(f"rendition {self.name!r}: size must be positive and even, got {self.width}x{self.height}")
        if self.video_bitrate <= 0:
            raise ConfigError(f"rendition {self.name!r}: video bitrate must be positive")

    @property
    def audio_only(self) -> bool:
        return self.width == 0 and self.height == 0


@dataclass(frozen=True)
class ProgramConfig:
    width: int = 1280
    height: int = 720
    fps: int = 30
    video_bitrate: int = 2_500_000
    audio_bitrate: int = 128_000
    keyint_s: float = 2.0  # = the HLS segment duration, so every segment starts on a keyframe
    layout: str = "grid"
    x264_preset: str = "veryfast"
    sample_rate: int = 48_000
    stale_video_s: float = 2.0  # a participant's video older than this shows their name card
    speaker_switch_s: float = 1.5
    sink_queue_packets: int = 512  # ~6 s of 30 fps video + AAC per destination
    x264_threads: int = 0  # 0 = libx264 decides
    h264_level: str = ""  # the program's H.264 level ("" = x264 decides)
    # Lower rungs of the HLS ladder, each a destination's `rendition`; the program itself is rung "".
    renditions: tuple[RenditionConfig, ...] = ()

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0 or self.width % 2 or self.height % 2:
            raise ConfigError(f"program size must be positive and even (YUV420), got {self.width}x{self.height}")
        if not 1 <= self.fps <= 120:
            raise ConfigError(f"fps must be 1..120, got {self.fps}")
        if self.keyint_s <= 0 or self.keyint_frames < 1:
            raise ConfigError(f"keyint_s must be positive, got {self.keyint_s}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"unknown layout {self.layout!r} (one of {', '.join(LAYOUTS)})")
        if self.video_bitrate <= 0 or self.audio_bitrate <= 0:
            raise ConfigError("bitrates must be positive")
        names = [r.name for r in self.renditions]
        if len(set(names)) != len(names):
            raise ConfigError(f"rendition names must differ, got {names}")

    def rendition(self, name: str) -> RenditionConfig | None:
        """The rung a destination carries: None for the program itself (""); ConfigError if unknown."""
        if not name:
            return None
        for r in self.renditions:
            if r.name == name:
                return r
        raise ConfigError(f"no rendition {name!r} in this program")

    @property
    def keyint_frames(self) -> int:
        return max(1, round(self.fps * self.keyint_s))


class AddressCheck(Protocol):
    """Whether the program may be sent to `host` at these resolved addresses: None, or the reason it may
    not, in words for the user. The caller's policy (e.g. no addresses inside its own network)."""

    def __call__(self, *, host: str, port: int, addresses: tuple[str, ...]) -> str | None: ...


@dataclass(frozen=True)
class Destination:
    """Where the program goes: `rtmp(s)://...` (FLV over RTMP) or a file path / `file://` URL (format from
    the extension unless `format` is given). `max_retries=None` retries a dropped RTMP destination forever.
    `address_check`, if given, is asked right before every RTMP connect with the addresses the host
    resolves to then (a name can resolve elsewhere than when it was added); a refusal fails the
    destination as a user error, the program and other destinations go on."""

    id: str
    url: str
    format: str | None = None
    max_retries: int | None = None
    rendition: str = ""  # which rung of the ladder it carries ("": the program)
    address_check: AddressCheck | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.id:
            raise ConfigError("a destination needs an id")
        if urlsplit(self.url).scheme not in ("rtmp", "rtmps", "file", ""):
            raise ConfigError(f"destination {self.id!r}: only rtmp(s):// URLs and files are supported")

    @property
    def is_rtmp(self) -> bool:
        return urlsplit(self.url).scheme in ("rtmp", "rtmps")

    @property
    def port(self) -> int:
        """The RTMP port FFmpeg connects to (rtmps defaults to 443, rtmp to 1935)."""
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "rtmps" else 1935)

    @property
    def path(self) -> str:
        parts = urlsplit(self.url)
        return parts.path if parts.scheme == "file" else self.url


@dataclass(frozen=True)
class Participant:
    """One stage member, in stage order. A muted camera shows the name card."""

    user_id: int
    name: str
    role: str = "student"
    video_muted: bool = False
