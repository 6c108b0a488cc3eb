"""The direct call's signaling relay and page server, run by bench/network.py in a thread.

One websockets server on the host's TUN address: `GET /` answers bench/p2p/index.html (the same origin
then opens `/ws`, so one --unsafely-treat-insecure-origin-as-secure entry covers page and socket), and
every text message on `/ws` goes to every other open socket. Two pages, no rooms: it is a bench.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
from http import HTTPStatus
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

PAGE = Path(__file__).with_name("index.html")


class SignalingRelay:
    """`with SignalingRelay(address) as relay: relay.url` -> http://address:port/ (the page)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.port = 0
        self._peers: set[ServerConnection] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="p2p-relay", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/"

    def __enter__(self) -> SignalingRelay:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the p2p relay did not start")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    def _run(self) -> None:
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self._relay, self.address, 0, process_request=self._page) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def _page(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.startswith("/ws"):
            return None  # go on with the WebSocket handshake
        if request.path.split("?")[0] not in ("/", "/index.html"):
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        response = connection.respond(HTTPStatus.OK, PAGE.read_text())
        response.headers["Content-Type"] = "text/html; charset=utf-8"
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _relay(self, connection: ServerConnection) -> None:
        self._peers.add(connection)
        try:
            async for message in connection:
                for peer in list(self._peers):
                    if peer is not connection:
                        with contextlib.suppress(ConnectionClosed):  # a page reloading meanwhile
                            await peer.send(message)
        finally:
            self._peers.discard(connection)
