"""Receivers that turn changes to memberships and accounts (however made: the admin, the ORM, a shell)
into an access re-check for the person's open class sockets (services/membership.py).

Connected in ClassroomConfig.ready(). Changes that send no signal (QuerySet.update, raw SQL) are caught
by the sockets' periodic re-check (CLASSCAST_WS_ACCESS_RECHECK_S) and on their next action.
"""
from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_save, pre_delete

from .models import Membership
from .services.membership import membership_access_changed, membership_revoked

# The account fields access depends on: a login (last_login) or a new password is not an access change.
ACCESS_FIELDS = frozenset({"is_active", "is_staff"})


def _deleted_as_part_of(origin: Any, model: type) -> bool:
    """Is this deletion a cascade from deleting `model` rows (an instance or a queryset of them)?"""
    return isinstance(origin, model) or getattr(origin, "model", None) is model


def membership_saved(sender: Any, instance: Membership, created: bool, **kwargs: Any) -> None:
    # A new membership only adds rights, but a staff member's open socket still learns its role.
    membership_access_changed(
        user_id=instance.user_id, classroom_id=instance.classroom_id, clear_live_state=not created
    )


def membership_deleted(sender: Any, instance: Membership, origin: Any = None, **kwargs: Any) -> None:
    from .models import Classroom

    if _deleted_as_part_of(origin, get_user_model()):
        return  # account_deleting below handles the person in every class at once
    if _deleted_as_part_of(origin, Classroom):
        # The sessions go with the class: only the sockets need telling.
        membership_access_changed(user_id=instance.user_id, classroom_id=instance.classroom_id, clear_live_state=False)
        return
    membership_revoked(classroom_id=instance.classroom_id, user_id=instance.user_id)


def account_saved(sender: Any, instance: Any, created: bool, update_fields: Any = None, **kwargs: Any) -> None:
    if created or (update_fields is not None and not (ACCESS_FIELDS & set(update_fields))):
        return
    membership_access_changed(user_id=instance.pk, classroom_id=None)


def account_deleting(sender: Any, instance: Any, **kwargs: Any) -> None:
    # Before the delete, while the rows still exist: the live sessions forget the person (without
    # pointing at the account), and once committed the sockets find the account gone.
    membership_access_changed(user_id=instance.pk, classroom_id=None, account_deleted=True)


def connect() -> None:
    user_model = get_user_model()
    post_save.connect(membership_saved, sender=Membership, dispatch_uid="classcast.membership_saved")
    post_delete.connect(membership_deleted, sender=Membership, dispatch_uid="classcast.membership_deleted")
    post_save.connect(account_saved, sender=user_model, dispatch_uid="classcast.account_saved")
    pre_delete.connect(account_deleting, sender=user_model, dispatch_uid="classcast.account_deleting")
