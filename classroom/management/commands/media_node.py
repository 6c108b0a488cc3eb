import asyncio
import signal

from django.conf import settings
from django.core.management.base import BaseCommand
from prometheus_client import start_http_server

from classroom.media_node.node import MediaNode


class Command(BaseCommand):
    help = "Run a media node (aiortc SFU) on its own; needs a shared channel layer (REDIS_URL)."

    def add_arguments(self, parser):
        parser.add_argument("--node-id", default=settings.CLASSCAST_MEDIA_NODE_ID)
        parser.add_argument("--metrics-port", type=int, default=settings.CLASSCAST_MEDIA_NODE_METRICS_PORT)

    def handle(self, *args, **options):
        if options["metrics_port"]:
            start_http_server(options["metrics_port"], addr=settings.CLASSCAST_METRICS_BIND)
        asyncio.run(self._run(options["node_id"]))

    async def _run(self, node_id: str) -> None:
        node = MediaNode(node_id=node_id, capacity=settings.CLASSCAST_MEDIA_NODE_CAPACITY)
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(node.run())
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        self.stdout.write(f"media node {node_id} listening on {node.channel}")
        try:
            await task
        except asyncio.CancelledError:
            pass
