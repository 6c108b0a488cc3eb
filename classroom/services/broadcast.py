"""Going live: the broadcast's desired state (instructor side) and its job's claims and reports
(compositor worker side). The job is a Celery task on the `media` queue; this row is its status,
heartbeat and control channel, so it is stopped by a flag, never by killing a process."""
from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from ..errors import InvalidState, NotAllowed, NotFound
from ..models import (
    ACTIVE_BROADCAST_STATES,
    Broadcast,
    BroadcastStatus,
    Classroom,
    Destination,
    EventKind,
    Layout,
    StageMembership,
    stream_key_new,
)
from ..permissions import Actor, can_manage_session
from .events import event_record
from .ladder import ladder_cost_pixels, ladder_from_settings
from .sessions import session_require_live

log = logging.getLogger("classcast.broadcast")
REFERENCE_PIXELS_PER_S = 1280 * 720 * 30


def program_cost(*, width: int, height: int, fps: int, ladder_pixels_per_s: int = 0) -> float:
    """Cost units of one program: x264 dominates and scales with pixels per second (720p30 = 1.0);
    `ladder_pixels_per_s`: what every video rung encodes, the program's included (then it replaces it)."""
    return round((ladder_pixels_per_s or width * height * fps) / REFERENCE_PIXELS_PER_S, 3)


def broadcast_active(*, session_id: int) -> Broadcast | None:
    return Broadcast.objects.filter(session_id=session_id, status__in=ACTIVE_BROADCAST_STATES).first()


def _require_manager(actor: Actor, what: str) -> None:
    if not can_manage_session(actor):
        raise NotAllowed(f"only the class instructor can {what}")


def _enqueue(broadcast_id: int) -> None:
    from ..tasks import broadcast_run  # the task module imports services; import late to keep one direction

    transaction.on_commit(lambda: broadcast_run.delay(broadcast_id))


# --- the instructor's side ---------------------------------------------------------------------------

@transaction.atomic
def broadcast_start(*, classroom_id: int, actor: Actor) -> Broadcast:
    _require_manager(actor, "go live")
    session = session_require_live(classroom_id=classroom_id)
    if broadcast_active(session_id=session.pk) is not None:
        raise InvalidState("the class is already live on the broadcast")
    try:
        broadcast = Broadcast.objects.create(
            session=session,
            requested_by_id=actor.user_id,
            cost_units=program_cost(
                width=settings.CLASSCAST_PROGRAM_WIDTH,
                height=settings.CLASSCAST_PROGRAM_HEIGHT,
                fps=settings.CLASSCAST_PROGRAM_FPS,
                ladder_pixels_per_s=ladder_cost_pixels(ladder_from_settings()),
            ),
        )
    except IntegrityError:  # pressed twice, from two tabs
        raise InvalidState("the class is already live on the broadcast") from None
    event_record(session=session, kind=EventKind.BROADCAST_STARTED, actor_id=actor.user_id, data={"id": broadcast.pk})
    _enqueue(broadcast.pk)
    return broadcast


@transaction.atomic
def broadcast_stop(*, classroom_id: int, actor: Actor | None, reason: str = "stopped") -> Broadcast:
    if actor is not None:
        _require_manager(actor, "stop the broadcast")
    session = session_require_live(classroom_id=classroom_id)
    broadcast = broadcast_active(session_id=session.pk)
    if broadcast is None:
        raise InvalidState("the class is not on the broadcast")
    broadcast_stop_request(broadcast=broadcast, actor_id=actor.user_id if actor else None, reason=reason)
    return broadcast


def broadcast_stop_request(*, broadcast: Broadcast, actor_id: int | None, reason: str) -> None:
    """Ask the job to stop; a job that is not running yet is simply marked stopped."""
    broadcast.stop_requested = True
    fields = ["stop_requested"]
    if broadcast.status in (BroadcastStatus.QUEUED, BroadcastStatus.RESTARTING) and not _alive(broadcast):
        broadcast.status = BroadcastStatus.STOPPED
        broadcast.stopped_at = timezone.now()
        fields += ["status", "stopped_at"]
    broadcast.save(update_fields=fields)
    event_record(
        session=broadcast.session, kind=EventKind.BROADCAST_STOPPED, actor_id=actor_id,
        data={"id": broadcast.pk, "reason": reason},
    )


