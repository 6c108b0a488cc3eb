"""Pages and small JSON endpoints; each a thin adapter over selectors and services."""
from __future__ import annotations

import hmac
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


from .hls_views import hls_folder_get, hls_token_issue
from .metrics import database_collector_register
from .models import ACTIVE_STAGE_STATES, Broadcast, Classroom, StageMembership
from .permissions import Actor, can_manage_session, can_view_class
from .selectors import actor_get, classrooms_for_user, session_live_get
from .services.broadcast import broadcast_active, studio_info
from .services.ice import ice_servers_for
from .services.ingest import hls_text_read, program_media_folder
from .services.viewers import viewers_count

NO_SUCH_CLASS = "No such class."


def class_visible_get(*, user: Any, classroom_id: int) -> tuple[Classroom, Actor] | None:
    """The class and the user's actor in it; None both for a class that does not exist and for one
    the user may not see, so that the answers cannot tell which class ids exist."""
    classroom = Classroom.objects.filter(pk=classroom_id).first()
    if classroom is None or not user.is_authenticated:
        return None
    actor = actor_get(user=user, classroom_id=classroom.pk)
    return (classroom, actor) if can_view_class(actor) else None


def _class_for(request: HttpRequest, classroom_id: int) -> tuple[Classroom, Actor]:
    found = class_visible_get(user=request.user, classroom_id=classroom_id)
    if found is None:
        raise Http404(NO_SUCH_CLASS)
    return found


def _no_such_class() -> JsonResponse:
    return JsonResponse({"error": NO_SUCH_CLASS}, status=404)


def _page(request: HttpRequest, classroom_id: int, *, page: str, template: str) -> HttpResponse:
    classroom, actor = _class_for(request, classroom_id)
    if page == "console" and not can_manage_session(actor):
        raise PermissionDenied("Only the class instructor can open the console.")
    return render(
        request,
        template,
        {"classroom": classroom, "actor": actor, "page": page, "can_manage": can_manage_session(actor),
         "default_retention_days": settings.CLASSCAST_RECORDING_RETENTION_DAYS},
    )


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    rows = []
    for classroom in classrooms_for_user(user=request.user):
        actor = actor_get(user=request.user, classroom_id=classroom.pk)
        rows.append(
            {
                "classroom": classroom,
                "role": actor.role or "staff",
                "can_manage": can_manage_session(actor),
                "live": session_live_get(classroom_id=classroom.pk) is not None,
            }
        )
    return render(request, "classroom/dashboard.html", {"rows": rows})


@login_required
def class_page(request: HttpRequest, classroom_id: int) -> HttpResponse:
    return _page(request, classroom_id, page="class", template="classroom/class.html")


@login_required
def console_page(request: HttpRequest, classroom_id: int) -> HttpResponse:
    return _page(request, classroom_id, page="console", template="classroom/console.html")


@login_required
def watch_page(request: HttpRequest, classroom_id: int) -> HttpResponse:
    return _page(request, classroom_id, page="watch", template="classroom/watch.html")


@require_GET
@never_cache
def ice_servers(request: HttpRequest, classroom_id: int) -> JsonResponse:
    """ICE servers with short-lived TURN REST credentials, for the class instructor and stage members."""
    if not request.user.is_authenticated:
        return JsonResponse({"error": "login required"}, status=401)
    found = class_visible_get(user=request.user, classroom_id=classroom_id)
    if found is None:
        return _no_such_class()
    classroom, actor = found
    session = session_live_get(classroom_id=classroom.pk)
    on_stage = session is not None and StageMembership.objects.filter(
        session=session, user_id=request.user.pk, state__in=ACTIVE_STAGE_STATES
    ).exists()
    if not (on_stage or can_manage_session(actor)):
        return JsonResponse({"error": "only stage members get media credentials"}, status=403)
    return JsonResponse(
        {"iceServers": ice_servers_for(user=f"user-{request.user.pk}"), "ttl": settings.CLASSCAST_TURN_TTL_S}
    )


def playlist_url(*, classroom: Classroom, user_id: int | None) -> str:
    url = reverse("classroom:hls", args=[classroom.pk, "live.m3u8"])
    if classroom.is_public or user_id is None:
        return url
    # Private classes: a signed token in the URL works for any player or CDN; it names the viewer and
    # is honoured only while they may still view the class.
    return f"{url}?token={hls_token_issue(classroom_id=classroom.pk, user_id=user_id)}"


def hls_state(*, classroom: Classroom) -> dict:
    """Is there a broadcast to watch, from the compositor or from OBS? The playlist on disk says."""
    session = hls_folder_get(classroom_id=classroom.pk)
    folder = program_media_folder(session) if session is not None else None  # a ladder: its top rung says
    live = hls_text_read(folder / "live.m3u8") if folder is not None else None
    if live is None:  # none yet, or not a file we would serve
        return {"live": False, "ended": False}
    ended = hls_text_read(folder / "vod.m3u8") is not None or "#EXT-X-ENDLIST" in live
    return {"live": not ended, "ended": ended}


@require_GET
@never_cache
def broadcast_status(request: HttpRequest, classroom_id: int) -> JsonResponse:
    """The broadcast as a viewer sees it; health, stream key and destinations for the instructor."""
    classroom = Classroom.objects.filter(pk=classroom_id).first()
    actor = (
        actor_get(user=request.user, classroom_id=classroom.pk)
        if classroom is not None and request.user.is_authenticated else None
    )
    if classroom is None or not (classroom.is_public or (actor is not None and can_view_class(actor))):
        return _no_such_class()
    session = session_live_get(classroom_id=classroom.pk)
    broadcast = broadcast_active(session_id=session.pk) if session else None
    user_id = request.user.pk if request.user.is_authenticated else None
    body = {
        "hls": {**hls_state(classroom=classroom), "playlist_url": playlist_url(classroom=classroom, user_id=user_id)},
        "broadcast": None if broadcast is None else {"status": broadcast.status, "layout": broadcast.layout},
        "viewers": viewers_count(classroom_id=classroom.pk),
    }
    if actor is not None and can_manage_session(actor):
        last = broadcast or (Broadcast.objects.filter(session=session).first() if session else None)
        body["health"] = None if last is None else {
            "status": last.status, "stats": last.stats, "error": last.error, "error_is_user": last.error_is_user,
            "attempts": last.attempts, "heartbeat_at": last.heartbeat_at,
        }
        body["studio"] = studio_info(classroom_id=classroom.pk)
    return JsonResponse(body)


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text for signed-in staff, or for a scraper showing the bearer token
    (CLASSCAST_METRICS_TOKEN); nobody else: the figures describe every class."""
    staff = request.user.is_authenticated and request.user.is_staff
    token = settings.CLASSCAST_METRICS_TOKEN
    if not staff and not token:
        return HttpResponse("metrics are for administrators\n", status=403, content_type="text/plain")
    if not staff:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # Bytes: compare_digest refuses non-ASCII str, and a header may carry any latin-1 octet.
        if scheme != "Bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8", "surrogateescape"), token.encode()
        ):
            response = HttpResponse("metrics need a bearer token\n", status=401, content_type="text/plain")
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
            return response
    database_collector_register()
    return HttpResponse(generate_latest(), content_type=CONTENT_TYPE_LATEST)


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})
