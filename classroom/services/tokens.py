"""Short-lived signed service tokens: how egress workers join a class as hidden subscribers."""
from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.core import signing

from ..errors import NotAllowed

_SALT = "classcast.service-token"


@dataclass(frozen=True)
class ServiceIdentity:
    classroom_id: int
    purpose: str  # e.g. "egress"
    name: str


def service_token_issue(*, classroom_id: int, purpose: str, name: str = "egress") -> str:
    return signing.dumps({"c": classroom_id, "p": purpose, "n": name}, salt=_SALT, compress=True)


def service_token_verify(*, token: str, classroom_id: int) -> ServiceIdentity:
    """Raises NotAllowed for a forged, expired or other-class token."""
    try:
        data = signing.loads(token, salt=_SALT, max_age=settings.CLASSCAST_SERVICE_TOKEN_TTL_S)
    except signing.SignatureExpired:
        raise NotAllowed("the service token has expired") from None
    except signing.BadSignature:
        raise NotAllowed("the service token is not valid") from None
    if data.get("c") != classroom_id:
        raise NotAllowed("the service token is for another class")
    return ServiceIdentity(classroom_id=classroom_id, purpose=str(data.get("p")), name=str(data.get("n")))
