"""Serving HLS: the app's own origin on the embedded default (nginx or a CDN serve the same folder in
production). Right MIME types and cache headers, CORS for outside players, and access rules: public
classes to anyone, private ones to members or to holders of a signed, expiring token.

Low-latency HLS: a playlist request with `_HLS_msn`/`_HLS_part` (a blocking reload, RFC 8216bis
6.2.5.2) and a request for the part named in the preload hint are held until the packager has written
what they ask for. The view is async: a held request is a suspended coroutine, not a thread.

A low-latency viewer asks ~6 times a second, and Django's request cycle costs more than the answer: a
request whose access decision is remembered (`_access`, ACCESS_TTL_S) is answered by `hls_fast_path`,
a plain ASGI app in front of Django, with the same code (`hls_answer`); any other goes through the view.

A token names whom it was issued to (`HlsGrant`): a member's is honoured only while that user may still
view the class (checked again whenever the decision is not remembered, so a removed member is refused
within ACCESS_TTL_S); an operator's (`manage.py stream_key`) only while the class's token generation and
stream key are the ones it was issued under. Someone who may not watch a private class gets the answer a
class that does not exist gets (404), so class ids cannot be probed; only a genuine token that was
revoked hears so (403). Only regular files inside the class's own folder are served: never a symlink.

A quality ladder: the session's `live.m3u8` is the master playlist and each rung is a sub-folder
(`<rung>/live.m3u8`, its segments and parts), served with the same checks, blocking reloads and tokens;
a rung is a plain name one level down and must be a real folder (a symlinked rung is not followed).

Playlists go out gzip-encoded to players that accept it (`hls_encoding`), on both paths: a low-latency
viewer reloads one ~3 times a second, and on a weak link those reloads were a third of the link.
"""
from __future__ import annotations

import asyncio
import collections
import enum
import hashlib
import hmac
import os
import re
import stat as stat_mode
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable, Mapping
from urllib.parse import parse_qsl

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core import signing
from django.db.models import F
from django.http import Http404, HttpRequest, HttpResponse
from django.http.request import split_domain_port, validate_host
from django.utils.crypto import salted_hmac
from django.views.decorators.http import require_GET

from hls_packager.ladder import master_first_variant
from hls_packager.playlist import BlockingRequestError, blocking_request_check, blocking_request_ready
from hls_packager.segments import PART_FILE

from . import metrics
from .hls_blocking import playlist_watch, regular_file_read
from .hls_encoding import accepts_gzip, gzip_body
from .models import Classroom
from .permissions import can_view_class
from .selectors import actor_current, actor_get
from .services.ingest import hls_rung_folder, hls_text_read
from .services.ingest import hls_folder_path
from .services.viewers import WINDOW_S as VIEWER_WINDOW_S
from .services.viewers import viewer_seen

# a file of the session folder, or of one ladder rung's folder below it
HLS_PATH = re.compile(r"^(?:(?P<rung>[A-Za-z0-9][A-Za-z0-9_-]{0,31})/)?(?P<file>[A-Za-z0-9][A-Za-z0-9_.-]{0,80}\.(?P<kind>m3u8|ts))$")
_SALT = "classcast.hls.v2"  # v1 tokens (class-wide, naming no holder) fail this salt: refused
_KEY_TAG_SALT = "classcast.hls.stream-key"
NOT_FOUND = "no such class"  # the one answer for a class that does not exist and one you may not watch
REVOKED = "this link no longer gives access to the class's broadcast"
CONTENT_TYPES = {"m3u8": "application/vnd.apple.mpegurl", "ts": "video/mp2t"}
LIVE = "live.m3u8"
_URI_ATTRIBUTE = re.compile(r'URI="([^"]+)"')
ACCESS_TTL_S = 2.0  # players poll several times a second; who may watch is decided at most this often
# (class, viewer's token or session cookie) -> (expires at, the class's HLS folder); only viewers let in
_access_cache: dict[tuple[int, str], tuple[float, Path]] = {}
# Per-request cost matters here (a low-latency viewer asks ~6 times a second): a request whose access
# decision is remembered, whose viewer was already counted in this window and whose file was just read
# for another viewer runs on the event loop without a thread hop.
_viewers_counted: dict[tuple[int, str], int] = {}  # (class, viewer) -> the viewer-count window it was counted in
MEDIA_CACHE_BYTES = 64 * 1024 * 1024  # recently served segments/parts (immutable files), all classes together
_media_cache: collections.OrderedDict[str, tuple[tuple[int, int, int], bytes]] = collections.OrderedDict()
_media_cache_size = 0
_media_reads: dict[tuple[str, tuple[int, int, int]], asyncio.Future] = {}  # reads under way


