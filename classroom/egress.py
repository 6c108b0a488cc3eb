"""The compositor job, run by the `broadcast_run` Celery task: builds the pure compositor's configs
from settings and the database, joins the class as a hidden subscriber with a service token, and
keeps the job's row up to date (heartbeat, stats) while applying what the row asks (stop, layout,
destinations). Blocking PyAV work lives in the compositor's own threads, off this event loop."""
from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

from channels.db import database_sync_to_async
from django.conf import settings

from compositor.config import Destination, ProgramConfig
from compositor.egress import StageCompositor
from compositor.program import Program
from rtc.stage_client import StageClientConfig

from .models import Broadcast
from .services.broadcast import (
    broadcast_claim, broadcast_finish, broadcast_heartbeat, destination_address_check, worker_name,
)
from .services.ladder import ladder_from_settings, ladder_program_renditions, ladder_stream_key
from .services.tokens import service_token_issue

log = logging.getLogger("classcast.egress")
PACKAGER_DESTINATION = "packager"


def ingest_url(stream_key: str) -> str:
    return f"{settings.CLASSCAST_RTMP_INGEST_URL}/{stream_key}"


def signaling_config(*, classroom_id: int, name: str = "compositor") -> StageClientConfig:
    base = settings.CLASSCAST_SIGNALING_URL.rstrip("/")
    token = service_token_issue(classroom_id=classroom_id, purpose="egress", name=name)
    parts = urlsplit(base)
    origin = f"{'https' if parts.scheme == 'wss' else 'http'}://{parts.netloc}"
    return StageClientConfig(ws_url=f"{base}/ws/classes/{classroom_id}/?token={token}", origin=origin,
                             udp_receive_buffer=settings.CLASSCAST_UDP_RECEIVE_BUFFER)


def packager_destinations(*, stream_key: str, rungs: list[str]) -> list[Destination]:
    """One RTMP publish per ladder rung (`<key>~<rung>`, the top one is PACKAGER_DESTINATION); a
    one-rung ladder publishes the plain key, as OBS does."""
    if len(rungs) == 1:
        return [Destination(id=PACKAGER_DESTINATION, url=ingest_url(stream_key))]
    return [
        Destination(
            id=PACKAGER_DESTINATION if i == 0 else f"{PACKAGER_DESTINATION}-{rung}",
            url=ingest_url(ladder_stream_key(stream_key, rung)),
            rendition="" if i == 0 else rung,
        )
        for i, rung in enumerate(rungs)
    ]


def broadcast_job_run(*, broadcast_id: int) -> str:
    worker = worker_name()
    broadcast = broadcast_claim(
        broadcast_id=broadcast_id, worker=worker, capacity=settings.CLASSCAST_EGRESS_CAPACITY
    )
    if broadcast is None:
        return "not claimed"
    classroom = broadcast.session.classroom
    rungs = ladder_from_settings()
    program = Program(
        ProgramConfig(
            width=settings.CLASSCAST_PROGRAM_WIDTH,
            height=settings.CLASSCAST_PROGRAM_HEIGHT,
            fps=settings.CLASSCAST_PROGRAM_FPS,
            video_bitrate=settings.CLASSCAST_PROGRAM_VIDEO_BITRATE,
            audio_bitrate=settings.CLASSCAST_PROGRAM_AUDIO_BITRATE,
            keyint_s=settings.CLASSCAST_HLS_SEGMENT_S,
            layout=broadcast.layout,
            x264_preset=settings.CLASSCAST_X264_PRESET,
            h264_level=rungs[0].h264_level,
            renditions=ladder_program_renditions(rungs),
        ),
        destinations=packager_destinations(stream_key=classroom.stream_key, rungs=[r.name for r in rungs]),
    )
    error = ""
    try:
        asyncio.run(_supervise(broadcast, program, worker, signaling_config(classroom_id=classroom.pk)))
    except Exception as exc:  # our fault: reported on the row, the watchdog or the instructor retries
        log.exception("broadcast job failed", extra={"broadcast_id": broadcast_id, "class_id": classroom.pk})
        error = f"{exc.__class__.__name__}: {exc}"
    finally:
        program.stop()
        broadcast_finish(broadcast_id=broadcast_id, worker=worker, error=error)
    return "failed" if error else "stopped"


async def _supervise(broadcast: Broadcast, program: Program, worker: str, signaling: StageClientConfig) -> None:
    program.start()
    compositor = StageCompositor(signaling, program)
    stage = asyncio.ensure_future(compositor.run())
    extra: set[str] = set()
    layout: tuple[str, int | None] = (broadcast.layout, broadcast.focus_user_id)
    try:
        while True:
            stats = program.stats()
            control = await database_sync_to_async(broadcast_heartbeat)(
                broadcast_id=broadcast.pk, worker=worker, stats=jsonable(stats), live=_packager_live(stats)
            )
            if control["stop"]:
                log.info("broadcast stopping: %s", control.get("reason"), extra={"broadcast_id": broadcast.pk})
                return
            wanted_layout = (control["layout"], control["focus_user_id"])
            if wanted_layout != layout:
                layout = wanted_layout
                program.set_layout(layout[0], focus_user_id=layout[1])
            extra = _destinations_apply(program, extra, control["destinations"])
            if stage.done():
                stage.result()  # raises what broke the stage connection
                raise RuntimeError("the stage connection closed")
            if not stats.get("running", True):
                raise RuntimeError(f"the program stopped: {stats.get('error') or 'unknown error'}")
            await asyncio.sleep(settings.CLASSCAST_BROADCAST_HEARTBEAT_S)
    finally:
        # Let the stage connection close itself (rtc.leave, peer connection closed): cancelling aiortc
        # mid-close leaves it waiting on events nobody sets, and the job would never finish.
        await compositor.stop()
        try:
            await asyncio.wait_for(asyncio.shield(stage), timeout=15)
        except Exception:  # noqa: BLE001 - leaving anyway; what broke was reported above
            stage.cancel()


def _destinations_apply(program: Program, current: set[str], wanted: list[dict[str, Any]]) -> set[str]:
    wanted_ids = {d["id"] for d in wanted}
    for dest_id in current - wanted_ids:
        program.remove_destination(dest_id)
    for dest in wanted:
        if dest["id"] not in current:
            # The instructor's destinations are checked again right before each connect (what the name
            # resolves to then); the packager destination is our own ingest and carries no check.
            program.add_destination(Destination(id=dest["id"], url=dest["url"], address_check=destination_address_check))
    return wanted_ids


def _packager_live(stats: dict[str, Any]) -> bool:
    return stats.get("destinations", {}).get(PACKAGER_DESTINATION, {}).get("state") == "live"


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
