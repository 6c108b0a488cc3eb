"""Who may see which recording, short-lived signed file links, the audit log, and deleting recordings
(by hand or when their retention runs out)."""
from __future__ import annotations

import logging
import shutil
import time
from typing import Any

from django.conf import settings
from django.core import signing
from django.core.files.storage import storages
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from ..errors import InvalidState, NotAllowed, NotFound
from ..models import AuditEntry, Membership, Recording, RecordingStatus, Role
from ..permissions import Actor, can_manage_recording, can_review_recording
from ..selectors import display_name
from .recording_processing import spool

log = logging.getLogger("classcast.recording")
_LINK_SALT = "classcast.recording-file"


def recording_actor(*, user: Any, recording: Recording) -> Actor:
    role = Membership.objects.filter(classroom_id=recording.classroom_id, user_id=user.pk).values_list("role", flat=True).first()
    return Actor(user_id=user.pk, is_staff=bool(user.is_staff), role=role)


def recording_require_view(*, user: Any, recording_id: int) -> Recording:
    recording = Recording.objects.select_related("classroom", "session").filter(pk=recording_id).first()
    if recording is None:
        raise NotFound("no such recording")
    actor = recording_actor(user=user, recording=recording)
    if not can_review_recording(
        actor, published=recording.status == RecordingStatus.PUBLISHED, shared_with_students=recording.shared_with_students
    ):
        raise NotAllowed("you may not see this recording")
    return recording


def recording_require_manage(*, user: Any, recording_id: int) -> Recording:
    recording = recording_require_view(user=user, recording_id=recording_id)
    if not can_manage_recording(recording_actor(user=user, recording=recording)):
        raise NotAllowed("only administrators and the class's instructor manage recordings")
    return recording


def recordings_visible(*, user: Any) -> QuerySet[Recording]:
    """Staff: all; instructors: their classes'; students: published ones their class shared."""
    qs = Recording.objects.select_related("classroom", "session", "requested_by")
    if user.is_staff:
        return qs
    teaching = Membership.objects.filter(user_id=user.pk, role=Role.INSTRUCTOR).values("classroom_id")
    studying = Membership.objects.filter(user_id=user.pk, role=Role.STUDENT).values("classroom_id")
    return qs.filter(
        Q(classroom_id__in=teaching)
        | Q(classroom_id__in=studying, status=RecordingStatus.PUBLISHED, shared_with_students=True)
    )


# --- signed links --------------------------------------------------------------------------------------

def file_link_sign(*, recording_id: int, name: str, user_id: int, download: bool, ttl_s: int | None = None) -> str:
    """The query string of a short-lived link to one file of a recording, for one user."""
    expires = int(time.time()) + (ttl_s if ttl_s is not None else settings.CLASSCAST_RECORDING_LINK_TTL_S)
    dl = "1" if download else "0"
    sig = signing.Signer(salt=_LINK_SALT).signature(f"{recording_id}:{name}:{user_id}:{expires}:{dl}")
    return f"u={user_id}&e={expires}&dl={dl}&s={sig}"


def file_link_verify(*, recording_id: int, name: str, params: Any) -> tuple[int, bool]:
    """(user id, download?) of a valid link; NotAllowed for a tampered or expired one."""
    try:
        user_id, expires, dl, sig = int(params["u"]), int(params["e"]), params["dl"], params["s"]
    except (KeyError, ValueError, TypeError):
        raise NotAllowed("this link is not valid") from None
    expected = signing.Signer(salt=_LINK_SALT).signature(f"{recording_id}:{name}:{user_id}:{expires}:{dl}")
    if not signing.constant_time_compare(expected, str(sig)):
        raise NotAllowed("this link is not valid")
    if expires < time.time():
        raise NotAllowed("this link has expired; open the recording again for a fresh one")
    return user_id, dl == "1"


# --- audit -----------------------------------------------------------------------------------------------

def audit_record(
    *, actor: Any | None, action: str, recording: Recording | None = None, target: str = "",
    ip: str | None = None, detail: dict[str, Any] | None = None,
) -> AuditEntry:
    entry = AuditEntry.objects.create(
        actor=actor if actor is not None and actor.pk else None,
        actor_name=display_name(actor) if actor is not None else "system",
        action=action, recording_id=recording.pk if recording else None,
        classroom_id=recording.classroom_id if recording else None, target=target[:300], ip=ip, detail=detail or {},
    )
    log.info("audit %s", action, extra={"recording_id": entry.recording_id, "user_id": entry.actor_id})
    return entry


# --- sharing and deleting --------------------------------------------------------------------------------

@transaction.atomic
def recording_share_set(*, user: Any, recording_id: int, shared: bool, ip: str | None = None) -> Recording:
    recording = recording_require_manage(user=user, recording_id=recording_id)
    recording.shared_with_students = shared
    recording.save(update_fields=["shared_with_students"])
    audit_record(actor=user, action="recording.share" if shared else "recording.unshare", recording=recording, ip=ip)
    return recording


def _delete(recording: Recording) -> None:
    store = storages["recordings"]
    for name in recording.files.values_list("name", flat=True):
        key = f"{recording.folder}/{name}"
        if store.exists(key):
            store.delete(key)
    shutil.rmtree(spool(recording), ignore_errors=True)
    recording.delete()


@transaction.atomic
def recording_delete(*, user: Any, recording_id: int, ip: str | None = None) -> None:
    recording = recording_require_manage(user=user, recording_id=recording_id)
    if recording.status not in (RecordingStatus.PUBLISHED, RecordingStatus.FAILED):
        raise InvalidState("a recording can be deleted once it is published or has failed")
    audit_record(
        actor=user, action="recording.delete", recording=recording, ip=ip,
        detail={"class": recording.classroom.title, "files": recording.files.count()},
    )
    _delete(recording)


def recordings_expire() -> list[int]:
    """Delete published recordings past their retention date (files and rows); each one is logged."""
    done = []
    for recording in Recording.objects.select_related("classroom").filter(
        status=RecordingStatus.PUBLISHED, expires_at__lte=timezone.now()
    ):
        pk = recording.pk
        with transaction.atomic():
            audit_record(
                actor=None, action="recording.expire", recording=recording,
                detail={"class": recording.classroom.title, "expired_at": recording.expires_at.isoformat()},
            )
            _delete(recording)
        done.append(pk)
    return done
