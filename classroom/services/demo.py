"""Demo data: an instructor, three students, a staff administrator and one class (idempotent)."""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.urls import reverse

from config.env import secret_read_or_create

from ..models import Classroom, Membership, Role

# The fixed password of tests and benches (demo_seed() without one). `seed_demo`, which `make run`
# calls, passes the install's own random password instead (demo_password_get): never this one.
DEMO_PASSWORD = "classcast-demo"
DEMO_CLASS = "Physics 101: Waves and Sound"
INSTRUCTOR = ("ada", "Ada", "Lovelace")
STUDENTS = [("ben", "Ben", "Okafor"), ("cleo", "Cleo", "Martins"), ("dev", "Dev", "Sharma")]
ADMIN = ("admin", "Site", "Admin")


def demo_password_get() -> tuple[str, bool]:
    """This install's demo password, generated once and kept in the var dir (0600) so every start
    prints the same logins; and whether it was made just now."""
    path = settings.VAR_DIR / "demo_password"
    existed = path.exists()
    return secret_read_or_create(path, nbytes=9), not existed


def _user(username: str, first: str, last: str, *, password: str, reset_password: bool, staff: bool = False) -> Any:
    User = get_user_model()
    user, created = User.objects.get_or_create(
        username=username, defaults={"first_name": first, "last_name": last, "is_staff": staff, "is_superuser": staff}
    )
    if created or reset_password:
        user.set_password(password)
        user.save()
    return user


@transaction.atomic
def demo_seed(*, password: str = DEMO_PASSWORD, reset_passwords: bool = False) -> dict[str, Any]:
    """The demo class and its logins, all with `password`. Users that exist keep theirs unless
    `reset_passwords` (a new install password replaces one set before, e.g. a published one)."""
    kw = {"password": password, "reset_password": reset_passwords}
    instructor = _user(*INSTRUCTOR, **kw)
    students = [_user(*s, **kw) for s in STUDENTS]
    _user(*ADMIN, staff=True, **kw)
    classroom, _ = Classroom.objects.get_or_create(
        title=DEMO_CLASS, defaults={"description": "A demo class for classcast.", "is_public": False}
    )
    Membership.objects.get_or_create(classroom=classroom, user=instructor, defaults={"role": Role.INSTRUCTOR})
    for student in students:
        Membership.objects.get_or_create(classroom=classroom, user=student, defaults={"role": Role.STUDENT})
    login = lambda username: {"username": username, "password": password}  # noqa: E731
    return {
        "instructor": login(INSTRUCTOR[0]),
        "students": [login(s[0]) for s in STUDENTS],
        "admin": login(ADMIN[0]),
        "class_id": classroom.pk,
        "urls": {
            "instructor": reverse("classroom:console", args=[classroom.pk]),
            "student": reverse("classroom:class", args=[classroom.pk]),
            "watch": reverse("classroom:watch", args=[classroom.pk]),
        },
    }
