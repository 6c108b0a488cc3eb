"""Settings of the packager, built by the caller (the Django side builds it from its settings)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .ladder import LadderError, Rendition


@dataclass(frozen=True)
class PackagerConfig:
    host: str = "127.0.0.1"
    port: int = 1935  # 0: the OS picks a free port (IngestServer.port tells which)
    output_dir: Path = Path("var/hls")
    segment_duration_s: float = 2.0  # a segment is cut at the first keyframe at or after this
    live_window: int = 6  # segments in the sliding live playlist
    # Low-latency HLS: partial segments of at most this long (EXT-X-PART-INF PART-TARGET); 0 = plain HLS.
    part_target_s: float = 0.334
    max_publishers: int = 64  # publishers with an accepted key at once: the only global limit on them
    # Limits that keep one bad client from hurting the others.
    max_message_bytes: int = 8 * 1024 * 1024  # one RTMP message (a keyframe at a high bitrate is < 1 MiB)
    handshake_timeout_s: float = 10.0  # accept -> publish accepted (handshake, connect, publish), else closed
    idle_timeout_s: float = 30.0  # no bytes from a publisher for this long: it is gone
    # Connections without an accepted publish yet ("pending") live in a small pool of their own, as in
    # nginx-rtmp/SRS/MediaMTX, so sockets that never publish cannot crowd out a publisher with a valid
    # key. A full pool closes its oldest member to make room (an idle socket is old; a real publisher
    # is through in a few round trips); so does an address at its own pending limit.
    max_pending: int = 32
    max_pending_per_ip: int = 4  # IPv6: per /64
    max_connections_per_ip: int = 0  # pending + publishing from one address; 0 = no limit
    # Before publish a client only sends a handshake (3073 bytes) and a few small commands: it may make
    # the server hold no more than this (message length, half-received bytes, all bytes read, answers
    # it does not read). After an accepted publish the limits above apply.
    pre_auth_max_message_bytes: int = 4 * 1024
    pre_auth_max_bytes: int = 16 * 1024
    pipe_high_water_bytes: int = 4 * 1024 * 1024  # FLV bytes queued for the segmenter before reading pauses
    # The quality ladder `<key>~<name>` publishers feed (top first); empty: only plain `<key>` publishes.
    ladder: tuple[Rendition, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        if self.segment_duration_s <= 0 or self.live_window < 1 or self.max_publishers < 1:
            raise ValueError("segment_duration_s > 0, live_window >= 1 and max_publishers >= 1 are required")
        if not 0 <= self.part_target_s <= self.segment_duration_s:
            raise ValueError("part_target_s must be between 0 (no parts) and the segment duration")
        if self.max_pending < 1 or self.max_pending_per_ip < 1 or self.max_connections_per_ip < 0:
            raise ValueError("max_pending >= 1, max_pending_per_ip >= 1 and max_connections_per_ip >= 0 are required")
        if not 0 < self.pre_auth_max_message_bytes <= self.pre_auth_max_bytes:
            raise ValueError("0 < pre_auth_max_message_bytes <= pre_auth_max_bytes is required")
        if len({r.name for r in self.ladder}) != len(self.ladder):
            raise LadderError("rendition names in a ladder must differ")
        if self.pre_auth_max_bytes < 4096 or self.handshake_timeout_s <= 0:
            raise ValueError("pre_auth_max_bytes must hold the handshake (>= 4096) and handshake_timeout_s > 0")
