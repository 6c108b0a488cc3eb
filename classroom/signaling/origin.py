"""The class socket's Origin check: a browser page may open it only from the site's own origin.

Channels' AllowedHostsOriginValidator compares host names only, so a page on another port of the same
host (another service on 127.0.0.1:8080) could open a socket with the visitor's cookies. Here the
Origin must equal, in scheme, host and port, either the origin the request was addressed to (its Host
header, whose host must be allowed, with the scheme the socket came in on) or one of
CSRF_TRUSTED_ORIGINS (the origins a TLS-terminating proxy serves the site from; `https://*.example.com`
allows subdomains as Django's CSRF check does).

Browsers always send Origin on a WebSocket. A socket without one is not a browser's (the egress
workers connect with `websockets` and a service token): it is let through with its cookies removed,
so it can authenticate only with a token and no browser session can ride on it.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import is_same_domain, split_domain_port, validate_host

from .. import metrics

DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_tuple(text: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) origin, port made explicit; None for anything else ("null")."""
    try:
        parts = urlsplit(text.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    return parts.scheme, parts.hostname, port if port is not None else DEFAULT_PORTS[parts.scheme]


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _allowed_hosts() -> list[str]:
    hosts = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not hosts:  # as Django's HttpRequest.get_host
        hosts = [".localhost", "127.0.0.1", "[::1]"]
    return hosts


def _scheme(scope: dict[str, Any]) -> str:
    """http or https, as the page was served: the socket's own scheme, or the proxy's word for it when
    SECURE_PROXY_SSL_HEADER says which header to trust (as Django's request.is_secure)."""
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        header, secure_value = proxy
        name = header.removeprefix("HTTP_").replace("_", "-").lower().encode("latin-1")
        value = _header(scope, name)
        if value is not None:
            return "https" if value.split(",", 1)[0].strip() == secure_value else "http"
    return "https" if scope.get("scheme") in ("wss", "https") else "http"


def site_origin(scope: dict[str, Any]) -> tuple[str, str, int] | None:
    """The origin this request was addressed to, if its Host is one of ours."""
    host = _header(scope, b"host")
    if not host:
        return None
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, _allowed_hosts()):
        return None
    return _origin_tuple(f"{_scheme(scope)}://{host}")


def origin_allowed(origin: str, scope: dict[str, Any]) -> bool:
    wanted = _origin_tuple(origin)
    if wanted is None:
        return False
    if wanted == site_origin(scope):
        return True
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        if "*" in trusted:
            pattern = _origin_tuple(trusted.replace("*", "wildcard", 1))
            if pattern is not None and pattern[0] == wanted[0] and pattern[2] == wanted[2]:
                if is_same_domain(wanted[1], "." + pattern[1].removeprefix("wildcard.")):
                    return True
        elif _origin_tuple(trusted) == wanted:
            return True
    return False


class SiteOriginMiddleware:
    """ASGI middleware for the websocket router (outside the auth middleware, which reads the cookies)."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            raise ValueError("SiteOriginMiddleware is for WebSocket connections only")
        origin = _header(scope, b"origin")
        if origin is None:
            headers = [(key, value) for key, value in scope.get("headers", []) if key != b"cookie"]
            return await self.application({**scope, "headers": headers}, receive, send)
        if origin_allowed(origin, scope):
            return await self.application(scope, receive, send)
        metrics.SOCKETS_REFUSED.labels(reason="origin").inc()
        return await WebsocketDenier()(scope, receive, send)
