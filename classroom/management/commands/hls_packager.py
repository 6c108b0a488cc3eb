import asyncio
import logging
import signal

from channels.db import database_sync_to_async
from django.conf import settings
from django.core.management.base import BaseCommand
from prometheus_client import start_http_server

from classroom.services.ingest import ingest_folder_for_key, ingest_events
from classroom.services.ladder import ladder_from_settings, ladder_renditions
from hls_packager.config import PackagerConfig
from hls_packager.server import IngestServer

log = logging.getLogger("classcast.packager")


class Command(BaseCommand):
    help = "Run the RTMP ingest + HLS packager (compositor, OBS and ffmpeg publish here with a stream key)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=settings.CLASSCAST_RTMP_HOST)
        parser.add_argument("--port", type=int, default=settings.CLASSCAST_RTMP_PORT)
        parser.add_argument("--metrics-port", type=int, default=settings.CLASSCAST_PACKAGER_METRICS_PORT)

    def handle(self, *args, **options):
        if options["metrics_port"]:
            start_http_server(options["metrics_port"], addr=settings.CLASSCAST_METRICS_BIND)
        config = PackagerConfig(
            host=options["host"],
            port=options["port"],
            output_dir=settings.CLASSCAST_HLS_ROOT,
            segment_duration_s=settings.CLASSCAST_HLS_SEGMENT_S,
            live_window=settings.CLASSCAST_HLS_WINDOW,
            part_target_s=settings.CLASSCAST_HLS_PART_S,
            max_publishers=settings.CLASSCAST_RTMP_MAX_PUBLISHERS,
            max_pending=settings.CLASSCAST_RTMP_MAX_PENDING,
            max_pending_per_ip=settings.CLASSCAST_RTMP_MAX_PENDING_PER_IP,
            max_connections_per_ip=settings.CLASSCAST_RTMP_MAX_CONNECTIONS_PER_IP,
            handshake_timeout_s=settings.CLASSCAST_RTMP_AUTH_TIMEOUT_S,
            ladder=ladder_renditions(ladder_from_settings()),
        )
        asyncio.run(self._run(config))

    async def _run(self, config: PackagerConfig) -> None:
        server = IngestServer(
            config, resolve_key=database_sync_to_async(ingest_folder_for_key), events=ingest_events()
        )
        await server.start()
        self.stdout.write(f"hls packager: rtmp://{config.host}:{server.port}/live/<stream key> -> {config.output_dir}")
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
        await server.close()
