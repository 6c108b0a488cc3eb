"""The embedded default's Celery broker: kombu's filesystem transport, with messages written atomically.

kombu (5.x) creates a message file, then locks and writes it; a consumer polling the folder can move
and read it in between, get a half-written message and die on the JSON (seen in the tests: the
housekeeping worker stopped consuming, so no watchdog ran). Here a message is written under a name
consumers ignore and renamed into place in one step, and a consumer that still finds an unreadable
message skips it instead of dying."""
from __future__ import annotations

import json
import logging
import os
import uuid
from time import monotonic

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

log = logging.getLogger("classcast.broker")


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs):  # noqa: ANN001, ANN003, ANN202 - kombu's signature
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = os.path.join(self.data_folder_out, f".{name}.partial")  # not "<queue>.msg": never picked up
        with open(partial, "wb") as handle:
            handle.write(str_to_bytes(dumps(payload)))
        os.replace(partial, final)

    def _get(self, queue):  # noqa: ANN001, ANN202
        while True:
            try:
                return super()._get(queue)
            except json.JSONDecodeError:
                log.error("skipped an unreadable message in queue %s", queue)


class Transport(filesystem.Transport):
    Channel = Channel
