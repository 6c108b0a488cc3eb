"""Whether an encoded frame can start a decode, from its payload alone (no decoder, no parsing state)."""
from __future__ import annotations


def is_keyframe(codec: str, data: bytes) -> bool:
    """VP8: frame tag bit 0 clear. H.264 (Annex B): an IDR slice (NAL type 5). Audio: every frame stands alone."""
    if codec == "vp8":
        return bool(data) and not data[0] & 0x01
    if codec == "h264":
        i = 0
        while (i := data.find(b"\x00\x00\x01", i)) != -1:
            if i + 3 < len(data) and data[i + 3] & 0x1F == 5:
                return True
            i += 3
        return False
    return True
