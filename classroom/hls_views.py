"""Serving HLS: the app's own origin on the embedded default (nginx or a CDN serve the same folder in
production). Right MIME types and cache headers, CORS for outside players, and access rules: public
classes to anyone, private ones to members or to holders of a signed, expiring token.

Low-latency HLS: a playlist request with `_HLS_msn`/`_HLS_part` (a blocking reload, RFC 8216bis
6.2.5.2) and a request for the part named in the preload hint are held until the packager has written
what they ask for. The view is async: a held request is a suspended coroutine, not a thread.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import re
import stat as stat_mode
import time
from pathlib import Path

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import signing
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseForbidden
from django.views.decorators.http import require_GET

from hls_packager.playlist import BlockingRequestError, blocking_request_check, blocking_request_ready
from hls_packager.segments import PART_FILE

from . import metrics
from .hls_blocking import playlist_watch
from .models import Classroom
from .permissions import can_view_class
from .selectors import actor_get
from .services.ingest import hls_folder_path
from .services.viewers import WINDOW_S as VIEWER_WINDOW_S
from .services.viewers import viewer_seen

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}\.(m3u8|ts)$")
_SALT = "classcast.hls"
CONTENT_TYPES = {"m3u8": "application/vnd.apple.mpegurl", "ts": "video/mp2t"}
LIVE = "live.m3u8"
_URI_ATTRIBUTE = re.compile(r'URI="([^"]+)"')
ACCESS_TTL_S = 2.0  # players poll several times a second; who may watch is decided at most this often
_access_cache: dict[tuple, tuple[float, bool, Path | None]] = {}
# Per-request cost matters here (a low-latency viewer asks ~6 times a second): a request whose access
# decision is remembered, whose viewer was already counted in this window and whose file was just read
# for another viewer runs on the event loop without a thread hop.
_viewers_counted: dict[tuple[int, str], int] = {}  # (class, viewer) -> the viewer-count window it was counted in
MEDIA_CACHE_BYTES = 64 * 1024 * 1024  # recently served segments/parts (immutable files), all classes together
_media_cache: collections.OrderedDict[str, tuple[tuple[int, int, int], bytes]] = collections.OrderedDict()
_media_cache_size = 0
_media_reads: dict[tuple[str, tuple[int, int, int]], asyncio.Future] = {}  # reads under way


def hls_token_issue(*, classroom_id: int) -> str:
    return signing.dumps({"c": classroom_id}, salt=_SALT, compress=True)


def hls_token_valid(*, token: str, classroom_id: int) -> bool:
    try:
        data = signing.loads(token, salt=_SALT, max_age=settings.CLASSCAST_HLS_TOKEN_TTL_S)
    except signing.BadSignature:
        return False
    return data.get("c") == classroom_id


def _allowed(request: HttpRequest, classroom: Classroom, token: str) -> bool:
    if classroom.is_public:
        return True
    if token:
        return hls_token_valid(token=token, classroom_id=classroom.pk)
    return request.user.is_authenticated and can_view_class(actor_get(user=request.user, classroom_id=classroom.pk))


def _with_token(uri: str, token: str) -> str:
    return f"{uri}{'&' if '?' in uri else '?'}token={token}"


def playlist_with_token(text: str, token: str) -> str:
    """Carry the token onto every URI the playlist names (segments, parts, the preload hint), so a player
    or CDN needs no cookie."""
    lines = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            line = _with_token(line, token)
        elif line.startswith(("#EXT-X-PART:", "#EXT-X-PRELOAD-HINT:")):
            line = _URI_ATTRIBUTE.sub(lambda m: f'URI="{_with_token(m.group(1), token)}"', line)
        lines.append(line)
    return "\n".join(lines) + "\n"


def _cors(response: HttpResponse) -> HttpResponse:
    response["Access-Control-Allow-Origin"] = "*"
    response["Access-Control-Allow-Headers"] = "Range"
    return response


def _access_remembered(request: HttpRequest, classroom_id: int, token: str) -> tuple[bool, Path | None] | None:
    """The decision `_access` remembered for this viewer if it is still fresh (no I/O: runs on the loop)."""
    who = token or request.COOKIES.get(settings.SESSION_COOKIE_NAME, "")
    cached = _access_cache.get((classroom_id, who))
    if cached is not None and cached[0] > time.monotonic():
        return cached[1], cached[2]
    return None


def _access(request: HttpRequest, classroom_id: int, token: str) -> tuple[bool, Path | None]:
    """(may watch, the class's HLS folder), decided from the database at most every ACCESS_TTL_S per
    viewer; raises Http404 for a class that does not exist."""
    who = token or request.COOKIES.get(settings.SESSION_COOKIE_NAME, "")
    key = (classroom_id, who)
    now = time.monotonic()
    cached = _access_cache.get(key)
    if cached is not None and cached[0] > now:
        return cached[1], cached[2]
    classroom = Classroom.objects.filter(pk=classroom_id).first()
    if classroom is None:
        raise Http404("no such class")
    allowed = _allowed(request, classroom, token)
    folder = hls_folder_path(classroom_id=classroom.pk) if allowed else None
    if allowed and folder is not None:  # refusals are never remembered: access granted counts at once
        if len(_access_cache) > 10_000:
            _access_cache.clear()
        _access_cache[key] = (now + ACCESS_TTL_S, allowed, folder)
    return allowed, folder


def hls_access_forget() -> None:
    """Forget remembered decisions (tests; a process that changed who may watch needs no call: ≤ 2 s)."""
    global _media_cache_size
    _access_cache.clear()
    _viewers_counted.clear()
    _media_cache.clear()
    _media_cache_size = 0


def _viewer_id(request: HttpRequest, token: str) -> str:
    viewer = token or request.COOKIES.get(settings.SESSION_COOKIE_NAME) or request.META.get("REMOTE_ADDR", "")
    return hashlib.sha1(viewer.encode()).hexdigest()[:16]


async def _viewer_seen(request: HttpRequest, classroom_id: int, token: str) -> None:
    """Count the viewer in this window (viewer_seen), once per window per process: the count is of
    distinct viewers, so a viewer this process already counted in this window needs no cache call."""
    viewer_id = _viewer_id(request, token)
    window = int(time.time() // VIEWER_WINDOW_S)
    if _viewers_counted.get((classroom_id, viewer_id)) == window:
        return
    await sync_to_async(viewer_seen)(classroom_id=classroom_id, viewer_id=viewer_id)
    if len(_viewers_counted) > 100_000:
        _viewers_counted.clear()
    _viewers_counted[(classroom_id, viewer_id)] = window


def _blocking_query(request: HttpRequest) -> tuple[int, int | None] | None:
    """(_HLS_msn, _HLS_part) of a blocking reload, None without one; ValueError if malformed."""
    msn, part = request.GET.get("_HLS_msn"), request.GET.get("_HLS_part")
    if msn is None:
        if part is not None:
            raise ValueError("_HLS_part needs _HLS_msn")
        return None
    if not msn.isdigit() or (part is not None and not part.isdigit()) or len(msn) > 12 or len(part or "") > 6:
        raise ValueError("_HLS_msn and _HLS_part must be non-negative integers")
    return int(msn), (int(part) if part is not None else None)


def _hold_s() -> float:
    # RFC 8216bis 6.2.5.2: a client gives up after three target durations; answer before that.
    return 3 * settings.CLASSCAST_HLS_SEGMENT_S


@require_GET
async def hls_file(request: HttpRequest, classroom_id: int, name: str) -> HttpResponse:
    match = NAME.match(name)
    if match is None:
        metrics.HLS_REQUESTS.labels(kind="other", result="bad_name").inc()
        raise Http404("no such file")
    kind = match.group(1)
    token = request.GET.get("token", "")
    remembered = _access_remembered(request, classroom_id, token)
    allowed, folder = remembered if remembered is not None else await sync_to_async(_access)(request, classroom_id, token)
    if not allowed:
        metrics.HLS_REQUESTS.labels(kind=kind, result="forbidden").inc()
        return _cors(HttpResponseForbidden("this class's broadcast is for its members"))
    if folder is None:
        metrics.HLS_REQUESTS.labels(kind=kind, result="not_found").inc()
        raise Http404("the broadcast has not started")
    if kind == "ts":
        return await _media_file(folder, name)
    await _viewer_seen(request, classroom_id, token)
    return await _playlist(request, folder, name, token)


async def _media_file(folder: Path, name: str) -> HttpResponse:
    path = folder / name
    if not path.is_file() and PART_FILE.match(name):
        # The part in the preload hint is asked for before it exists: hold it until it is written (or
        # the hint moves on without it, or the stream ends).
        def written(watch) -> str | None:
            if path.is_file():
                return "written"
            position = watch.position
            return "gone" if position is None or position.ended or position.hint != name else None

        await playlist_watch(folder / LIVE).wait_for(written, timeout_s=_hold_s())
    try:
        data = await _media_bytes(path)
    except (FileNotFoundError, IsADirectoryError):
        metrics.HLS_REQUESTS.labels(kind="ts", result="not_found").inc()
        raise Http404("no such segment") from None
    metrics.HLS_REQUESTS.labels(kind="ts", result="ok").inc()
    response = HttpResponse(data, content_type=CONTENT_TYPES["ts"])
    response["Cache-Control"] = "public, max-age=31536000, immutable"  # segments and parts never change
    return _cors(response)


async def _media_bytes(path: Path) -> bytes:
    """The file's bytes. Segments and parts never change once written (new ones get new names), and all
    viewers of a class ask for the same few at about the same time: the first request reads the file
    in a thread, the ones arriving meanwhile wait for that read, later ones take the bytes from memory
    (recently served files, MEDIA_CACHE_BYTES in all). A file replaced under the same name has another
    inode or mtime, so it is read again."""
    global _media_cache_size
    stat = os.stat(path)  # FileNotFoundError: 404
    if not stat_mode.S_ISREG(stat.st_mode):
        raise IsADirectoryError(path)
    name, stamp = str(path), (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    cached = _media_cache.get(name)
    if cached is not None and cached[0] == stamp:
        _media_cache.move_to_end(name)
        return cached[1]
    key = (name, stamp)
    reading = _media_reads.get(key)
    if reading is not None and reading.get_loop() is asyncio.get_running_loop():
        return await asyncio.shield(reading)
    reading = asyncio.ensure_future(asyncio.to_thread(path.read_bytes))
    _media_reads[key] = reading
    try:
        data = await asyncio.shield(reading)
    finally:
        if _media_reads.get(key) is reading:
            del _media_reads[key]
    if len(data) == stamp[2] and len(data) <= MEDIA_CACHE_BYTES // 8:
        old = _media_cache.pop(name, None)
        _media_cache_size -= len(old[1]) if old else 0
        _media_cache[name] = (stamp, data)
        _media_cache_size += len(data)
        while _media_cache_size > MEDIA_CACHE_BYTES:
            _, (_, dropped) = _media_cache.popitem(last=False)
            _media_cache_size -= len(dropped)
    return data


async def _playlist(request: HttpRequest, folder: Path, name: str, token: str) -> HttpResponse:
    try:
        blocking = _blocking_query(request) if name == LIVE else None
    except ValueError as exc:
        metrics.HLS_REQUESTS.labels(kind="m3u8", result="bad_request").inc()
        return _cors(HttpResponseBadRequest(str(exc)))
    if blocking is None:
        try:
            text = await asyncio.to_thread((folder / name).read_text, encoding="utf-8")
        except FileNotFoundError:
            metrics.HLS_REQUESTS.labels(kind="m3u8", result="not_found").inc()
            raise Http404("no such playlist") from None
    else:
        msn, part = blocking
        watch = playlist_watch(folder / LIVE)
        watch.refresh()
        if watch.position is None:
            raise Http404("the broadcast has not started")
        try:
            blocking_request_check(watch.position, msn=msn, part=part)
        except BlockingRequestError as exc:
            metrics.HLS_REQUESTS.labels(kind="m3u8", result="bad_request").inc()
            return _cors(HttpResponseBadRequest(str(exc)))
        ready = await watch.wait_for(
            lambda w: w.text if w.position and blocking_request_ready(w.position, msn=msn, part=part) else None,
            timeout_s=_hold_s(),
        )
        if ready is None:
            metrics.HLS_REQUESTS.labels(kind="m3u8", result="timeout").inc()
            response = HttpResponse("the asked-for segment or part did not come in time", status=503)
            response["Retry-After"] = "1"
            return _cors(response)
        text = ready
    metrics.HLS_REQUESTS.labels(kind="m3u8", result="ok").inc()
    if token:
        text = playlist_with_token(text, token)
    response = HttpResponse(text, content_type=CONTENT_TYPES["m3u8"])
    if "#EXT-X-ENDLIST" in text:
        response["Cache-Control"] = "public, max-age=3600"  # finished: cache it like a file
    elif blocking is not None:
        # This URL names one moment of the stream: the answer never changes, caches may keep it.
        response["Cache-Control"] = f"public, max-age={int(6 * settings.CLASSCAST_HLS_SEGMENT_S)}"
    else:
        response["Cache-Control"] = "no-cache, max-age=1"  # a live playlist changes every part
    return _cors(response)