@dataclass(frozen=True)
class HlsGrant:
    """The signed payload of an HLS token: the class, and whom it was issued to. Exactly one of
    `user_id` (a member's player) and `generation` (an operator's link, with `key_tag` naming the
    stream key it was issued under) is set."""

    classroom_id: int
    user_id: int | None = None
    generation: int | None = None
    key_tag: str = ""

    def payload(self) -> dict:
        if self.user_id is not None:
            return {"c": self.classroom_id, "u": self.user_id}
        return {"c": self.classroom_id, "g": self.generation, "k": self.key_tag}

    @classmethod
    def from_payload(cls, data: object) -> "HlsGrant | None":
        """None for anything but the two shapes `payload` writes."""
        if not isinstance(data, dict) or type(data.get("c")) is not int:
            return None
        if set(data) == {"c", "u"} and type(data["u"]) is int:
            return cls(classroom_id=data["c"], user_id=data["u"])
        if set(data) == {"c", "g", "k"} and type(data["g"]) is int and isinstance(data["k"], str):
            return cls(classroom_id=data["c"], generation=data["g"], key_tag=data["k"])
        return None


def _key_tag(stream_key: str) -> str:
    # Operator links die with the stream key they were issued under; the tag does not reveal the key.
    return salted_hmac(_KEY_TAG_SALT, stream_key, algorithm="sha256").hexdigest()[:16]


def hls_token_issue(*, classroom_id: int, user_id: int) -> str:
    """A member's token: carries the user, honoured only while that user may view the class."""
    return signing.dumps(HlsGrant(classroom_id=classroom_id, user_id=user_id).payload(), salt=_SALT, compress=True)


def hls_operator_token_issue(*, classroom_id: int) -> str:
    """An operator's token (an outside player, a CDN): valid until the class's tokens are revoked
    (`hls_tokens_revoke`) or its stream key is rotated, or it expires."""
    classroom = Classroom.objects.get(pk=classroom_id)
    grant = HlsGrant(
        classroom_id=classroom.pk, generation=classroom.hls_token_generation, key_tag=_key_tag(classroom.stream_key)
    )
    return signing.dumps(grant.payload(), salt=_SALT, compress=True)


def hls_tokens_revoke(*, classroom_id: int) -> int:
    """Kill every operator token of the class (members' tokens follow their membership); the new generation."""
    updated = Classroom.objects.filter(pk=classroom_id).update(hls_token_generation=F("hls_token_generation") + 1)
    if not updated:
        raise Classroom.DoesNotExist(f"no class {classroom_id}")
    return Classroom.objects.values_list("hls_token_generation", flat=True).get(pk=classroom_id)


def hls_token_read(*, token: str, classroom_id: int) -> HlsGrant | None:
    """The grant of a genuine, unexpired token for this class; None for anything else."""
    try:
        data = signing.loads(token, salt=_SALT, max_age=settings.CLASSCAST_HLS_TOKEN_TTL_S)
    except signing.BadSignature:
        return None
    grant = HlsGrant.from_payload(data)
    return grant if grant is not None and grant.classroom_id == classroom_id else None


def hls_grant_honoured(*, grant: HlsGrant, classroom: Classroom) -> bool:
    """Does the grant still give access (asked of the database: revocation counts at once)?"""
    if grant.user_id is not None:
        actor = actor_current(user_id=grant.user_id, classroom_id=classroom.pk)
        return actor is not None and can_view_class(actor)
    return grant.generation == classroom.hls_token_generation and hmac.compare_digest(
        grant.key_tag, _key_tag(classroom.stream_key)
    )


