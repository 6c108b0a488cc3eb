"""Pages and small JSON endpoints through django.test.Client, and the seed_demo command."""
from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import time
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from classroom.models import Classroom, Membership
from classroom.selectors import actor_get
from classroom.services.demo import DEMO_CLASS, DEMO_PASSWORD
from classroom.services.sessions import session_start
from classroom.services.stage import stage_accept, stage_invite

User = get_user_model()


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def cls(demo) -> dict[str, Any]:
    User.objects.create_user("eve", password="eve-password")  # a user in no class
    users = {u.username: u for u in User.objects.filter(username__in=["ada", "ben", "cleo", "dev", "admin", "eve"])}
    return {"id": demo["class_id"], "users": users, "demo": demo}


def client_for(cls: dict[str, Any], name: str | None) -> Client:
    client = Client()
    if name:
        client.force_login(cls["users"][name])
    return client


def urls(class_id: int) -> dict[str, str]:
    return {
        "class": f"/classes/{class_id}/",
        "console": f"/classes/{class_id}/console/",
        "watch": f"/classes/{class_id}/watch/",
        "ice": f"/api/classes/{class_id}/ice-servers/",
    }


# --- login and dashboard ------------------------------------------------------------------------------------------

def test_login_page_renders(db):
    response = Client().get("/accounts/login/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'name="username"' in html and 'name="password"' in html


def test_login_with_a_demo_account(cls):
    client = Client()
    response = client.post("/accounts/login/", {"username": "ben", "password": DEMO_PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert client.get("/").status_code == 200


def test_login_with_a_wrong_password_stays_on_the_form(cls):
    client = Client()
    response = client.post("/accounts/login/", {"username": "ben", "password": "nope"})
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session
    assert client.get("/").status_code == 302


def test_dashboard_requires_login(db):
    response = Client().get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert "next=/" in response["Location"]


@pytest.mark.parametrize("name", ["ada", "ben", "admin"])
def test_dashboard_lists_the_class(cls, name):
    response = client_for(cls, name).get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert DEMO_CLASS in html
    assert f"/classes/{cls['id']}/" in html


def test_dashboard_of_a_user_in_no_class_lists_nothing(cls):
    response = client_for(cls, "eve").get("/")
    assert response.status_code == 200
    assert DEMO_CLASS not in response.content.decode()


def test_dashboard_lists_only_my_classes(cls):
    Classroom.objects.create(title="Secret Seminar")
    assert "Secret Seminar" not in client_for(cls, "ben").get("/").content.decode()
    assert "Secret Seminar" in client_for(cls, "admin").get("/").content.decode()  # staff see every class


# --- class pages --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, page, status",
    [
        ("ada", "console", 200),
        ("admin", "console", 200),
        ("ben", "console", 403),  # a member without the right: told so
        ("eve", "console", 404),  # not a member: as if there were no such class
        ("ada", "class", 200),
        ("ben", "class", 200),
        ("cleo", "class", 200),
        ("admin", "class", 200),
        ("eve", "class", 404),
        ("ada", "watch", 200),
        ("dev", "watch", 200),
        ("eve", "watch", 404),
    ],
)
def test_class_pages_by_role(cls, name, page, status):
    response = client_for(cls, name).get(urls(cls["id"])[page])
    assert response.status_code == status


@pytest.mark.parametrize("page", ["class", "console", "watch"])
def test_class_pages_require_login(cls, page):
    response = Client().get(urls(cls["id"])[page])
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


@pytest.mark.parametrize("page", ["class", "console", "watch"])
def test_unknown_class_is_404(cls, page):
    assert client_for(cls, "ada").get(urls(cls["id"] + 1000)[page]).status_code == 404


def test_pages_show_the_class(cls):
    for name, page in (("ada", "console"), ("ben", "class"), ("cleo", "watch")):
        html = client_for(cls, name).get(urls(cls["id"])[page]).content.decode()
        assert DEMO_CLASS in html, page


# --- ICE servers --------------------------------------------------------------------------------------------------

def test_ice_servers_needs_login(cls):
    response = Client().get(urls(cls["id"])["ice"])
    assert response.status_code == 401
    assert "error" in response.json()


@pytest.mark.parametrize("name, status", [("ben", 403), ("eve", 404)])
def test_ice_servers_refused_off_stage(cls, name, status):
    assert client_for(cls, name).get(urls(cls["id"])["ice"]).status_code == status


def test_ice_servers_for_the_instructor(cls):
    response = client_for(cls, "ada").get(urls(cls["id"])["ice"])
    assert response.status_code == 200
    assert response.json() == {"iceServers": [], "ttl": 3600}
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]
    assert client_for(cls, "admin").get(urls(cls["id"])["ice"]).status_code == 200


def test_ice_servers_for_a_student_on_stage(cls):
    ada = actor_get(user=cls["users"]["ada"], classroom_id=cls["id"])
    ben = actor_get(user=cls["users"]["ben"], classroom_id=cls["id"])
    session_start(classroom_id=cls["id"], actor=ada)
    assert client_for(cls, "ben").get(urls(cls["id"])["ice"]).status_code == 403
    stage_invite(classroom_id=cls["id"], actor=ada, user_id=ben.user_id)
    stage_accept(classroom_id=cls["id"], actor=ben)
    assert client_for(cls, "ben").get(urls(cls["id"])["ice"]).status_code == 200
    assert client_for(cls, "cleo").get(urls(cls["id"])["ice"]).status_code == 403


def test_ice_servers_is_get_only(cls):
    assert client_for(cls, "ada").post(urls(cls["id"])["ice"]).status_code == 405


def test_ice_servers_with_turn_rest_credentials(cls, settings):
    settings.CLASSCAST_ICE_SERVERS = [{"urls": "stun:127.0.0.1:3478"}]
    settings.CLASSCAST_TURN_URLS = ["turn:127.0.0.1:3478"]
    settings.CLASSCAST_TURN_SECRET = "s3cret"
    ttl = settings.CLASSCAST_TURN_TTL_S
    ada = cls["users"]["ada"]

    before = time.time()
    response = client_for(cls, "ada").get(urls(cls["id"])["ice"])
    after = time.time()
    assert response.status_code == 200
    body = response.json()
    assert body["ttl"] == ttl
    stun, turn = body["iceServers"]
    assert stun == {"urls": "stun:127.0.0.1:3478"}
    assert turn["urls"] == ["turn:127.0.0.1:3478"]

    expiry_text, _, user = turn["username"].partition(":")
    assert user == f"user-{ada.pk}"
    expiry = int(expiry_text)
    assert int(before + ttl) <= expiry <= int(after + ttl)
    expected = base64.b64encode(hmac.new(b"s3cret", turn["username"].encode(), hashlib.sha1).digest()).decode()
    assert turn["credential"] == expected


def test_no_turn_server_without_a_secret(cls, settings):
    settings.CLASSCAST_TURN_URLS = ["turn:127.0.0.1:3478"]
    settings.CLASSCAST_TURN_SECRET = ""
    assert client_for(cls, "ada").get(urls(cls["id"])["ice"]).json()["iceServers"] == []


# --- metrics and health ----------------------------------------------------------------------------------------------

def metric_value(text: str, name: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and not sample.labels:
                return sample.value
    return None


def test_metrics_are_prometheus_text(cls):
    response = client_for(cls, "admin").get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert "classcast_live_sessions" in text
    assert "classcast_peer_connections" in text
    assert metric_value(text, "classcast_live_sessions") == 0

    session_start(classroom_id=cls["id"], actor=actor_get(user=cls["users"]["ada"], classroom_id=cls["id"]))
    text = client_for(cls, "admin").get("/metrics").content.decode()
    assert metric_value(text, "classcast_live_sessions") == 1
    assert metric_value(text, "classcast_stage_members") == 1


def test_metrics_need_the_bearer_token_when_one_is_set(db, settings):
    settings.CLASSCAST_METRICS_TOKEN = "scrape-me"
    client = Client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 401
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me")
    assert response.status_code == 200
    assert "classcast_live_sessions" in response.content.decode()


def test_metrics_token_with_non_ascii_characters_is_refused_not_a_crash(db, settings):
    settings.CLASSCAST_METRICS_TOKEN = "scrape-me"
    client = Client(raise_request_exception=False)
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scräpe-me").status_code == 401


def test_healthz(db):
    response = Client().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"ok": True}


# --- seed_demo ---------------------------------------------------------------------------------------------------------

@pytest.fixture
def seed_here(settings, tmp_path) -> None:
    """seed_demo as `make run` calls it (asked for on a scaled run), with its own var dir: the
    install's generated demo password."""
    settings.VAR_DIR = tmp_path
    settings.CLASSCAST_DEMO_DATA = True


def seed_json() -> dict[str, Any]:
    out = io.StringIO()
    call_command("seed_demo", "--json", stdout=out)
    text = out.getvalue().strip()
    assert "\n" not in text  # one JSON object, one line
    return json.loads(text)


def test_seed_demo_json(db, seed_here, settings):
    data = seed_json()
    password = (settings.VAR_DIR / "demo_password").read_text().strip()
    assert password != DEMO_PASSWORD and len(password) >= 12  # not the published one
    assert set(data) == {"instructor", "students", "admin", "class_id", "urls"}
    assert data["instructor"] == {"username": "ada", "password": password}
    assert [s["username"] for s in data["students"]] == ["ben", "cleo", "dev"]
    assert all(s["password"] == password for s in data["students"])
    assert data["admin"] == {"username": "admin", "password": password}
    class_id = data["class_id"]
    assert Classroom.objects.get(pk=class_id).title == DEMO_CLASS
    assert data["urls"] == {
        "instructor": f"/classes/{class_id}/console/",
        "student": f"/classes/{class_id}/",
        "watch": f"/classes/{class_id}/watch/",
    }
    # the printed logins work, with the right roles
    for login in [data["instructor"], *data["students"], data["admin"]]:
        assert User.objects.get(username=login["username"]).check_password(login["password"])
    roles = dict(Membership.objects.filter(classroom_id=class_id).values_list("user__username", "role"))
    assert roles == {"ada": "instructor", "ben": "student", "cleo": "student", "dev": "student"}
    admin = User.objects.get(username="admin")
    assert admin.is_staff and admin.is_superuser
    assert not User.objects.get(username="ada").is_staff


def test_seed_demo_is_idempotent(db, seed_here):
    first = seed_json()
    counts = (User.objects.count(), Classroom.objects.count(), Membership.objects.count())
    second = seed_json()
    assert second == first
    assert (User.objects.count(), Classroom.objects.count(), Membership.objects.count()) == counts == (5, 1, 4)


def test_seed_demo_prints_logins_for_people(db, seed_here, settings):
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    text = out.getvalue()
    for username in ("ada", "ben", "cleo", "dev", "admin"):
        assert username in text
    assert (settings.VAR_DIR / "demo_password").read_text().strip() in text
    assert DEMO_PASSWORD not in text
