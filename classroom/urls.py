from django.urls import path

from . import hls_views, recording_views, views

app_name = "classroom"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("classes/<int:classroom_id>/", views.class_page, name="class"),
    path("classes/<int:classroom_id>/console/", views.console_page, name="console"),
    path("classes/<int:classroom_id>/watch/", views.watch_page, name="watch"),
    path("api/classes/<int:classroom_id>/ice-servers/", views.ice_servers, name="ice_servers"),
    path("api/classes/<int:classroom_id>/broadcast/", views.broadcast_status, name="broadcast_status"),
    path("hls/classes/<int:classroom_id>/<path:name>", hls_views.hls_file, name="hls"),  # <rung>/<file> too
    path("classes/<int:classroom_id>/recording-settings/", recording_views.class_recording_settings,
         name="class_recording_settings"),
    path("recordings/", recording_views.recordings_list, name="recordings"),
    path("recordings/audit/", recording_views.audit_log, name="audit_log"),
    path("recordings/<int:recording_id>/", recording_views.recording_detail, name="recording_detail"),
    path("recordings/<int:recording_id>/status/", recording_views.recording_status, name="recording_status"),
    path("recordings/<int:recording_id>/review.json", recording_views.recording_review_links, name="recording_review"),
    path("recordings/<int:recording_id>/files/<path:name>", recording_views.recording_file, name="recording_file"),
    path("recordings/<int:recording_id>/share/", recording_views.recording_share, name="recording_share"),
    path("recordings/<int:recording_id>/delete/", recording_views.recording_delete, name="recording_delete"),
    path("recordings/<int:recording_id>/retry/", recording_views.recording_retry, name="recording_retry"),
    path("metrics", views.metrics_view, name="metrics"),
    path("healthz", views.healthz, name="healthz"),
]
