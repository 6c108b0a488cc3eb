"""FLV framing of RTMP media messages (RTMP audio/video/data payloads are FLV tag bodies). Pure."""
from __future__ import annotations

import struct

TAG_AUDIO, TAG_VIDEO, TAG_SCRIPT = 8, 9, 18
FILE_HEADER = b"FLV\x01\x05\x00\x00\x00\x09" + b"\x00\x00\x00\x00"  # audio+video flags, PreviousTagSize0
SET_DATA_FRAME = b"\x02\x00\x0d@setDataFrame"  # AMF0 string "@setDataFrame"

VIDEO_CODECS = {2: "h263", 3: "screen", 4: "vp6", 5: "vp6a", 6: "screen2", 7: "h264", 12: "hevc", 13: "av1"}
ENHANCED_VIDEO_CODECS = {b"avc1": "h264", b"hvc1": "hevc", b"av01": "av1", b"vp09": "vp9"}
AUDIO_CODECS = {0: "pcm", 1: "adpcm", 2: "mp3", 3: "pcm_le", 7: "alaw", 8: "ulaw", 10: "aac", 11: "speex", 14: "mp3"}


def tag(tag_type: int, timestamp_ms: int, body: bytes) -> bytes:
    """One FLV tag plus its PreviousTagSize."""
    if tag_type == TAG_SCRIPT and body.startswith(SET_DATA_FRAME):
        body = body[len(SET_DATA_FRAME) :]  # RTMP's "@setDataFrame" wrapper; files carry "onMetaData" first
    ts = timestamp_ms & 0xFFFFFFFF
    header = bytes([tag_type]) + len(body).to_bytes(3, "big") + (ts & 0xFFFFFF).to_bytes(3, "big")
    header += bytes([ts >> 24]) + b"\x00\x00\x00"
    return header + body + struct.pack(">I", 11 + len(body))


def video_codec(body: bytes) -> str | None:
    if not body:
        return None
    if body[0] & 0x80 and len(body) >= 5:  # enhanced RTMP: a FourCC follows the first byte
        return ENHANCED_VIDEO_CODECS.get(bytes(body[1:5]), body[1:5].decode("latin-1"))
    return VIDEO_CODECS.get(body[0] & 0x0F, f"flv-video-{body[0] & 0x0F}")


def audio_codec(body: bytes) -> str | None:
    if not body:
        return None
    return AUDIO_CODECS.get(body[0] >> 4, f"flv-audio-{body[0] >> 4}")


def is_video_keyframe(body: bytes) -> bool:
    return bool(body) and (body[0] >> 4) & 0x07 == 1
