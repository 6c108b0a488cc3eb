"""What a `Room` measures leaves through an observer, so the SFU imports no metrics library and no
Django: the media node (classroom/media_node/node.py) turns these calls into Prometheus metrics, a
bench or test can record them. Every method is a no-op here; override what you need."""
from __future__ import annotations

from .quality import PeerQuality


class RoomObserver:
    def call_setup(self, *, result: str) -> None:
        """A join ended its setup: success, failure, timeout or abandoned (left before connecting)."""

    def joined(self, *, seconds: float) -> None:
        """A join request became a connected peer connection after `seconds`."""

    def rtt(self, *, seconds: float) -> None:
        """Round-trip time to one peer, from its RTCP receiver reports."""

    def jitter(self, *, kind: str, seconds: float) -> None:
        """Interarrival jitter of one received stream of `kind` (audio, video)."""

    def loss(self, *, kind: str, ratio: float) -> None:
        """Share of one received stream's packets lost since the last collection."""

    def bitrate(self, *, direction: str, bps: float) -> None:
        """One peer's bits per second, inbound (to the node) or outbound (from it)."""

    def inbound_fps(self, *, fps: float) -> None:
        """Frames per second of one publisher's video as it reaches the node."""

    def peer_quality(self, *, session_id: int, quality: PeerQuality) -> None:
        """One participant's two legs (sfu/quality.py), at every collection while they are connected."""

    def peer_left(self, *, session_id: int, peer_id: str) -> None:
        """A participant's connections are gone: forget what was kept per participant."""

    def layer(self, *, session_id: int, subscriber: str, publisher: str, layer: str | None, height: int) -> None:
        """The video layer `subscriber` now gets of `publisher` (its nominal height); `layer` None: it no
        longer gets any (left, or the publisher did)."""
