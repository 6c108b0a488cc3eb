"""Content-Encoding for HLS playlists. A low-latency viewer reloads its rung's playlist about three times a
second (a blocking reload per part), each answer the whole playlist with the viewer's token on every URI:
4-5 kB, ~100 kbit/s, a third of a 300 kbit/s link. The tokens repeat, so gzip takes it to ~0.5 kB.

Segments and parts are left as they are (MPEG-TS does not compress). No BREACH-style leak: the only secret
a playlist carries is the token the request itself sent, beside nothing an attacker chooses.
"""
from __future__ import annotations

import gzip

GZIP_LEVEL = 6  # ~0.1 ms for a playlist; higher levels gain a few bytes
MIN_BYTES = 256  # below this the gzip header and trailer cost about what they save


def accepts_gzip(accept_encoding: str) -> bool:
    """Does an Accept-Encoding header allow gzip (named, or `*`, without q=0)?"""
    for item in accept_encoding.split(","):
        coding, *params = (piece.strip() for piece in item.split(";"))
        if coding.lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = next((p[2:] for p in params if p.lower().startswith("q=")), "1")
        try:
            return float(q) > 0
        except ValueError:
            return False
    return False


def gzip_body(body: bytes) -> bytes | None:
    """The gzip-encoded body, or None where encoding would not pay. mtime 0: the same body always
    compresses to the same bytes (caches and ETags see one version)."""
    if len(body) < MIN_BYTES:
        return None
    encoded = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
    return encoded if len(encoded) < len(body) else None
