"""ICE servers for browsers and the media node, with TURN REST credentials for coturn.

coturn's `use-auth-secret` accepts username `<expiry unix time>:<user>` and password
base64(HMAC-SHA1(secret, username)), so credentials expire without any shared state.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

from django.conf import settings


def turn_credentials_make(*, secret: str, user: str, ttl_s: int, now: float | None = None) -> dict[str, Any]:
    expiry = int((now if now is not None else time.time()) + ttl_s)
    username = f"{expiry}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return {"username": username, "credential": base64.b64encode(digest).decode(), "ttl": ttl_s}


def ice_servers_for(*, user: str) -> list[dict[str, Any]]:
    """The configured STUN/TURN servers, with fresh TURN credentials for `user` when TURN is set up."""
    servers: list[dict[str, Any]] = [dict(s) for s in settings.CLASSCAST_ICE_SERVERS]
    if settings.CLASSCAST_TURN_URLS and settings.CLASSCAST_TURN_SECRET:
        creds = turn_credentials_make(
            secret=settings.CLASSCAST_TURN_SECRET, user=user, ttl_s=settings.CLASSCAST_TURN_TTL_S
        )
        servers.append(
            {"urls": list(settings.CLASSCAST_TURN_URLS), "username": creds["username"], "credential": creds["credential"]}
        )
    return servers
