"""Celery app: the `default` queue for housekeeping and post-processing, `media` for egress jobs."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("classcast")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