class Access(enum.Enum):
    ALLOWED = "allowed"
    UNKNOWN = "unknown"  # no such class, or not for this viewer: the same 404 either way
    REVOKED = "revoked"  # a genuine token for this class that no longer gives access: 403


def _decide(request: HttpRequest, classroom: Classroom, token: str) -> Access:
    if classroom.is_public:
        return Access.ALLOWED
    if token:
        grant = hls_token_read(token=token, classroom_id=classroom.pk)
        if grant is None:
            return Access.UNKNOWN
        return Access.ALLOWED if hls_grant_honoured(grant=grant, classroom=classroom) else Access.REVOKED
    if request.user.is_authenticated and can_view_class(actor_get(user=request.user, classroom_id=classroom.pk)):
        return Access.ALLOWED
    return Access.UNKNOWN


def hls_folder_get(*, classroom_id: int) -> Path | None:
    """The class's HLS folder (`hls_folder_path`), resolved; None unless it lies inside
    CLASSCAST_HLS_ROOT with no symlink on the way (a linked folder could serve any folder on the disk)."""
    folder = hls_folder_path(classroom_id=classroom_id)
    if folder is None:
        return None
    root = Path(settings.CLASSCAST_HLS_ROOT)
    try:
        expected = Path(os.path.realpath(root)) / folder.relative_to(root)
    except ValueError:
        return None
    real = Path(os.path.realpath(folder))
    return real if real == expected and real.is_dir() else None


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


def _remembered(classroom_id: int, who: str) -> Path | None:
    """The HLS folder of a viewer let in less than ACCESS_TTL_S ago (no I/O: runs on the loop)."""
    cached = _access_cache.get((classroom_id, who))
    return cached[1] if cached is not None and cached[0] > time.monotonic() else None


def _who(request: HttpRequest, token: str) -> str:
    return token or request.COOKIES.get(settings.SESSION_COOKIE_NAME, "")


def _access(request: HttpRequest, classroom_id: int, token: str) -> tuple[Access, Path | None]:
    """(may watch?, the class's HLS folder), from the database. A viewer let in is remembered for
    ACCESS_TTL_S; refusals never are (access granted counts at once), and a remembered decision is never
    extended: it is asked again of the database, so a revoked viewer is refused within ACCESS_TTL_S."""
    classroom = Classroom.objects.filter(pk=classroom_id).first()
    if classroom is None:
        return Access.UNKNOWN, None
    access = _decide(request, classroom, token)
    folder = hls_folder_get(classroom_id=classroom.pk) if access is Access.ALLOWED else None
    if folder is not None:
        if len(_access_cache) > 10_000:
            _access_cache.clear()
        _access_cache[(classroom_id, _who(request, token))] = (time.monotonic() + ACCESS_TTL_S, folder)
    return access, folder


def hls_access_forget() -> None:
    """Forget remembered decisions and cached files (tests). Nothing else needs to call it: a decision
    is remembered for ACCESS_TTL_S at most, and a request held past that is decided again."""
    global _media_cache_size
    _access_cache.clear()
    _viewers_counted.clear()
    _media_cache.clear()
    _media_cache_size = 0


def _viewer_of(request: HttpRequest, token: str) -> str:
    return token or request.COOKIES.get(settings.SESSION_COOKIE_NAME) or request.META.get("REMOTE_ADDR", "")


