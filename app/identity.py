"""Who is asking: one identity model for every protected path (app.middleware.IdentityGate).

Two credentials, one model. An `Identity` has a name, a role and the permissions its role gives:
- RBC_API_TOKEN's holder (role `analyst`) may analyse: /predict, /predict/batch, /analyze/smear,
  /model. It names no person, so it is no records user: it neither reads nor signs slides.
  Without RBC_API_TOKEN the analysis API is open, and whoever asks is `anyone` (an analyst).
- A records user (records/users.py, `python -m records create-user`; or the implicit `local`
  user, app/records_slot.py) may read slides, and change them when its role is a writer's.

Each protected path is one realm, and a realm has one way to tell who is asking: the analysis
API by RBC_API_TOKEN, the records API (/slides, /audit) by the records' users. A user's token is
not taken on the analysis API: that API must keep working without the records database (a
lookup per upload would tie it to the database), and labs that script RBC_API_TOKEN rely on it
being the one key to that API (docs/service.md, "Who is asking").
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum

from app.errors import Unauthorized
from app.records_slot import RecordsSlot
from records.store import WRITERS, User


class Permission(StrEnum):
    ANALYSE = "analyse images"
    READ_RECORDS = "read slides"
    WRITE_RECORDS = "change slides"


class Realm(Enum):
    """A family of protected paths, each with its own credential."""

    ANALYSIS = "analysis"
    RECORDS = "records"


ANALYST = "analyst"
READ_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Identity:
    name: str
    role: str
    permissions: frozenset[Permission]
    user: User | None = None  # the records user behind it, if any: slides are attributed to it

    def may(self, permission: Permission) -> bool:
        return permission in self.permissions


ANYONE = Identity("anyone", ANALYST, frozenset({Permission.ANALYSE}))
API_TOKEN_HOLDER = Identity("RBC_API_TOKEN", ANALYST, frozenset({Permission.ANALYSE}))


def of_user(user: User) -> Identity:
    permissions = {Permission.READ_RECORDS}
    if user.role in WRITERS:
        permissions.add(Permission.WRITE_RECORDS)
    return Identity(user.name, user.role, frozenset(permissions), user)


def needed(realm: Realm, method: str) -> Permission:
    """What a request asks to do."""
    if realm is Realm.ANALYSIS:
        return Permission.ANALYSE
    return Permission.READ_RECORDS if method in READ_METHODS else Permission.WRITE_RECORDS


def refusal(identity: Identity, permission: Permission) -> str:
    """Why `identity` may not do it (the 403's detail)."""
    if permission is Permission.WRITE_RECORDS and identity.may(Permission.READ_RECORDS):
        return f"user {identity.name!r} ({identity.role}) may read slides but not change them"
    return f"{identity.name!r} ({identity.role}) may not {permission}"


def bearer(headers: Mapping[bytes, bytes]) -> bytes | None:
    """The token of `Authorization: Bearer <token>`, or None when there is none."""
    scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
    token = token.strip()
    return token if scheme.lower() == b"bearer" and token else None


class Identities:
    """Tells who is asking from a request's headers, in each realm."""

    def __init__(self, api_token: str | None) -> None:
        self.api_token = None if api_token is None else api_token.encode()

    def is_api_token(self, token: bytes | None) -> bool:
        # Timing-safe: the comparison must not tell how much of a guess was right.
        return (
            token is not None
            and self.api_token is not None
            and secrets.compare_digest(token, self.api_token)
        )

    def analyst(self, headers: Mapping[bytes, bytes]) -> Identity:
        """Who asks the analysis API; Unauthorized without RBC_API_TOKEN when it is set."""
        if self.api_token is None:
            return ANYONE
        token = bearer(headers)
        if token is None:
            raise Unauthorized("this API needs a token: send 'Authorization: Bearer <token>'")
        if not self.is_api_token(token):
            raise Unauthorized("the token is not valid")
        return API_TOKEN_HOLDER

    def records_user(self, slot: RecordsSlot, headers: Mapping[bytes, bytes]) -> Identity:
        """Who asks the records API (reads the database: call it in a worker thread). The
        records slot's errors as they are: NotReady, Unauthorized, Forbidden, the store's."""
        try:
            return of_user(slot.user_for(headers))
        except Unauthorized:
            if self.is_api_token(bearer(headers)):
                raise Unauthorized(
                    "this is RBC_API_TOKEN, the analysis API's token: its holder is not a "
                    "records user. The slides API needs a user's token (an administrator "
                    "makes one with `python -m records create-user`)"
                ) from None
            raise


__all__ = [
    "ANYONE",
    "API_TOKEN_HOLDER",
    "Identities",
    "Identity",
    "Permission",
    "Realm",
    "needed",
    "of_user",
    "refusal",
]
