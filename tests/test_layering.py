"""Imports point one way (ARCHITECTURE.md section 4, rule 1): the pure-media packages import no Django,
Channels, Celery, nor anything of the classroom app or the project config."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MEDIA_PACKAGES = ("rtc", "sfu", "compositor", "hls_packager", "recorder")
FORBIDDEN = frozenset({"django", "channels", "celery", "classroom", "config"})


def media_sources(package: str) -> list[Path]:
    base = ROOT / package
    return sorted(
        path
        for path in base.rglob("*.py")
        if "tests" not in path.relative_to(base).parts[:-1] and not path.name.startswith("test_")
    )


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, *, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """Every absolute module name `source` imports (relative imports resolved against `module`),
    including `importlib.import_module("...")` and `__import__("...")` with a literal name."""
    tree = ast.parse(source)
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                found.append((node.lineno, node.module or ""))
            else:
                base = package[: len(package) - (node.level - 1)] if node.level - 1 <= len(package) else []
                if node.level - 1 > len(package) or not base:
                    # climbs out of the top-level package: `from .. import classroom` and the like
                    names = [node.module] if node.module else [a.name for a in node.names]
                    found.extend((node.lineno, name) for name in names)
                else:
                    found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def forbidden_imports(source: str, *, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    return [
        (line, name)
        for line, name in imported_modules(source, module=module, is_package=is_package)
        if name.split(".")[0] in FORBIDDEN
    ]


@pytest.mark.parametrize("package", MEDIA_PACKAGES)
def test_media_package_exists(package):
    assert (ROOT / package).is_dir()


@pytest.mark.parametrize("package", MEDIA_PACKAGES)
def test_media_package_imports_no_django_or_app_code(package):
    violations = []
    for path in media_sources(package):
        source = path.read_text(encoding="utf-8")
        for line, name in forbidden_imports(source, module=module_name(path), is_package=path.name == "__init__.py"):
            violations.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert violations == []


# Within the media plane data flows down too: rtc/ is what the others share, the SFU forwards, egress
# (compositor, recorder) joins through rtc/ like a client and never reaches into the SFU.
MEDIA_MAY_IMPORT = {
    "rtc": set(),
    "sfu": {"rtc"},
    "compositor": {"rtc"},
    "recorder": {"rtc"},
    "hls_packager": set(),
}


@pytest.mark.parametrize("package", MEDIA_PACKAGES)
def test_media_packages_import_each_other_only_downwards(package):
    others = set(MEDIA_PACKAGES) - {package}
    violations = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in media_sources(package)
        for line, name in imported_modules(
            path.read_text(encoding="utf-8"), module=module_name(path), is_package=path.name == "__init__.py"
        )
        if name.split(".")[0] in others - MEDIA_MAY_IMPORT[package]
    ]
    assert violations == []


# --- the checker itself -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "source",
    [
        "import django",
        "import django.conf",
        "from django.conf import settings",
        "from django import db",
        "import channels.layers",
        "from channels.db import database_sync_to_async",
        "import celery",
        "from celery import shared_task",
        "import classroom.models",
        "from classroom.services import media",
        "from config import settings",
        "import os, django",
        "import django as dj",
        "def f():\n    from django.conf import settings\n    return settings",
        "try:\n    import celery\nexcept ImportError:\n    celery = None",
        "if TYPE_CHECKING:\n    from classroom.models import LiveSession",
        "import importlib\nimportlib.import_module('django.conf')",
        "__import__('classroom')",
        "from ... import classroom",  # climbs out of compositor/
        "from ...classroom import models",
    ],
)
def test_checker_finds_forbidden_imports(source):
    assert forbidden_imports(source, module="compositor.sinks.rtmp"), source


@pytest.mark.parametrize(
    "source",
    [
        "import av",
        "import numpy as np",
        "from dataclasses import dataclass",
        "from . import layout",
        "from .layout import Tile",
        "from ..compositor import layout",
        "import djangoish",
        "import configparser",
        "from classroomish import x",
        "x = 'import django'",
        "# import django",
        "importlib.import_module(name)",
    ],
)
def test_checker_allows_the_rest(source):
    assert forbidden_imports(source, module="compositor.sinks.rtmp") == [], source


def test_checker_resolves_relative_imports():
    assert imported_modules("from .layout import Tile", module="compositor.mixer") == [(1, "compositor.layout")]
    assert imported_modules("from . import layout", module="compositor", is_package=True) == [(1, "compositor")]
    assert imported_modules("from .. import encoder", module="compositor.sinks.rtmp") == [(1, "compositor")]
