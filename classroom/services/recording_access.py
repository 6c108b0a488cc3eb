"""Who may see which recording, short-lived signed file links, the audit log, and deleting recordings
(by hand or when their retention runs out)."""
from __future__ import annotations

import hashlib
import logging
import secrets
import shutil
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core import signing
from django.core.cache import cache
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
    """The recording, if the user may see it. NotFound both when it does not exist and when they may not
    see it: the answer must not tell which recording ids exist."""
    recording = Recording.objects.select_related("classroom", "session").filter(pk=recording_id).first()
    if recording is None:
        raise NotFound("no such recording")
    actor = recording_actor(user=user, recording=recording)
    if not can_review_recording(
        actor, published=recording.status == RecordingStatus.PUBLISHED, shared_with_students=recording.shared_with_students
    ):
        raise NotFound("no such recording")
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

@dataclass(frozen=True)
class FileLink:
    """What a verified signed link says."""

    user_id: int
    download: bool
    expires: int  # unix time
    link_id: str  # names this one issued link (a digest of its signature), for the download audit


def _link_message(recording_id: int, name: str, user_id: int, expires: int, dl: str, nonce: str) -> str:
    return f"{recording_id}:{name}:{user_id}:{expires}:{dl}:{nonce}"


def file_link_sign(*, recording_id: int, name: str, user_id: int, download: bool, ttl_s: int | None = None) -> str:
    """The query string of a short-lived link to one file of a recording, for one user. Each link is
    unique (a nonce), so that its downloads are audited once per link handed out."""
    expires = int(time.time()) + (ttl_s if ttl_s is not None else settings.CLASSCAST_RECORDING_LINK_TTL_S)
    dl = "1" if download else "0"
    nonce = secrets.token_urlsafe(6)
    sig = signing.Signer(salt=_LINK_SALT).signature(_link_message(recording_id, name, user_id, expires, dl, nonce))
    return f"u={user_id}&e={expires}&dl={dl}&n={nonce}&s={sig}"


def file_link_verify(*, recording_id: int, name: str, params: Any) -> FileLink:
    """The link's user and kind if it is valid; NotAllowed for a tampered or expired one."""
    try:
        user_id, expires, dl, nonce, sig = int(params["u"]), int(params["e"]), params["dl"], params["n"], params["s"]
    except (KeyError, ValueError, TypeError):
        raise NotAllowed("this link is not valid") from None
    expected = signing.Signer(salt=_LINK_SALT).signature(_link_message(recording_id, name, user_id, expires, dl, nonce))
    if not signing.constant_time_compare(expected, str(sig)):
        raise NotAllowed("this link is not valid")
    if expires < time.time():
        raise NotAllowed("this link has expired; open the recording again for a fresh one")
    return FileLink(user_id=user_id, download=dl == "1", expires=expires,
                    link_id=hashlib.sha256(str(sig).encode()).hexdigest()[:16])


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


def download_audit(*, user: Any, recording: Recording, name: str, link: FileLink, ip: str | None = None) -> bool:
    """Audit a download once per signed link, whatever range its first request asks for (a client may
    start at any byte), and not again for the continuation ranges players and download managers send
    after it. True if this request was the one audited."""
    key = f"classcast:download-audited:{link.link_id}"
    if not cache.add(key, True, timeout=max(1, link.expires - int(time.time()) + 1)):
        return False
    audit_record(actor=user, action="recording.download", recording=recording, target=name, ip=ip,
                 detail={"link": link.link_id})
    return True


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