@transaction.atomic
def broadcast_layout_set(*, classroom_id: int, actor: Actor, layout: str, focus_user_id: int | None = None) -> None:
    _require_manager(actor, "change the layout")
    if layout not in Layout.values:
        raise InvalidState(f"layout must be one of {', '.join(Layout.values)}")
    session = session_require_live(classroom_id=classroom_id)
    broadcast = broadcast_active(session_id=session.pk)
    if broadcast is None:
        raise InvalidState("the class is not on the broadcast")
    if focus_user_id is not None and not StageMembership.objects.filter(
        session=session, user_id=focus_user_id, state="on_stage"
    ).exists():
        raise InvalidState("that person is not on stage")
    broadcast.layout = layout
    broadcast.focus_user_id = focus_user_id
    broadcast.save(update_fields=["layout", "focus_user"])
    event_record(
        session=session, kind=EventKind.LAYOUT, actor_id=actor.user_id,
        data={"layout": layout, "focus_user_id": focus_user_id},
    )


INSIDE_OUR_NETWORK = (
    "that address is inside our network; use the public RTMP URL of YouTube, Twitch or your streaming "
    "service, e.g. rtmp://a.rtmp.youtube.com/live2/<key>"
)
# IPv6 forms that carry an IPv4 address the packet may end up at (NAT64 well-known prefix, RFC 6052).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _address_internal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Loopback, private, link-local, multicast, reserved, unspecified or otherwise not public (CGNAT,
    documentation ranges...), also when wrapped in an IPv6 address."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and _address_internal(embedded):
            return True
    return ip.is_multicast or not ip.is_global  # not global: loopback, private, link-local, reserved, unspecified...


def _url_host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return (parts.hostname or "").rstrip("."), parts.port or (443 if parts.scheme == "rtmps" else 1935)


def destination_address_check(*, host: str, port: int, addresses: Iterable[str]) -> str | None:
    """Whether the compositor may send a broadcast to `host` at these resolved addresses: None, or the
    user's error. Nothing inside our network (SSRF from the worker), unless the operator named the host
    or its network in CLASSCAST_DESTINATION_ALLOWED_HOSTS; our own ingest is always allowed. Asked when
    a destination is added and again by the worker right before each connect (DNS may change)."""
    host = host.lower().rstrip(".")
    if (host, port) == _url_host_port(settings.CLASSCAST_RTMP_INGEST_URL):
        return None
    names, networks = set(), []
    for entry in settings.CLASSCAST_DESTINATION_ALLOWED_HOSTS:
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            names.add(entry.lower().rstrip("."))
    if host in names:
        return None
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return INSIDE_OUR_NETWORK  # not an address we can judge: not one we connect to
        if _address_internal(ip) and not any(ip.version == net.version and ip in net for net in networks):
            return INSIDE_OUR_NETWORK
    return None


def destination_url_check(url: str) -> str:
    """An RTMP(S) URL with a host outside our network; the user's to get right, so the message says what
    is wrong. A host that does not resolve now is let through: the worker checks it again, and reports
    it unknown, when it connects."""
    url = url.strip()
    parts = urlsplit(url)
    try:
        host, port = _url_host_port(url)
    except ValueError:  # a port that is not a number from 0 to 65535
        host, port = "", 0
    if parts.scheme not in ("rtmp", "rtmps") or not host or len(url) > 500:
        raise InvalidState("a destination is an rtmp:// or rtmps:// URL with a host, e.g. rtmp://a.rtmp.youtube.com/live2/<key>")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return url
    refusal = destination_address_check(host=host, port=port, addresses=[str(info[4][0]) for info in infos])
    if refusal:
        raise InvalidState(refusal)
    return url


def destination_add(*, classroom_id: int, actor: Actor, name: str, url: str) -> Destination:
    _require_manager(actor, "add broadcast destinations")
    url = destination_url_check(url)  # may ask DNS: before the transaction, not inside it
    return _destination_create(classroom_id=classroom_id, name=name, url=url)


