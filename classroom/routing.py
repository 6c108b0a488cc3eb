from django.urls import path

from .signaling.consumer import ClassConsumer

websocket_urlpatterns = [path("ws/classes/<int:classroom_id>/", ClassConsumer.as_asgi())]
