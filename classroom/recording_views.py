"""The administrators' review: the recordings list, one recording's page (synced players, timeline,
downloads, QC), signed file links, sharing, deleting, and the audit log. Thin over the services."""
from __future__ import annotations

from datetime import date
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.files.storage import storages
from django.core.paginator import Paginator
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from .errors import InvalidState, NotAllowed, NotFound
from .file_responses import byte_range, ranged_file_response, safe_relative_name
from .models import AuditEntry, Classroom, FileRole, Recording, RecordingFile, RecordingStatus
from .services import recording_access as access
from .services.recording_processing import final_path, recording_reprocess, spool, thumbnail_name
from .services.recordings import classroom_recording_settings_set
from .views import NO_SUCH_CLASS, class_visible_get

PLAYABLE = (FileRole.TRACK, FileRole.PROGRAM)


def _ip(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def _require(fn: Any, **kwargs: Any) -> Recording:
    try:
        return fn(**kwargs)
    except NotFound:
        raise Http404("No such recording.") from None
    except NotAllowed as exc:
        raise PermissionDenied(str(exc)) from None


def _date(value: str) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


@login_required
@require_GET
def recordings_list(request: HttpRequest) -> HttpResponse:
    qs = access.recordings_visible(user=request.user)
    q = request.GET.get("q", "").strip()[:100]
    if q:
        qs = qs.filter(
            Q(classroom__title__icontains=q) | Q(requested_by__username__icontains=q)
            | Q(requested_by__first_name__icontains=q) | Q(requested_by__last_name__icontains=q)
            | Q(classroom__memberships__role="instructor", classroom__memberships__user__username__icontains=q)
            | Q(classroom__memberships__role="instructor", classroom__memberships__user__last_name__icontains=q)
        ).distinct()
    class_id = request.GET.get("class", "")
    if class_id.isdigit():
        qs = qs.filter(classroom_id=int(class_id))
    if (since := _date(request.GET.get("from", ""))) is not None:
        qs = qs.filter(created_at__date__gte=since)
    if (until := _date(request.GET.get("to", ""))) is not None:
        qs = qs.filter(created_at__date__lte=until)
    status = request.GET.get("status", "")
    if status in RecordingStatus.values:
        qs = qs.filter(status=status)
    page = Paginator(qs.order_by("-created_at", "-id"), 50).get_page(request.GET.get("page"))
    classes = Classroom.objects.filter(pk__in=access.recordings_visible(user=request.user).values("classroom_id"))
    return render(request, "recordings/list.html", {
        "page": page, "q": q, "class_id": class_id, "from": request.GET.get("from", ""), "to": request.GET.get("to", ""),
        "status": status, "statuses": RecordingStatus.choices, "classes": classes,
    })


def _file_url(request: HttpRequest, recording: Recording, name: str, *, download: bool) -> str:
    query = access.file_link_sign(recording_id=recording.pk, name=name, user_id=request.user.pk, download=download)
    return reverse("classroom:recording_file", args=[recording.pk, name]) + "?" + query


def review_data(request: HttpRequest, recording: Recording) -> dict[str, Any]:
    """Everything the review page's script needs: players on one timeline, marks, gaps."""
    files = list(recording.files.all())
    manifest = recording.manifest or {}
    program = next((f for f in files if f.role == FileRole.PROGRAM), None)
    tracks = [f for f in files if f.role == FileRole.TRACK and f.frames]
    thumbs = {f.name for f in files if f.role == FileRole.THUMBNAIL}

    def poster(track: RecordingFile) -> str:
        name = thumbnail_name(track.name)
        return _file_url(request, recording, name, download=False) if name in thumbs else ""

    return {
        "id": recording.pk,
        "duration_ms": recording.duration_ms or 0,
        "program": (
            {"url": _file_url(request, recording, program.name, download=False), "start_ms": program.start_ms,
             "end_ms": program.end_ms or program.start_ms}
            if program is not None else None
        ),
        "tracks": [
            {"name": f.name, "label": f"{f.participant_name} · {f.kind}", "kind": f.kind, "user_id": f.user_id,
             "start_ms": f.start_ms, "end_ms": f.end_ms if f.end_ms is not None else f.start_ms + (f.duration_ms or 0),
             "url": _file_url(request, recording, f.name, download=False), "poster": poster(f)}
            for f in tracks
        ],
        "events": [
            {"offset_ms": e["offset_ms"], "kind": e["kind"], "label": _event_label(e)} for e in manifest.get("events", [])
        ],
        "gaps": manifest.get("gaps", []),
    }


def _event_label(event: dict[str, Any]) -> str:
    who = (event.get("actor") or {}).get("name") or "someone"
    kind = event["kind"]
    data = event.get("data") or {}
    labels = {
        "stage.joined": f"{who} came on stage", "stage.left": f"{who} left the stage",
        "stage.removed": f"{who} was taken off stage", "stage.invited": f"{who} was invited on stage",
        "hand.raised": f"{who} raised a hand", "hand.lowered": f"{who}'s hand lowered",
        "chat.message": f"{who}: {str(data.get('text', ''))[:80]}", "broadcast.layout": f"Layout: {data.get('layout')}",
        "stage.muted": f"{who} {'muted' if data.get('muted') else 'unmuted'} {data.get('kind', '')}",
    }
    return labels.get(kind, kind.replace(".", " "))


@login_required
@require_GET
def recording_detail(request: HttpRequest, recording_id: int) -> HttpResponse:
    recording = _require(access.recording_require_view, user=request.user, recording_id=recording_id)
    access.audit_record(actor=request.user, action="recording.view", recording=recording, ip=_ip(request))
    actor = access.recording_actor(user=request.user, recording=recording)
    files = [
        {"row": f, "download": _file_url(request, recording, f.name, download=True)}
        for f in recording.files.all()
        if f.role != FileRole.THUMBNAIL
    ]
    poster = recording.files.filter(role=FileRole.POSTER).first()
    return render(request, "recordings/detail.html", {
        "recording": recording, "files": files, "review": review_data(request, recording),
        "poster_url": _file_url(request, recording, poster.name, download=False) if poster else "",
        "can_manage": access.can_manage_recording(actor),
        "published": recording.status == RecordingStatus.PUBLISHED,
        "steps": [(step, (recording.progress or {}).get(step, {})) for step in
                  ("finalize", "program", "probe", "qc", "thumbnails", "publish")],
    })


@login_required
@require_GET
def recording_review_links(request: HttpRequest, recording_id: int) -> JsonResponse:
    """Fresh signed links for the review page's players (theirs expire while the page stays open)."""
    recording = _require(access.recording_require_view, user=request.user, recording_id=recording_id)
    return JsonResponse(review_data(request, recording))


@login_required
@require_GET
def recording_status(request: HttpRequest, recording_id: int) -> JsonResponse:
    recording = _require(access.recording_require_view, user=request.user, recording_id=recording_id)
    return JsonResponse({"id": recording.pk, "status": recording.status, "progress": recording.progress,
                         "error": recording.error, "problems": recording.problems})


@require_GET
def recording_file(request: HttpRequest, recording_id: int, name: str) -> HttpResponse:
    """A file by signed link (no session needed: players and download tools follow it as it is)."""
    if not safe_relative_name(name):
        return HttpResponseBadRequest("Bad file path.")
    try:
        link = access.file_link_verify(recording_id=recording_id, name=name, params=request.GET)
    except NotAllowed as exc:
        raise PermissionDenied(str(exc)) from None
    user = get_user_model().objects.filter(pk=link.user_id, is_active=True).first()
    if user is None:
        raise PermissionDenied("this link is not valid")
    recording = _require(access.recording_require_view, user=user, recording_id=recording_id)
    row = RecordingFile.objects.filter(recording=recording, name=name).first()
    if row is None:
        raise Http404("No such file in this recording.")
    handle, size = _open(recording, row)
    if link.download and byte_range(request.headers.get("Range", ""), size) is not False:
        # Any range counts (a client may start anywhere); the link's later requests are not logged again.
        access.download_audit(user=user, recording=recording, name=name, link=link, ip=_ip(request))
    return ranged_file_response(request, handle, size=size, name=name, attachment=link.download)


def _open(recording: Recording, row: RecordingFile) -> tuple[Any, int]:
    if row.stored:
        store = storages["recordings"]
        key = f"{recording.folder}/{row.name}"
        if not store.exists(key):
            raise Http404("The file is missing from storage.")
        return store.open(key, "rb"), store.size(key)
    for path in (final_path(recording, row.name), spool(recording) / row.name):  # not published yet
        if path.is_file():
            return path.open("rb"), path.stat().st_size
    raise Http404("The file is not there (yet).")


@login_required
@require_POST
def recording_share(request: HttpRequest, recording_id: int) -> HttpResponse:
    _require(access.recording_share_set, user=request.user, recording_id=recording_id,
             shared=request.POST.get("shared") == "1", ip=_ip(request))
    return redirect("classroom:recording_detail", recording_id)


@login_required
@require_POST
def recording_delete(request: HttpRequest, recording_id: int) -> HttpResponse:
    try:
        _require(access.recording_delete, user=request.user, recording_id=recording_id, ip=_ip(request))
    except InvalidState as exc:
        return HttpResponse(str(exc), status=409)
    return redirect("classroom:recordings")


@login_required
@require_POST
def recording_retry(request: HttpRequest, recording_id: int) -> HttpResponse:
    _require(access.recording_require_manage, user=request.user, recording_id=recording_id)
    recording_reprocess(recording_id=recording_id)
    return redirect("classroom:recording_detail", recording_id)


@login_required
@require_POST
def class_recording_settings(request: HttpRequest, classroom_id: int) -> HttpResponse:
    """The console's recording policy form (auto-record, retention)."""
    found = class_visible_get(user=request.user, classroom_id=classroom_id)
    if found is None:  # no such class, or not one of the user's: the same answer
        raise Http404(NO_SUCH_CLASS)
    _, actor = found
    raw_days = request.POST.get("retention_days", "").strip()
    if raw_days and not raw_days.isdigit():
        return HttpResponseBadRequest("Retention must be a whole number of days.")
    try:
        classroom_recording_settings_set(
            classroom_id=classroom_id, actor=actor, auto_record=request.POST.get("auto_record") == "on",
            retention_days=int(raw_days) if raw_days else None,
        )
    except NotAllowed as exc:
        raise PermissionDenied(str(exc)) from None
    except InvalidState as exc:
        return HttpResponseBadRequest(str(exc))
    return redirect("classroom:console", classroom_id)


@login_required
@require_GET
def audit_log(request: HttpRequest) -> HttpResponse:
    if not request.user.is_staff:
        raise PermissionDenied("Only administrators read the audit log.")
    qs = AuditEntry.objects.select_related("actor")
    if (rid := request.GET.get("recording", "")).isdigit():
        qs = qs.filter(recording_id=int(rid))
    page = Paginator(qs, 100).get_page(request.GET.get("page"))
    return render(request, "recordings/audit.html", {"page": page, "recording": rid})