@transaction.atomic
def _destination_create(*, classroom_id: int, name: str, url: str) -> Destination:
    if Destination.objects.filter(classroom_id=classroom_id).count() >= 5:
        raise InvalidState("a class has at most 5 extra destinations")
    destination = Destination.objects.create(classroom_id=classroom_id, name=(name.strip() or "RTMP")[:80], url=url)
    log.info("destination added", extra={"class_id": classroom_id, "destination_id": destination.pk})
    return destination


@transaction.atomic
def destination_remove(*, classroom_id: int, actor: Actor, destination_id: int) -> None:
    _require_manager(actor, "remove broadcast destinations")
    deleted, _ = Destination.objects.filter(classroom_id=classroom_id, pk=destination_id).delete()
    if not deleted:
        raise NotFound("no such destination")


@transaction.atomic
def stream_key_rotate(*, classroom_id: int, actor: Actor) -> str:
    _require_manager(actor, "rotate the stream key")
    classroom = Classroom.objects.select_for_update().get(pk=classroom_id)
    classroom.stream_key = stream_key_new()
    classroom.save(update_fields=["stream_key"])
    log.info("stream key rotated", extra={"class_id": classroom_id, "user_id": actor.user_id})
    return classroom.stream_key


def studio_info(*, classroom_id: int) -> dict[str, Any]:
    """What the instructor needs to publish from OBS, and the extra destinations. Managers only."""
    classroom = Classroom.objects.get(pk=classroom_id)
    return {
        "ingest_url": settings.CLASSCAST_RTMP_INGEST_URL,
        "stream_key": classroom.stream_key,
        "publish_url": f"{settings.CLASSCAST_RTMP_INGEST_URL}/{classroom.stream_key}",
        "destinations": [
            {"id": d.pk, "name": d.name, "url": d.url, "enabled": d.enabled} for d in classroom.destinations.all()
        ],
    }


# --- the compositor job's side -----------------------------------------------------------------------

def worker_name() -> str:
    import os

    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(broadcast: Broadcast) -> bool:
    stale = timezone.now() - timedelta(seconds=settings.CLASSCAST_BROADCAST_STALE_S)
    return bool(broadcast.worker) and broadcast.heartbeat_at is not None and broadcast.heartbeat_at >= stale


@transaction.atomic
def broadcast_claim(*, broadcast_id: int, worker: str, capacity: float) -> Broadcast | None:
    """Take the job for this worker, or refuse it: not wanted any more, someone else runs it, or this
    host has no room to run it at full frame rate (then the instructor is told why)."""
    broadcast = Broadcast.objects.select_for_update().select_related("session").filter(pk=broadcast_id).first()
    if broadcast is None or broadcast.status not in ACTIVE_BROADCAST_STATES:
        return None
    if broadcast.stop_requested or broadcast.session.status != "live":
        broadcast.status = BroadcastStatus.STOPPED
        broadcast.stopped_at = timezone.now()
        broadcast.save(update_fields=["status", "stopped_at"])
        return None
    if _alive(broadcast) and broadcast.worker != worker:
        return None  # a duplicate delivery while the job runs elsewhere
    host = worker.rsplit(":", 1)[0]
    stale = timezone.now() - timedelta(seconds=settings.CLASSCAST_BROADCAST_STALE_S)
    load = sum(
        b.cost_units
        for b in Broadcast.objects.filter(
            status__in=ACTIVE_BROADCAST_STATES, worker__startswith=f"{host}:", heartbeat_at__gte=stale
        ).exclude(pk=broadcast.pk)
    )
    if load + broadcast.cost_units > capacity:
        broadcast.status = BroadcastStatus.REFUSED
        broadcast.error = (
            f"No compositor capacity: this worker runs {load:g} of {capacity:g} units and a "
            f"{settings.CLASSCAST_PROGRAM_WIDTH}x{settings.CLASSCAST_PROGRAM_HEIGHT}@{settings.CLASSCAST_PROGRAM_FPS} "
            f"program needs {broadcast.cost_units:g}. Stop another broadcast or add a media worker."
        )
        broadcast.stopped_at = timezone.now()
        broadcast.save(update_fields=["status", "error", "stopped_at"])
        event_record(session=broadcast.session, kind=EventKind.BROADCAST_FAILED, data={"id": broadcast.pk, "reason": "capacity"})
        return None
    broadcast.status = BroadcastStatus.STARTING
    broadcast.worker = worker
    broadcast.attempts += 1
    broadcast.heartbeat_at = timezone.now()
    broadcast.started_at = broadcast.started_at or timezone.now()
    broadcast.error = ""
    broadcast.save(update_fields=["status", "worker", "attempts", "heartbeat_at", "started_at", "error"])
    return broadcast