async def _viewer_seen(classroom_id: int, viewer: str) -> None:
    """Count the viewer in this window (viewer_seen), once per window per process: the count is of
    distinct viewers, so a viewer this process already counted in this window needs no cache call."""
    viewer_id = hashlib.sha1(viewer.encode()).hexdigest()[:16]
    window = int(time.time() // VIEWER_WINDOW_S)
    if _viewers_counted.get((classroom_id, viewer_id)) == window:
        return
    await sync_to_async(viewer_seen)(classroom_id=classroom_id, viewer_id=viewer_id)
    if len(_viewers_counted) > 100_000:
        _viewers_counted.clear()
    _viewers_counted[(classroom_id, viewer_id)] = window


def _blocking_query(query: Mapping[str, str]) -> tuple[int, int | None] | None:
    """(_HLS_msn, _HLS_part) of a blocking reload, None without one; ValueError if malformed."""
    msn, part = query.get("_HLS_msn"), query.get("_HLS_part")
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


@dataclass
class Answer:
    """One HLS response, whichever path (Django's view or the fast path) sends it."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, status: int, message: str) -> "Answer":
        return cls(status, message.encode())

    def encoded(self, accept_encoding: str) -> "Answer":
        """A playlist gzip-encoded when the client accepts it (hls_encoding); anything else as it is."""
        if self.status != 200 or self.content_type != CONTENT_TYPES["m3u8"]:
            return self
        headers = {**self.headers, "Vary": "Accept-Encoding"}  # one URL, two bodies: caches must keep both
        body = gzip_body(self.body) if accepts_gzip(accept_encoding) else None
        if body is None:
            return Answer(self.status, self.body, self.content_type, headers)
        return Answer(self.status, body, self.content_type, {**headers, "Content-Encoding": "gzip"})

    def all_headers(self) -> dict[str, str]:
        # CORS for players on other origins; nosniff as Django's SecurityMiddleware would add.
        return {"Content-Type": self.content_type, "Access-Control-Allow-Origin": "*",
                "Access-Control-Allow-Headers": "Range", "X-Content-Type-Options": "nosniff", **self.headers}


@require_GET
async def hls_file(request: HttpRequest, classroom_id: int, name: str) -> HttpResponse:
    if HLS_PATH.match(name) is None:
        metrics.HLS_REQUESTS.labels(kind="other", result="bad_name").inc()
        raise Http404("no such file")
    token = request.GET.get("token", "")
    who = _who(request, token)
    folder = _remembered(classroom_id, who)
    answer = None
    if folder is not None:
        answer = await hls_answer(
            classroom_id=classroom_id, name=name, query=request.GET, token=token, access=Access.ALLOWED,
            folder=folder, viewer=_viewer_of(request, token), who=who,
        )
    for _ in range(3):  # not remembered, or the memory ran out while the request was held: ask the database
        if answer is not None:
            break
        access, folder = await sync_to_async(_access)(request, classroom_id, token)
        answer = await hls_answer(
            classroom_id=classroom_id, name=name, query=request.GET, token=token, access=access, folder=folder,
            viewer=_viewer_of(request, token), who=who,
        )
    if answer is None:  # held past the memory again and again: let the player ask again
        answer = Answer.text(503, "try again")
        answer.headers["Retry-After"] = "1"
    answer = answer.encoded(request.headers.get("Accept-Encoding", ""))
    response = HttpResponse(answer.body, status=answer.status)
    for key, value in answer.all_headers().items():
        response[key] = value
    return response


async def hls_answer(
    *, classroom_id: int, name: str, query: Mapping[str, str], token: str, access: Access, folder: Path | None,
    viewer: str, who: str,
) -> Answer | None:
    """The response to GET /hls/classes/<id>/<name> once access is decided (pure of Django's request).
    None if the request was held (a blocking reload, a hinted part) past the remembered decision of
    viewer `who`: the caller decides again before answering, so a revoked viewer gets nothing new."""
    match = HLS_PATH.match(name)
    if match is None:
        metrics.HLS_REQUESTS.labels(kind="other", result="bad_name").inc()
        return Answer.text(404, "no such file")
    kind, name = match["kind"], match["file"]
    if access is not Access.ALLOWED:
        metrics.HLS_REQUESTS.labels(kind=kind, result="forbidden").inc()
        return Answer.text(403, REVOKED) if access is Access.REVOKED else Answer.text(404, NOT_FOUND)
    if folder is None:
        metrics.HLS_REQUESTS.labels(kind=kind, result="not_found").inc()
        return Answer.text(404, "the broadcast has not started")

    def still_allowed() -> bool:
        return _remembered(classroom_id, who) is not None

    if match["rung"]:
        folder = hls_rung_folder(folder, match["rung"])
        if folder is None:
            metrics.HLS_REQUESTS.labels(kind=kind, result="not_found").inc()
            return Answer.text(404, "no such rendition")

    if kind == "ts":
        return await _media_file(folder, name, still_allowed)
    await _viewer_seen(classroom_id, viewer)
    return await _playlist(query, folder, name, token, still_allowed)


async def _media_file(folder: Path, name: str, still_allowed: Callable[[], bool]) -> Answer | None:
    path = folder / name
    data = await _media_bytes_if_file(path)
    if data is None and PART_FILE.match(name):
        # The part in the preload hint is asked for before it exists: hold it until it is written (or
        # the hint moves on without it, or the stream ends).
        def written(watch) -> str | None:
            if path.is_file():
                return "written"
            position = watch.position
            return "gone" if position is None or position.ended or position.hint != name else None

        if await playlist_watch(folder / LIVE).wait_for(written, timeout_s=_hold_s()) == "written":
            if not still_allowed():
                return None
            data = await _media_bytes_if_file(path)  # None again if it was removed meanwhile
    if data is None:
        metrics.HLS_REQUESTS.labels(kind="ts", result="not_found").inc()
        return Answer.text(404, "no such segment")
    metrics.HLS_REQUESTS.labels(kind="ts", result="ok").inc()
    # Segments and parts never change: cache them for good.
    return Answer(200, data, CONTENT_TYPES["ts"], {"Cache-Control": "public, max-age=31536000, immutable"})


async def _media_bytes_if_file(path: Path) -> bytes | None:
    try:
        return await _media_bytes(path)
    except OSError:  # missing, or not a regular file of its own (a symlink, a folder, a FIFO)
        return None


async def _media_bytes(path: Path) -> bytes:
    """The file's bytes. Segments and parts never change once written (new ones get new names), and all
    viewers of a class ask for the same few at about the same time: the first request reads the file
    in a thread, the ones arriving meanwhile wait for that read, later ones take the bytes from memory
    (recently served files, MEDIA_CACHE_BYTES in all). A file replaced under the same name has another
    inode or mtime, so it is read again."""
    global _media_cache_size
    stat = os.lstat(path)  # FileNotFoundError: 404; a symlink is not followed
    if not stat_mode.S_ISREG(stat.st_mode):
        raise IsADirectoryError(f"not a regular file: {path}")
    name, stamp = str(path), (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    cached = _media_cache.get(name)
    if cached is not None and cached[0] == stamp:
        _media_cache.move_to_end(name)
        return cached[1]
    key = (name, stamp)
    reading = _media_reads.get(key)
    if reading is not None and reading.get_loop() is asyncio.get_running_loop():
        return await asyncio.shield(reading)
    reading = asyncio.ensure_future(asyncio.to_thread(regular_file_read, path))  # O_NOFOLLOW: no swap-in symlink
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


async def _playlist(
    query: Mapping[str, str], folder: Path, name: str, token: str, still_allowed: Callable[[], bool]
) -> Answer | None:
    try:
        blocking = _blocking_query(query) if name == LIVE else None
    except ValueError as exc:
        metrics.HLS_REQUESTS.labels(kind="m3u8", result="bad_request").inc()
        return Answer.text(400, str(exc))
    if blocking is None and name == LIVE:
        # The live playlist through its shared watch: read again only when the packager replaced it.
        watch = playlist_watch(folder / LIVE)
        watch.refresh()
        if watch.position is None:
            metrics.HLS_REQUESTS.labels(kind="m3u8", result="not_found").inc()
            return Answer.text(404, "no such playlist")
        text = watch.text
    elif blocking is None:
        text = await asyncio.to_thread(hls_text_read, folder / name)
        if text is None:
            metrics.HLS_REQUESTS.labels(kind="m3u8", result="not_found").inc()
            return Answer.text(404, "no such playlist")
    else:
        msn, part = blocking
        watch = playlist_watch(folder / LIVE)
        watch.refresh()
        if watch.position is None:
            return Answer.text(404, "the broadcast has not started")
        if master_first_variant(watch.text) is not None:  # a ladder's master: its rungs block, it never changes
            metrics.HLS_REQUESTS.labels(kind="m3u8", result="bad_request").inc()
            return Answer.text(400, "a master playlist takes no blocking reload: ask a rendition's playlist")
        try:
            blocking_request_check(watch.position, msn=msn, part=part)
        except BlockingRequestError as exc:
            metrics.HLS_REQUESTS.labels(kind="m3u8", result="bad_request").inc()
            return Answer.text(400, str(exc))
        ready = await watch.wait_for(
            lambda w: w.text if w.position and blocking_request_ready(w.position, msn=msn, part=part) else None,
            timeout_s=_hold_s(),
        )
        if not still_allowed():
            return None
        if ready is None:
            metrics.HLS_REQUESTS.labels(kind="m3u8", result="timeout").inc()
            answer = Answer.text(503, "the asked-for segment or part did not come in time")
            answer.headers["Retry-After"] = "1"
            return answer
        text = ready
    metrics.HLS_REQUESTS.labels(kind="m3u8", result="ok").inc()
    if token:
        text = playlist_with_token(text, token)
    if "#EXT-X-ENDLIST" in text:
        cache = "public, max-age=3600"  # finished: cache it like a file
    elif blocking is not None:
        # This URL names one moment of the stream: the answer never changes, caches may keep it.
        cache = f"public, max-age={int(6 * settings.CLASSCAST_HLS_SEGMENT_S)}"
    else:
        cache = "no-cache, max-age=1"  # a live playlist changes every part
    return Answer(200, text.encode(), CONTENT_TYPES["m3u8"], {"Cache-Control": cache})


# --- the fast path: remembered viewers, in front of Django's request cycle ---------------------------------

_FAST_PATH = re.compile(r"^/hls/classes/(\d{1,12})/([^/]{1,100}(?:/[^/]{1,100})?)$")
ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


def hls_fast_path(django_app: ASGIApp) -> ASGIApp:
    """An ASGI app: GET /hls/classes/<id>/<name> from a viewer whose access Django decided less than
    ACCESS_TTL_S ago (same token or session cookie) is answered here, by `hls_answer`; everything else
    (a first request, a refusal, other URLs, other methods) goes to Django unchanged."""

    async def app(scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable[[dict], Awaitable[None]]) -> None:
        match = _FAST_PATH.match(scope.get("path", "")) if scope["type"] == "http" and scope["method"] == "GET" else None
        folder = None
        if match is not None:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            token = query.get("token", "")
            who = token or _cookie(headers.get("cookie", ""), settings.SESSION_COOKIE_NAME)
            host = split_domain_port(headers.get("host", ""))[0]
            if host and validate_host(host, settings.ALLOWED_HOSTS):
                folder = _remembered(int(match.group(1)), who)
        if folder is None:
            return await django_app(scope, receive, send)
        client = (scope.get("client") or ("", 0))[0]
        answer = await hls_answer(
            classroom_id=int(match.group(1)), name=match.group(2), query=query, token=token,
            access=Access.ALLOWED, folder=folder, viewer=who or client, who=who,
        )
        if answer is None:  # held past the remembered decision: Django decides again (nothing was sent yet)
            return await django_app(scope, receive, send)
        answer = answer.encoded(headers.get("accept-encoding", ""))
        await send({
            "type": "http.response.start", "status": answer.status,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.all_headers().items()]
            + [(b"content-length", str(len(answer.body)).encode())],
        })
        await send({"type": "http.response.body", "body": answer.body})

    return app


def _cookie(header: str, name: str) -> str:
    for item in header.split(";"):
        key, _, value = item.strip().partition("=")
        if key == name:
            return value
    return ""
