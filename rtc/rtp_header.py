"""Reading RTP headers as bytes (RFC 3550, RFC 8285 one-byte extension elements): what the pacer and
the transport-wide feedback need from a packet without parsing all of it."""
from __future__ import annotations

import struct

ONE_BYTE_PROFILE = 0xBEDE


def payload_offset(data: bytes) -> int | None:
    """Where an RTP packet's payload starts (after CSRCs and the header extension), or None if short."""
    if len(data) < 12:
        return None
    offset = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        if len(data) < offset + 4:
            return None
        (words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * words
    return offset if offset <= len(data) else None


def extension_span(data: bytes, ext_id: int) -> tuple[int, int] | None:
    """(start, length) of a one-byte-header extension element's value in the packet, or None."""
    if len(data) < 16 or not data[0] & 0x10:
        return None
    start = 12 + 4 * (data[0] & 0x0F)
    if len(data) < start + 4:
        return None
    profile, words = struct.unpack_from("!HH", data, start)
    if profile != ONE_BYTE_PROFILE:
        return None
    pos, end = start + 4, min(len(data), start + 4 + 4 * words)
    while pos < end:
        byte = data[pos]
        if byte == 0:  # padding
            pos += 1
            continue
        ident, length = byte >> 4, (byte & 0x0F) + 1
        if ident == 15:
            return None
        if ident == ext_id:
            return (pos + 1, length) if pos + 1 + length <= end else None
        pos += 1 + length
    return None
