"""Small typed readers for environment variables and secret files (settings stay declarative)."""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return list(default or [])
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_json(name: str, default: Any) -> Any:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return json.loads(raw)


# --- secrets ------------------------------------------------------------------------------------------

# Keys anyone can read (earlier versions' source, Django's startproject prefix): never sign with them.
PUBLISHED_SECRET_KEYS = frozenset({"dev-only-insecure-key-change-me-in-production-0123456789"})
SECRET_KEY_MIN_LENGTH = 50  # what `check --deploy` asks for


def secret_read_or_create(path: Path, *, nbytes: int = 48) -> str:
    """The secret kept in `path`, made at random (mode 0600) the first time it is asked for.

    Processes starting together agree on one value: each writes a complete candidate to a private
    file and hard-links it into place, which succeeds for exactly one of them; the rest read the winner.
    """
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    candidate = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(nbytes) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(candidate, path)
        except FileExistsError:
            pass  # another process won the race: use its value
    finally:
        candidate.unlink(missing_ok=True)
    return path.read_text().strip()


def secret_key_load(*, var_dir: Path, embedded: bool) -> str:
    """DJANGO_SECRET_KEY, else the file DJANGO_SECRET_KEY_FILE names, else (embedded default only) a key
    generated once into the var dir. Refuses to start on none, a published key or a short one."""
    key, source = env_str("DJANGO_SECRET_KEY").strip(), "DJANGO_SECRET_KEY"
    key_file = env_str("DJANGO_SECRET_KEY_FILE")
    if not key and key_file:
        try:
            key = Path(key_file).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(
                f"DJANGO_SECRET_KEY_FILE={key_file} cannot be read ({exc.strerror}): point it at a file "
                "holding the secret key, readable by this service."
            ) from None
        source = f"DJANGO_SECRET_KEY_FILE ({key_file})"
    elif not key:
        if not embedded:
            raise ImproperlyConfigured(
                "DJANGO_SECRET_KEY is not set. This start is not the one-machine embedded default "
                "(DATABASE_URL is not SQLite, or REDIS_URL is set), so every web, media-node and worker "
                "process must sign with the same key: set DJANGO_SECRET_KEY (at least "
                f"{SECRET_KEY_MIN_LENGTH} random characters, e.g. the output of "
                "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`) or DJANGO_SECRET_KEY_FILE "
                "(a file holding it) in the environment of every process."
            )
        path = var_dir / "secret_key"
        key, source = secret_read_or_create(path), str(path)
    if key in PUBLISHED_SECRET_KEYS or key.startswith("django-insecure-"):
        raise ImproperlyConfigured(
            f"The secret key from {source} is published (anyone could forge sessions and tokens with it): "
            "set DJANGO_SECRET_KEY to a new random value."
        )
    if len(key) < SECRET_KEY_MIN_LENGTH or len(set(key)) < 5:
        raise ImproperlyConfigured(
            f"The secret key from {source} is too short or too plain ({len(key)} characters): use at least "
            f"{SECRET_KEY_MIN_LENGTH} random characters, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(50))'`."
        )
    return key
