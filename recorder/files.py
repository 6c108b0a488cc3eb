"""File helpers for recordings: size and checksum, streamed so large files never sit in memory."""
from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def file_checksum(*, path: Path) -> tuple[int, str]:
    """(size in bytes, sha256 hex digest) of the file at `path`."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
