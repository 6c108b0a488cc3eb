"""The permission rules, table-driven: pure functions over an Actor (no database)."""
from __future__ import annotations

import dataclasses

import pytest

from classroom.permissions import (
    INSTRUCTOR,
    STUDENT,
    Actor,
    can_act_for,
    can_chat,
    can_manage_session,
    can_publish,
    can_raise_hand,
    can_view_class,
)

ME = 10
OTHER = 20

ACTORS = {
    "instructor": Actor(user_id=ME, role=INSTRUCTOR),
    "student": Actor(user_id=ME, role=STUDENT),
    "non_member": Actor(user_id=ME),
    "staff": Actor(user_id=ME, is_staff=True),  # a site administrator who is not in the class
    "staff_student": Actor(user_id=ME, is_staff=True, role=STUDENT),
    "staff_instructor": Actor(user_id=ME, is_staff=True, role=INSTRUCTOR),
    "unknown_role": Actor(user_id=ME, role="observer"),
}

#                  view   manage raise  chat   act-for-other publish-off-stage
TABLE = {
    "instructor":       (True, True, False, True, True, True),
    "student":          (True, False, True, True, False, False),
    "non_member":       (False, False, False, False, False, False),
    "staff":            (True, True, False, True, True, True),
    "staff_student":    (True, True, True, True, True, True),
    "staff_instructor": (True, True, False, True, True, True),
    "unknown_role":     (True, False, False, True, False, False),
}


def rows(column: int):
    return [pytest.param(ACTORS[name], TABLE[name][column], id=name) for name in TABLE]


def test_table_covers_every_actor():
    assert set(TABLE) == set(ACTORS)


@pytest.mark.parametrize("actor, expected", rows(0))
def test_can_view_class(actor, expected):
    assert can_view_class(actor) is expected


@pytest.mark.parametrize("actor, expected", rows(1))
def test_can_manage_session(actor, expected):
    assert can_manage_session(actor) is expected


@pytest.mark.parametrize("actor, expected", rows(2))
def test_can_raise_hand(actor, expected):
    assert can_raise_hand(actor) is expected


@pytest.mark.parametrize("actor, expected", rows(3))
def test_can_chat(actor, expected):
    assert can_chat(actor) is expected


@pytest.mark.parametrize("actor, expected", rows(4))
def test_can_act_for_someone_else(actor, expected):
    assert can_act_for(actor, OTHER) is expected


@pytest.mark.parametrize("actor", [pytest.param(a, id=n) for n, a in ACTORS.items()])
def test_everyone_can_act_for_themself(actor):
    assert can_act_for(actor, ME) is True


@pytest.mark.parametrize("actor, expected", rows(5))
def test_can_publish_off_stage(actor, expected):
    assert can_publish(actor, on_stage=False) is expected


@pytest.mark.parametrize("actor", [pytest.param(a, id=n) for n, a in ACTORS.items()])
def test_everyone_on_stage_can_publish(actor):
    assert can_publish(actor, on_stage=True) is True


def test_can_publish_takes_on_stage_by_keyword_only():
    with pytest.raises(TypeError):
        can_publish(ACTORS["student"], True)  # type: ignore[misc]


def test_actor_is_immutable_and_defaults_to_a_non_member():
    actor = Actor(user_id=1)
    assert actor == Actor(user_id=1, is_staff=False, role=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        actor.role = INSTRUCTOR  # type: ignore[misc]
    assert hash(actor) == hash(Actor(user_id=1))


def test_role_names_match_the_membership_choices():
    from classroom.models import Role

    assert {INSTRUCTOR, STUDENT} == set(Role.values)
