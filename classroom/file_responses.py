"""Serving recording files: a single HTTP byte range (players seek with them), file names checked
before anything touches the disk."""
from __future__ import annotations

import mimetypes
import re
from pathlib import Path
from typing import BinaryIO, Iterator

from django.http import FileResponse, HttpRequest, HttpResponse, StreamingHttpResponse

CHUNK = 256 * 1024
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_TYPES = {
    ".webm": "video/webm", ".mkv": "video/x-matroska", ".mp4": "video/mp4", ".json": "application/json",
    ".jpg": "image/jpeg", ".m3u8": "application/vnd.apple.mpegurl", ".ts": "video/mp2t",
}


def safe_relative_name(name: str) -> bool:
    """A plain relative path of plain parts: no `..`, no absolute path, no backslash, no (still)
    percent-encoded bytes, no control characters. Django has already decoded the URL once."""
    if not name or len(name) > 200 or name.startswith("/") or "\\" in name or "%" in name or ":" in name:
        return False
    if any(ord(c) < 32 for c in name):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def content_type(name: str) -> str:
    return _TYPES.get(Path(name).suffix.lower()) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def byte_range(header: str, size: int) -> tuple[int, int] | None | bool:
    """(first, last) of one `Range: bytes=` range; None without one; False if unsatisfiable."""
    match = _RANGE.match(header.strip()) if header else None
    if match is None:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return False
    if first == "":  # the last N bytes
        length = int(last)
        if length == 0:
            return False
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return False
    return start, end


def _chunks(handle: BinaryIO, start: int, length: int) -> Iterator[bytes]:
    try:
        handle.seek(start)
        while length > 0:
            data = handle.read(min(CHUNK, length))
            if not data:
                break
            length -= len(data)
            yield data
    finally:
        handle.close()


def ranged_file_response(request: HttpRequest, handle: BinaryIO, *, size: int, name: str, attachment: bool) -> HttpResponse:
    wanted = byte_range(request.headers.get("Range", ""), size)
    if wanted is False:
        handle.close()
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{size}"
        return response
    if wanted is None:
        response: HttpResponse = FileResponse(handle, as_attachment=attachment, filename=Path(name).name,
                                              content_type=content_type(name))
    else:
        start, end = wanted
        response = StreamingHttpResponse(_chunks(handle, start, end - start + 1), status=206, content_type=content_type(name))
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
        response["Content-Length"] = str(end - start + 1)
        if attachment:
            response["Content-Disposition"] = f'attachment; filename="{Path(name).name}"'
    response["Accept-Ranges"] = "bytes"
    response["Cache-Control"] = "private, max-age=300"
    response["X-Content-Type-Options"] = "nosniff"
    return response
