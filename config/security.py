"""Web-facing protections wired in settings: the CSP header's socket origin, who a request comes from
(for sign-in throttling) and the page a throttled sign-in gets."""
from __future__ import annotations

from typing import Any

from csp.middleware import CSPMiddleware, PolicyParts
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import render
from django.utils import timezone


class ContentSecurityPolicyMiddleware(CSPMiddleware):
    """django-csp's policy, with ws(s)://<this host> in connect-src: the class socket. Not every
    browser lets 'self' cover WebSocket URLs, and the host is the one Django already validated."""

    def get_policy_parts(
        self, request: HttpRequest, response: HttpResponseBase, report_only: bool = False
    ) -> PolicyParts:
        parts = super().get_policy_parts(request, response, report_only)
        try:
            host = request.get_host()
        except DisallowedHost:
            return parts  # a 400 page: nothing connects
        socket_origin = f"{'wss' if request.is_secure() else 'ws'}://{host}"
        parts.update = {**(parts.update or {}), "connect-src": [socket_origin]}
        return parts


def client_ip(request: HttpRequest) -> str:
    """The address a request comes from. Behind CLASSCAST_PROXY_COUNT trusted proxies, the one the
    outermost of them saw (counted from the right of X-Forwarded-For: what is left of it the client
    wrote itself); otherwise the socket's peer."""
    proxies = settings.CLASSCAST_PROXY_COUNT
    if proxies > 0:
        hops = [hop.strip() for hop in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if hop.strip()]
        if len(hops) >= proxies:
            return hops[-proxies]
    return request.META.get("REMOTE_ADDR", "")


def login_paused(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    """django-axes' lockout response (AXES_LOCKOUT_CALLABLE), for the site's and the admin's sign-in.

    A refused attempt during a lockout starts the cool-off again (axes' default), so it ends one
    cool-off from now. axes calls this with (request, response, credentials) or (request, credentials)
    depending on its sync or async path: neither is needed here."""
    cool_off = settings.AXES_COOLOFF_TIME
    minutes = max(1, round(cool_off.total_seconds() / 60))
    response = render(
        request,
        "registration/login_paused.html",
        {"minutes": minutes, "until": timezone.now() + cool_off, "failure_limit": settings.AXES_FAILURE_LIMIT},
        status=429,
    )
    response["Retry-After"] = str(int(cool_off.total_seconds()))
    return response
