"""The HLS packager: pure media (no Django). RTMP ingest (compositor, OBS, ffmpeg) -> HLS segments
and playlists on disk, served by the app, nginx or a CDN."""


class PackagerError(Exception):
    """Base for everything the packager refuses or fails at."""
