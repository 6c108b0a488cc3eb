"""Settings of the packager, built by the caller (the Django side builds it from its settings)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PackagerConfig:
    host: str = "127.0.0.1"
    port: int = 1935  # 0: the OS picks a free port (IngestServer.port tells which)
    output_dir: Path = Path("var/hls")
    segment_duration_s: float = 2.0  # a segment is cut at the first keyframe at or after this
    live_window: int = 6  # segments in the sliding live playlist
    # Low-latency HLS: partial segments of at most this long (EXT-X-PART-INF PART-TARGET); 0 = plain HLS.
    part_target_s: float = 0.334
    max_publishers: int = 64
    # Limits that keep one bad client from hurting the others.
    max_message_bytes: int = 8 * 1024 * 1024  # one RTMP message (a keyframe at a high bitrate is < 1 MiB)
    handshake_timeout_s: float = 10.0  # connect -> publish accepted
    idle_timeout_s: float = 30.0  # no bytes from a publisher for this long: it is gone
    max_connections: int = 0  # 0: 2 * max_publishers + 16 (connections not yet publishing count too)
    pipe_high_water_bytes: int = 4 * 1024 * 1024  # FLV bytes queued for the segmenter before reading pauses

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        if self.segment_duration_s <= 0 or self.live_window < 1 or self.max_publishers < 1:
            raise ValueError("segment_duration_s > 0, live_window >= 1 and max_publishers >= 1 are required")
        if not 0 <= self.part_target_s <= self.segment_duration_s:
            raise ValueError("part_target_s must be between 0 (no parts) and the segment duration")

    @property
    def connection_limit(self) -> int:
        return self.max_connections or 2 * self.max_publishers + 16
