"""Serving HLS: the app's own origin on the embedded default (nginx or a CDN serve the same folder in
production). Right MIME types and cache headers, CORS for outside players, and access rules: public
classes to anyone, private ones to members or to holders of a signed, expiring token."""
from __future__ import annotations

import hashlib
import re

from django.conf import settings
from django.core import signing
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseForbidden
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET

from . import metrics
from .models import Classroom
from .permissions import can_view_class
from .selectors import actor_get
from .services.ingest import hls_folder_path
from .services.viewers import viewer_seen

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}\.(m3u8|ts)$")
_SALT = "classcast.hls"
CONTENT_TYPES = {"m3u8": "application/vnd.apple.mpegurl", "ts": "video/mp2t"}


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


def playlist_with_token(text: str, token: str) -> str:
    """Carry the token onto every URI the playlist names, so a player or CDN needs no cookie."""
    lines = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            line = f"{line}{'&' if '?' in line else '?'}token={token}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _cors(response: HttpResponse) -> HttpResponse:
    response["Access-Control-Allow-Origin"] = "*"
    response["Access-Control-Allow-Headers"] = "Range"
    return response


@require_GET
def hls_file(request: HttpRequest, classroom_id: int, name: str) -> HttpResponse:
    match = NAME.match(name)
    if match is None:
        metrics.HLS_REQUESTS.labels(kind="other", result="bad_name").inc()
        raise Http404("no such file")
    kind = match.group(1)
    classroom = get_object_or_404(Classroom, pk=classroom_id)
    token = request.GET.get("token", "")
    if not _allowed(request, classroom, token):
        metrics.HLS_REQUESTS.labels(kind=kind, result="forbidden").inc()
        return _cors(HttpResponseForbidden("this class's broadcast is for its members"))
    folder = hls_folder_path(classroom_id=classroom.pk)
    path = (folder / name) if folder else None
    if path is None or path.resolve().parent != folder.resolve() or not path.is_file():
        metrics.HLS_REQUESTS.labels(kind=kind, result="not_found").inc()
        raise Http404("the broadcast has not started")
    metrics.HLS_REQUESTS.labels(kind=kind, result="ok").inc()
    if kind == "ts":
        response = FileResponse(open(path, "rb"), content_type=CONTENT_TYPES[kind])
        response["Cache-Control"] = "public, max-age=31536000, immutable"  # a segment never changes
        return _cors(response)
    viewer = token or request.COOKIES.get(settings.SESSION_COOKIE_NAME) or request.META.get("REMOTE_ADDR", "")
    viewer_seen(classroom_id=classroom.pk, viewer_id=hashlib.sha1(viewer.encode()).hexdigest()[:16])
    text = path.read_text()
    if token:
        text = playlist_with_token(text, token)
    response = HttpResponse(text, content_type=CONTENT_TYPES[kind])
    # A live playlist changes every segment; a finished one (ENDLIST) may be cached like a file.
    response["Cache-Control"] = "public, max-age=3600" if "#EXT-X-ENDLIST" in text else "no-cache, max-age=1"
    return _cors(response)
