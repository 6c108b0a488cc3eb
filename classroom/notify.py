"""Fan-out to sockets and media nodes through the channel layer, always after the transaction commits."""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Awaitable, Callable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

log = logging.getLogger("classcast.notify")


def class_group(classroom_id: int) -> str:
    return f"class.{classroom_id}"


def user_group(user_id: int) -> str:
    """Every class socket a person has open, in any class: told when their access may have changed."""
    return f"user.{user_id}"


def _layer_call(call: Callable[[], Awaitable[Any]]) -> None:
    """Run a channel-layer coroutine from synchronous code. A thread whose event loop is running (a
    signal fired by ORM code called from async code, e.g. Playwright's sync API in tests) cannot use
    async_to_sync: that send runs to completion on a short-lived thread of its own instead."""

    async def send() -> None:
        await call()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        async_to_sync(send)()
        return
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(send())
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=run, name="channel-layer-send")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]


def class_broadcast_on_commit(*, classroom_id: int, build: Callable[[], dict[str, Any]]) -> None:
    """Send `build()` to every socket of the class once committed (so it reads committed state)."""

    def send() -> None:
        message = build()  # here, in the committing thread: it reads the database
        _layer_call(lambda: get_channel_layer().group_send(class_group(classroom_id), message))

    transaction.on_commit(send)


def channel_send_on_commit(*, channel: str, message: dict[str, Any]) -> None:
    transaction.on_commit(lambda: _layer_call(lambda: get_channel_layer().send(channel, message)))


def user_send_on_commit(*, user_id: int, message: dict[str, Any]) -> None:
    """Tell every socket of this person, once committed. A layer that cannot be reached does not undo
    or fail the change that was made (the sockets re-check on their own, CLASSCAST_WS_ACCESS_RECHECK_S)."""

    def send() -> None:
        try:
            _layer_call(lambda: get_channel_layer().group_send(user_group(user_id), message))
        except Exception:
            log.exception("could not tell the sockets of user %s", user_id)

    transaction.on_commit(send)
