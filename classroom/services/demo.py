"""Demo data: an instructor, three students, a staff administrator and one class (idempotent)."""
from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.urls import reverse

from ..models import Classroom, Membership, Role

DEMO_PASSWORD = "classcast-demo"
DEMO_CLASS = "Physics 101: Waves and Sound"
INSTRUCTOR = ("ada", "Ada", "Lovelace")
STUDENTS = [("ben", "Ben", "Okafor"), ("cleo", "Cleo", "Martins"), ("dev", "Dev", "Sharma")]
ADMIN = ("admin", "Site", "Admin")


def _user(username: str, first: str, last: str, *, staff: bool = False) -> Any:
    User = get_user_model()
    user, created = User.objects.get_or_create(
        username=username, defaults={"first_name": first, "last_name": last, "is_staff": staff, "is_superuser": staff}
    )
    if created:
        user.set_password(DEMO_PASSWORD)
        user.save()
    return user


@transaction.atomic
def demo_seed() -> dict[str, Any]:
    instructor = _user(*INSTRUCTOR)
    students = [_user(*s) for s in STUDENTS]
    _user(*ADMIN, staff=True)
    classroom, _ = Classroom.objects.get_or_create(
        title=DEMO_CLASS, defaults={"description": "A demo class for classcast.", "is_public": False}
    )
    Membership.objects.get_or_create(classroom=classroom, user=instructor, defaults={"role": Role.INSTRUCTOR})
    for student in students:
        Membership.objects.get_or_create(classroom=classroom, user=student, defaults={"role": Role.STUDENT})
    login = lambda username: {"username": username, "password": DEMO_PASSWORD}  # noqa: E731
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
