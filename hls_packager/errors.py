"""The packager's errors; all derive from hls_packager.PackagerError."""
from __future__ import annotations

from . import PackagerError


class ProtocolError(PackagerError):
    """The peer broke RTMP/AMF/FLV framing or a limit: the connection is closed."""


class LimitError(ProtocolError):
    """The peer went over a size limit (a message, half-received bytes, what it may send before publish)."""


class UnsafeFolderError(PackagerError):
    """resolve_key returned a folder that is not a plain relative path inside output_dir."""
