from django.urls import path

from . import hls_views, views

app_name = "classroom"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("classes/<int:classroom_id>/", views.class_page, name="class"),
    path("classes/<int:classroom_id>/console/", views.console_page, name="console"),
    path("classes/<int:classroom_id>/watch/", views.watch_page, name="watch"),
    path("api/classes/<int:classroom_id>/ice-servers/", views.ice_servers, name="ice_servers"),
    path("api/classes/<int:classroom_id>/broadcast/", views.broadcast_status, name="broadcast_status"),
    path("hls/classes/<int:classroom_id>/<str:name>", hls_views.hls_file, name="hls"),
    path("metrics", views.metrics_view, name="metrics"),
    path("healthz", views.healthz, name="healthz"),
]
