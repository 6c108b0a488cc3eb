from django.urls import path

from . import views

app_name = "classroom"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("classes/<int:classroom_id>/", views.class_page, name="class"),
    path("classes/<int:classroom_id>/console/", views.console_page, name="console"),
    path("classes/<int:classroom_id>/watch/", views.watch_page, name="watch"),
    path("api/classes/<int:classroom_id>/ice-servers/", views.ice_servers, name="ice_servers"),
    path("metrics", views.metrics_view, name="metrics"),
    path("healthz", views.healthz, name="healthz"),
]
