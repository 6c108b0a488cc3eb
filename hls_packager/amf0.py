"""AMF0 encode/decode: the subset RTMP commands and onMetaData use. Pure, bounded (depth, sizes)."""
from __future__ import annotations

import struct
from typing import Any

from .errors import ProtocolError

NUMBER, BOOLEAN, STRING, OBJECT, NULL, UNDEFINED, ECMA_ARRAY, OBJECT_END, STRICT_ARRAY, DATE, LONG_STRING = (
    0, 1, 2, 3, 5, 6, 8, 9, 10, 11, 12,
)
TYPED_OBJECT = 16
MAX_DEPTH = 16


class Undefined:
    """AMF0 'undefined' (distinct from null, which is None)."""

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED_VALUE = Undefined()


def decode_all(data: bytes) -> list[Any]:
    """Every value in `data`, in order."""
    values: list[Any] = []
    pos = 0
    while pos < len(data):
        value, pos = decode(data, pos)
        values.append(value)
    return values


def decode(data: bytes, pos: int = 0, depth: int = 0) -> tuple[Any, int]:
    if depth > MAX_DEPTH:
        raise ProtocolError("AMF0 nested too deep")
    marker = _take(data, pos, 1)[0]
    pos += 1
    if marker == NUMBER:
        return struct.unpack(">d", _take(data, pos, 8))[0], pos + 8
    if marker == BOOLEAN:
        return _take(data, pos, 1)[0] != 0, pos + 1
    if marker == STRING:
        return _string(data, pos, 2)
    if marker == LONG_STRING:
        return _string(data, pos, 4)
    if marker in (NULL, UNDEFINED):
        return (None if marker == NULL else UNDEFINED_VALUE), pos
    if marker == OBJECT:
        return _properties(data, pos, depth)
    if marker == TYPED_OBJECT:
        _, pos = _string(data, pos, 2)
        return _properties(data, pos, depth)
    if marker == ECMA_ARRAY:
        _take(data, pos, 4)  # the count is a hint only; the end marker is what ends it
        return _properties(data, pos + 4, depth)
    if marker == STRICT_ARRAY:
        (count,) = struct.unpack(">I", _take(data, pos, 4))
        pos += 4
        items = []
        for _ in range(count):  # each item takes >= 1 byte, so a lying count fails on the data's end
            item, pos = decode(data, pos, depth + 1)
            items.append(item)
        return items, pos
    if marker == DATE:
        (millis,) = struct.unpack(">d", _take(data, pos, 8))
        _take(data, pos + 8, 2)
        return millis, pos + 10
    raise ProtocolError(f"unsupported AMF0 marker {marker}")


def _take(data: bytes, pos: int, size: int) -> bytes:
    if pos + size > len(data):
        raise ProtocolError("AMF0 value truncated")
    return data[pos : pos + size]


def _string(data: bytes, pos: int, width: int) -> tuple[str, int]:
    (size,) = struct.unpack(">H" if width == 2 else ">I", _take(data, pos, width))
    pos += width
    return _take(data, pos, size).decode("utf-8", "replace"), pos + size


def _properties(data: bytes, pos: int, depth: int) -> tuple[dict[str, Any], int]:
    result: dict[str, Any] = {}
    while True:
        key, pos = _string(data, pos, 2)
        if key == "" and _take(data, pos, 1)[0] == OBJECT_END:
            return result, pos + 1
        result[key], pos = decode(data, pos, depth + 1)


def encode(*values: Any) -> bytes:
    return b"".join(_encode_one(v) for v in values)


def _encode_one(value: Any) -> bytes:
    if value is None:
        return bytes([NULL])
    if value is UNDEFINED_VALUE:
        return bytes([UNDEFINED])
    if isinstance(value, bool):
        return bytes([BOOLEAN, int(value)])
    if isinstance(value, (int, float)):
        return bytes([NUMBER]) + struct.pack(">d", float(value))
    if isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) > 0xFFFF:
            return bytes([LONG_STRING]) + struct.pack(">I", len(raw)) + raw
        return bytes([STRING]) + struct.pack(">H", len(raw)) + raw
    if isinstance(value, dict):
        body = b"".join(struct.pack(">H", len(k.encode())) + k.encode() + _encode_one(v) for k, v in value.items())
        return bytes([OBJECT]) + body + b"\x00\x00" + bytes([OBJECT_END])
    if isinstance(value, (list, tuple)):
        return bytes([STRICT_ARRAY]) + struct.pack(">I", len(value)) + b"".join(_encode_one(v) for v in value)
    raise TypeError(f"cannot encode {type(value).__name__} as AMF0")
