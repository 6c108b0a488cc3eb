"""ASGI entry point: HTTP through Django (HLS requests of viewers it already let in answered in front
of it, see classroom.hls_views), `/ws/classes/<id>/` through the class consumer, behind an exact
Origin check (scheme, host and port: classroom.signaling.origin)."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from classroom.hls_views import hls_fast_path  # noqa: E402
from classroom.routing import websocket_urlpatterns  # noqa: E402
from classroom.signaling.origin import SiteOriginMiddleware  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": hls_fast_path(django_asgi_app),
        "websocket": SiteOriginMiddleware(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
