"""A production start: the secret key, the HTTPS switch (`check --deploy` clean with the README's
production settings), demo data only where asked for, and what the service writes kept private.

The settings are read from the environment when a process starts, so most of these start one
(`manage.py ...`) with exactly the environment they are about.
"""
from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

ROOT = Path(__file__).resolve().parent.parent
OLD_DEV_KEY = "dev-only-insecure-key-change-me-in-production-0123456789"


def bare_env(**extra: str) -> dict[str, str]:
    """This machine's environment without any classcast/Django setting: what a fresh shell has."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("PYTEST", "DJANGO_", "CLASSCAST_"))
        and k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
    }
    env.update(DJANGO_SETTINGS_MODULE="config.settings", PYTHONUNBUFFERED="1", **extra)
    return env


def production_env(var_dir: Path, **extra: str) -> dict[str, str]:
    """The production settings the README documents (the database and Redis are never reached here)."""
    env = bare_env(
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="class.example.org",
        CLASSCAST_HTTPS="true",
        DATABASE_URL="postgres://classcast@db.internal:5432/classcast",
        REDIS_URL="redis://redis.internal:6379/0",
        CELERY_BROKER_URL="redis://redis.internal:6379/1",
        CLASSCAST_METRICS_TOKEN=secrets.token_urlsafe(32),
        CLASSCAST_VAR_DIR=str(var_dir),
    )
    env.update(extra)
    return env


def manage(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def python(env: dict[str, str], code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


KEY_DIGEST = (
    "import hashlib; from django.conf import settings; "
    "print(hashlib.sha256(settings.SECRET_KEY.encode()).hexdigest())"
)


def world_bits(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode) & 0o007


# --- the secret key ------------------------------------------------------------------------------------------


@pytest.mark.once
def test_check_deploy_is_clean_with_the_documented_production_settings(tmp_path):
    done = manage(production_env(tmp_path / "var"), "check", "--deploy", "--fail-level", "WARNING")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "System check identified no issues" in done.stdout


@pytest.mark.once
@pytest.mark.parametrize(
    "env",
    [
        {"DATABASE_URL": "postgres://classcast@db.internal:5432/classcast"},
        {"REDIS_URL": "redis://redis.internal:6379/0"},  # SQLite, but several processes share a layer
    ],
    ids=["postgres", "redis"],
)
def test_a_scaled_out_start_without_a_key_is_refused(tmp_path, env):
    done = manage(bare_env(CLASSCAST_VAR_DIR=str(tmp_path / "var"), **env), "check")
    assert done.returncode != 0
    assert "ImproperlyConfigured: DJANGO_SECRET_KEY is not set" in done.stderr
    assert "DJANGO_SECRET_KEY_FILE" in done.stderr  # says what to set
    assert not (tmp_path / "var" / "secret_key").exists()  # no key made up on a machine of many


@pytest.mark.once
@pytest.mark.parametrize(
    ("key", "words"),
    [
        (OLD_DEV_KEY, "is published"),
        ("django-insecure-" + "x1y2z3" * 9, "is published"),
        ("a-short-secret-key", "too short"),
        ("ab" * 30, "too short or too plain"),
    ],
    ids=["old-dev-key", "startproject-key", "short", "plain"],
)
def test_a_published_or_weak_key_is_refused_everywhere(tmp_path, key, words):
    embedded = bare_env(CLASSCAST_VAR_DIR=str(tmp_path / "var"), DJANGO_SECRET_KEY=key)
    for env in (embedded, production_env(tmp_path / "var", DJANGO_SECRET_KEY=key)):
        done = manage(env, "check")
        assert done.returncode != 0
        assert words in done.stderr, done.stderr[-2000:]


@pytest.mark.once
def test_the_key_can_come_from_a_file(tmp_path):
    key = secrets.token_urlsafe(50)
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    env = production_env(tmp_path / "var", DJANGO_SECRET_KEY="", DJANGO_SECRET_KEY_FILE=str(key_file))
    done = python(env, KEY_DIGEST)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == hashlib.sha256(key.encode()).hexdigest()

    env["DJANGO_SECRET_KEY_FILE"] = str(tmp_path / "missing")
    done = manage(env, "check")
    assert done.returncode != 0
    assert f"DJANGO_SECRET_KEY_FILE={tmp_path / 'missing'} cannot be read" in done.stderr


def _read_or_create(path: str, barrier) -> str:  # a multiprocessing target: module level
    from config.env import secret_read_or_create

    barrier.wait()
    return secret_read_or_create(Path(path))


@pytest.mark.once
def test_processes_starting_together_agree_on_one_generated_key(tmp_path):
    path = tmp_path / "secret_key"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(6)
        with ctx.Pool(6) as pool:
            keys = pool.starmap(_read_or_create, [(str(path), barrier)] * 6)
    assert len(set(keys)) == 1 and len(keys[0]) >= 50
    assert path.read_text().strip() == keys[0]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]  # no candidate files left behind


@pytest.mark.once
def test_the_embedded_default_makes_a_key_once_and_keeps_what_it_writes_private(tmp_path):
    """`make run`: no key set, SQLite, no Redis. The key is made once into the var dir and every later
    process (web, workers, the next start) uses it; the var dir, the database and the key are not
    world-readable."""
    var = tmp_path / "var"
    env = bare_env(CLASSCAST_VAR_DIR=str(var))
    procs = [subprocess.Popen([sys.executable, "-c", KEY_DIGEST], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    digests = {proc.communicate(timeout=120)[0].strip() for proc in procs}
    assert len(digests) == 1 and all(p.returncode == 0 for p in procs)

    done = manage(env, "migrate", "--noinput")
    assert done.returncode == 0, done.stderr[-3000:]
    done = manage(env, "seed_demo", "--json")
    assert done.returncode == 0, done.stderr[-3000:]
    assert python(env, KEY_DIGEST).stdout.strip() in digests  # the next start: the same key

    key = (var / "secret_key").read_text().strip()
    assert key != OLD_DEV_KEY and len(key) >= 50
    assert stat.S_IMODE(var.stat().st_mode) == 0o700
    for path in (var / "secret_key", var / "demo_password"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in (var / "classcast.sqlite3", var / "celery", var / "staticfiles"):
        assert world_bits(path) == 0, f"{path} is world-accessible: {oct(path.stat().st_mode)}"


# --- the HTTPS switch ------------------------------------------------------------------------------------------

HTTPS_PROBE = """
import json
import django
django.setup()
from django.conf import settings
from django.test import Client
c = Client(HTTP_HOST="class.example.org")
plain = c.get("/accounts/login/")
health = c.get("/healthz")
secure = c.get("/accounts/login/", HTTP_X_FORWARDED_PROTO="https")
print(json.dumps({
    "redirect": [plain.status_code, plain.get("Location")],
    "healthz": health.status_code,
    "secure": secure.status_code,
    "hsts": secure.get("Strict-Transport-Security"),
    "csp": secure.get("Content-Security-Policy"),
    "frame": secure.get("X-Frame-Options"),
    "referrer": secure.get("Referrer-Policy"),
    "csrf_cookie": {k: secure.cookies["csrftoken"][k] for k in ("secure", "httponly")},
    "session_cookie": [settings.SESSION_COOKIE_SECURE, settings.SESSION_COOKIE_HTTPONLY],
}))
"""


@pytest.mark.once
def test_the_https_switch_sets_secure_cookies_redirect_and_hsts(tmp_path):
    done = python(production_env(tmp_path / "var"), HTTPS_PROBE)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["redirect"] == [301, "https://class.example.org/accounts/login/"]
    assert seen["healthz"] == 200  # probes reach the process directly, over http
    assert seen["secure"] == 200  # the proxy said https
    assert seen["hsts"] == "max-age=31536000; includeSubDomains"
    assert "wss://class.example.org" in seen["csp"] and "frame-ancestors 'none'" in seen["csp"]
    assert seen["frame"] == "DENY" and seen["referrer"] == "same-origin"
    assert seen["csrf_cookie"] == {"secure": True, "httponly": True}
    assert seen["session_cookie"] == [True, True]

    # HSTS is the operator's to tune
    env = production_env(tmp_path / "var", CLASSCAST_HSTS_SECONDS="600", CLASSCAST_HSTS_INCLUDE_SUBDOMAINS="false",
                         CLASSCAST_HSTS_PRELOAD="true")
    seen = json.loads(python(env, HTTPS_PROBE).stdout.strip().splitlines()[-1])
    assert seen["hsts"] == "max-age=600; preload"


# --- demo data -------------------------------------------------------------------------------------------------


@pytest.mark.once
def test_a_production_start_refuses_to_create_demo_logins(tmp_path):
    done = manage(production_env(tmp_path / "var"), "seed_demo")
    assert done.returncode != 0
    assert "Not creating demo data" in done.stderr
    assert "--allow-production" in done.stderr and "CLASSCAST_DEMO_DATA=true" in done.stderr


@pytest.fixture
def var_dir(settings, tmp_path) -> Path:
    settings.VAR_DIR = tmp_path
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return tmp_path


def seed(*args: str) -> dict:
    out = io.StringIO()
    call_command("seed_demo", "--json", *args, stdout=out)
    return json.loads(out.getvalue())


def test_demo_logins_only_where_asked_for(db, var_dir, settings):
    User = get_user_model()
    settings.CLASSCAST_EMBEDDED_DEFAULT = False
    settings.CLASSCAST_DEMO_DATA = False
    with pytest.raises(CommandError, match="--allow-production"):
        seed()
    assert not User.objects.exists()

    assert seed("--allow-production")["admin"]["username"] == "admin"
    User.objects.all().delete()
    settings.CLASSCAST_DEMO_DATA = True
    assert seed()["admin"]["username"] == "admin"
    User.objects.all().delete()
    settings.CLASSCAST_DEMO_DATA = False
    settings.CLASSCAST_EMBEDDED_DEFAULT = True  # `make run`
    assert seed()["admin"]["username"] == "admin"


def test_the_demo_password_is_generated_per_install_and_kept(db, var_dir, settings):
    from classroom.services.demo import DEMO_PASSWORD, demo_seed

    User = get_user_model()
    settings.CLASSCAST_EMBEDDED_DEFAULT = True
    demo_seed()  # an install seeded by an earlier version, with the published password
    first = seed()
    password = first["admin"]["password"]
    assert password != DEMO_PASSWORD and len(password) >= 12
    assert stat.S_IMODE((var_dir / "demo_password").stat().st_mode) == 0o600
    admin = User.objects.get(username="admin")
    assert admin.check_password(password) and not admin.check_password(DEMO_PASSWORD)
    assert seed() == first  # every `make run` prints the same logins

    other = seed_elsewhere(settings, var_dir.parent / "other-install")
    assert other["admin"]["password"] != password  # another install, another password


def seed_elsewhere(settings, var: Path) -> dict:
    var.mkdir()
    settings.VAR_DIR = var
    return seed()
