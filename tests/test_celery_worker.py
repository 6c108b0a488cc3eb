"""A real Celery worker (the Procfile's command) takes a task from the configured broker and runs it
against the shared database: the media-node reaper that re-pins classes whose node died."""
from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from .conftest import ROOT, server_env, stop_processes

pytestmark = pytest.mark.slow


@pytest.fixture
def celery_worker_proc(transactional_db, tmp_path):
    log = open(tmp_path / "worker.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "default", "--pool", "solo", "-l", "INFO"],
        cwd=ROOT, env=server_env(), stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while "ready." not in (tmp_path / "worker.log").read_text():
        assert proc.poll() is None, (tmp_path / "worker.log").read_text()
        assert time.monotonic() < deadline, "the worker did not come up"
        time.sleep(0.2)
    yield proc, tmp_path / "worker.log"
    stop_processes([proc])


def test_worker_reaps_dead_media_nodes(celery_worker_proc):
    from classroom.models import MediaNode
    from classroom.tasks import media_nodes_reap

    proc, log = celery_worker_proc
    now = timezone.now()
    MediaNode.objects.create(node_id="dead", channel="media-node.dead", heartbeat_at=now - timedelta(minutes=10))
    MediaNode.objects.create(node_id="alive", channel="media-node.alive", heartbeat_at=now)

    media_nodes_reap.delay()

    deadline = time.monotonic() + 60
    while MediaNode.objects.filter(node_id="dead").exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"the task never ran (broker {settings.CELERY_BROKER_URL})\n{log.read_text()}"
        time.sleep(0.2)
    assert MediaNode.objects.filter(node_id="alive").exists()
    assert "classroom.tasks.media_nodes_reap" in log.read_text()