@transaction.atomic
def broadcast_heartbeat(*, broadcast_id: int, worker: str, stats: dict[str, Any], live: bool) -> dict[str, Any]:
    """Report stats; returns the desired state (stop, layout, focus, destinations) for the job to apply."""
    broadcast = Broadcast.objects.select_for_update().select_related("session").get(pk=broadcast_id)
    if broadcast.worker != worker:
        return {"stop": True, "reason": "taken over by another worker"}
    became_live = live and broadcast.status != BroadcastStatus.LIVE
    broadcast.heartbeat_at = timezone.now()
    broadcast.stats = stats
    if live:
        broadcast.status = BroadcastStatus.LIVE
    broadcast.save(update_fields=["heartbeat_at", "stats", "status"])
    if became_live:
        event_record(session=broadcast.session, kind=EventKind.BROADCAST_LIVE, data={"id": broadcast.pk})
    stop = broadcast.stop_requested or broadcast.session.status != "live"
    return {
        "stop": stop,
        "reason": "session ended" if broadcast.session.status != "live" else "stop requested",
        "layout": broadcast.layout,
        "focus_user_id": broadcast.focus_user_id,
        "destinations": [
            {"id": f"dest-{d.pk}", "url": d.url}
            for d in Destination.objects.filter(classroom_id=broadcast.session.classroom_id, enabled=True)
        ],
    }


@transaction.atomic
def broadcast_finish(*, broadcast_id: int, worker: str, error: str = "", error_is_user: bool = False) -> None:
    broadcast = Broadcast.objects.select_for_update().select_related("session").get(pk=broadcast_id)
    if broadcast.worker != worker or broadcast.status not in ACTIVE_BROADCAST_STATES:
        return
    failed = bool(error) and not broadcast.stop_requested
    broadcast.status = BroadcastStatus.FAILED if failed else BroadcastStatus.STOPPED
    broadcast.error = error
    broadcast.error_is_user = error_is_user
    broadcast.stopped_at = timezone.now()
    broadcast.save(update_fields=["status", "error", "error_is_user", "stopped_at"])
    if failed:
        event_record(session=broadcast.session, kind=EventKind.BROADCAST_FAILED, data={"id": broadcast.pk, "reason": error})


@transaction.atomic
def broadcasts_watchdog() -> list[int]:
    """Jobs whose heartbeat stopped (a worker died) are queued again: the program comes back by
    itself and the HLS playlist continues after a discontinuity."""
    stale = timezone.now() - timedelta(seconds=settings.CLASSCAST_BROADCAST_STALE_S)
    restarted = []
    for broadcast in Broadcast.objects.select_for_update(skip_locked=True).filter(
        status__in=[BroadcastStatus.STARTING, BroadcastStatus.LIVE, BroadcastStatus.RESTARTING],
        stop_requested=False,
        heartbeat_at__lt=stale,
    ):
        broadcast.status = BroadcastStatus.RESTARTING
        broadcast.worker = ""
        broadcast.heartbeat_at = timezone.now()  # one restart per stale period, not one per sweep
        broadcast.save(update_fields=["status", "worker", "heartbeat_at"])
        log.warning("broadcast job lost its worker; restarting", extra={"broadcast_id": broadcast.pk})
        _enqueue(broadcast.pk)
        restarted.append(broadcast.pk)
    return restarted
