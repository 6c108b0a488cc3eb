"""Sign-in throttling (django-axes): after N failed sign-ins for one username from one address, that
username is paused from that address for a cool-off, with a page that says so in words; other people
at the same address (a school behind one NAT) and the same person elsewhere are not affected."""
from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client, RequestFactory

from classroom.services.demo import DEMO_PASSWORD

SCHOOL = "203.0.113.7"  # one NAT address for a whole school
HOME = "198.51.100.20"


@pytest.fixture(autouse=True)
def fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def sign_in(username: str, password: str, *, ip: str, path: str = "/accounts/login/") -> tuple[Client, object]:
    client = Client(REMOTE_ADDR=ip)
    data = {"username": username, "password": password}
    if path.startswith("/admin/"):
        data["next"] = "/admin/"
    return client, client.post(path, data)


def test_failed_sign_ins_pause_that_username_from_that_address(demo, settings):
    assert settings.AXES_FAILURE_LIMIT == 5
    for _ in range(4):
        _, response = sign_in("ben", "wrong", ip=SCHOOL)
        assert response.status_code == 200 and "username and password didn" in response.content.decode()
    _, response = sign_in("ben", "wrong", ip=SCHOOL)  # the fifth
    assert response.status_code == 429

    # Now even the right password is refused, with a page that says what happened and when to retry.
    client, response = sign_in("ben", DEMO_PASSWORD, ip=SCHOOL)
    assert response.status_code == 429
    html = response.content.decode()
    assert "Sign-in paused" in html and "Try again in 15 minutes" in html
    assert response["Retry-After"] == "900"
    assert client.get("/").status_code == 302  # not signed in

    # The rest of the school signs in; so does ben from home.
    _, response = sign_in("cleo", DEMO_PASSWORD, ip=SCHOOL)
    assert response.status_code == 302 and response["Location"] == "/"
    _, response = sign_in("ben", DEMO_PASSWORD, ip=HOME)
    assert response.status_code == 302


def test_the_pause_ends_after_the_cool_off(demo, settings):
    from axes.models import AccessAttempt

    settings.AXES_FAILURE_LIMIT = 2
    for _ in range(2):
        sign_in("ada", "wrong", ip=SCHOOL)
    assert sign_in("ada", DEMO_PASSWORD, ip=SCHOOL)[1].status_code == 429

    AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time - timedelta(minutes=16))
    client, response = sign_in("ada", DEMO_PASSWORD, ip=SCHOOL)
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    assert not AccessAttempt.objects.exists()  # a success forgets the earlier failures


def test_a_success_before_the_limit_starts_the_count_again(demo, settings):
    settings.AXES_FAILURE_LIMIT = 3
    for _ in range(2):
        sign_in("dev", "wrong", ip=SCHOOL)
    assert sign_in("dev", DEMO_PASSWORD, ip=SCHOOL)[1].status_code == 302
    for _ in range(2):
        assert sign_in("dev", "wrong", ip=SCHOOL)[1].status_code == 200  # a typo later is not the third


def test_the_admin_sign_in_is_throttled_too(demo, settings):
    settings.AXES_FAILURE_LIMIT = 3
    for _ in range(2):
        assert sign_in("admin", "wrong", ip=SCHOOL, path="/admin/login/")[1].status_code == 200
    _, response = sign_in("admin", "wrong", ip=SCHOOL, path="/admin/login/")
    assert response.status_code == 429
    client, response = sign_in("admin", DEMO_PASSWORD, ip=SCHOOL, path="/admin/login/")
    assert response.status_code == 429 and "Sign-in paused" in response.content.decode()
    assert client.get("/admin/").status_code == 302  # to the login page: not in
    # the same count whichever form is used
    assert sign_in("admin", DEMO_PASSWORD, ip=SCHOOL)[1].status_code == 429


@pytest.mark.once
@pytest.mark.parametrize(
    ("proxies", "forwarded", "expected"),
    [
        (0, "10.9.9.9", "192.0.2.1"),  # no proxy in front: a client's header means nothing
        (1, "10.9.9.9, 203.0.113.7", "203.0.113.7"),  # what our one proxy saw; the rest is the client's
        (2, "203.0.113.7, 10.0.0.2", "203.0.113.7"),
        (2, "10.0.0.2", "192.0.2.1"),  # fewer hops than proxies: not trusted
    ],
)
def test_the_client_address_behind_trusted_proxies(settings, proxies, forwarded, expected):
    from config.security import client_ip

    settings.CLASSCAST_PROXY_COUNT = proxies
    request = RequestFactory().get("/", REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR=forwarded)
    assert client_ip(request) == expected
