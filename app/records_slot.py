"""The records database as the service holds it, and who a /slides request acts as.

At start-up (the lifespan) the store is opened and brought to the newest schema. When that
fails (a server that does not answer, a malformed URL, a migration that fails), the service
still starts: the single-cell endpoints do not need the records, /slides answers 503 with the
reason and /readyz shows it; another attempt is made in the background at most every
RETRY_S while requests keep coming.

Who may act (docs/slides.md, "Roles and tokens"):
- once the database holds users (`python -m records create-user`), every /slides request needs
  `Authorization: Bearer <token>` of an active user (401 otherwise); viewers read only;
- with no users, the service acts as one local user, `local` (admin), created on first use
  with a random token that is thrown away, so that nobody can present it; the service counts
  users other than `local` when it decides whether users exist, so that the implicit user never
  switches token checks on. This mode is allowed only when the service listens on loopback
  (RBC_HOST 127.0.0.1, ::1, localhost): on another address with no users the service refuses to
  start. A request that came through a proxy (X-Forwarded-For, Forwarded, X-Real-IP) is refused
  in this mode too: a proxy on the same machine would open the local user to its clients.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Mapping

from app.config import Settings
from app.errors import Forbidden, NotReady, Unauthorized
from records.errors import DatabaseUnavailable, DuplicateName, RecordsError, first_line
from records.store import (
    Store,
    User,
    authenticate,
    count_users,
    create_user,
    list_users,
    open_store,
)

log = logging.getLogger(__name__)

LOCAL_USER = "local"  # reserved: the service's own user when no users are configured
RETRY_S = 10.0
FORWARDING_HEADERS = (b"x-forwarded-for", b"forwarded", b"x-real-ip")
CREATE_USER = "python -m records create-user NAME --role admin"


class StartRefused(RuntimeError):
    """The service must not start as configured (lifespan raises it; uvicorn exits non-zero)."""


def is_loopback(host: str) -> bool:
    """RBC_HOST names this machine only: localhost, 127.0.0.0/8 or ::1."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class RecordsSlot:
    """The records store (or why there is none), and the service's user policy."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.records_url
        self.is_default = settings.database_url is None
        self.loopback = is_loopback(settings.host)
        self.host = settings.host
        # The command that makes a user in this very database (the CLI reads RBC_DATABASE_URL,
        # not RBC_DATA_DIR).
        self.create_user_hint = (
            f"{CREATE_USER} --database {self.url}"
            if self.is_default
            else f"{CREATE_USER}, with the same RBC_DATABASE_URL"
        )
        self.store: Store | None = None
        self.error: str | None = None
        if self.url is None:
            self.error = "the slides API is turned off (RBC_DATABASE_URL=none)"
        self._lock = threading.Lock()
        self._last_try = 0.0
        self._retrying = False
        self._closed = False
        self._users_exist = False  # once true, true for good: users are never deleted
        self._local: User | None = None

    @property
    def off(self) -> bool:
        return self.url is None

    @property
    def status(self) -> str:
        if self.off:
            return "off"
        return "ready" if self.store is not None else "unavailable"

    # --- opening -------------------------------------------------------------------------

    def start(self) -> None:
        """Open and upgrade the database (in the lifespan, before requests are served). Raises
        StartRefused when there are no users and the service listens beyond loopback; any
        other failure is kept as the reason /slides answers 503."""
        if self.off:
            log.info("records database: off (RBC_DATABASE_URL=none); /slides answers 503")
            return
        store = self._open()
        if store is None:
            return
        try:
            public_without_users = not self.loopback and not self.users_exist(store)
        except Exception as exc:  # the database went away right after the upgrade
            store.close()
            self._fail(f"the records database stopped answering: {first_line(exc)}")
            return
        if public_without_users:
            store.close()
            message = (
                f"refusing to start: RBC_HOST={self.host} is not a loopback address and the "
                f"records database {store.display_url} has no users, so anyone who can reach "
                f"this address would act on the laboratory's records. Create a user first "
                f"({self.create_user_hint}), or listen on 127.0.0.1"
            )
            log.error(message)
            raise StartRefused(message)
        self.store, self.error = store, None

    def _open(self) -> Store | None:
        """An upgraded store, or None with `error` set (and logged)."""
        assert self.url is not None
        self._last_try = time.monotonic()
        try:
            store = open_store(self.url, create_dirs=self.is_default)
        except DatabaseUnavailable as exc:
            self._fail(f"the records database is unavailable: {exc}")
            return None
        try:
            revision = store.upgrade()
        except Exception as exc:  # Alembic's and the driver's errors: any failure of the upgrade
            store.close()
            self._fail(
                f"the records database {store.display_url} could not be brought to the current "
                f"schema: {first_line(exc)}"
            )
            return None
        log.info("records database %s at schema revision %s", store.display_url, revision)
        return store

    def _fail(self, message: str) -> None:
        self.error = message
        log.error("%s; /slides answers 503 (tried again every %g s)", message, RETRY_S)

    def _retry(self) -> None:
        store: Store | None = None
        try:
            store = self._open()
            if store is None:
                return
            if not self.loopback and not self.users_exist(store):
                self._fail(
                    f"the records database has no users and RBC_HOST={self.host} is not a "
                    f"loopback address: create a user ({self.create_user_hint})"
                )
                return
            with self._lock:
                if not self._closed:
                    self.store, self.error, store = store, None, None
        except Exception as exc:  # never let a retry thread die silently
            self._fail(f"the records database could not be opened: {first_line(exc)}")
        finally:
            if store is not None:  # not handed over
                store.close()
            with self._lock:
                self._retrying = False

    def _maybe_retry(self) -> None:
        """Start a background attempt to open the database, unless one runs or ran recently."""
        with self._lock:
            if (
                self.off
                or self._closed
                or self.store is not None
                or self._retrying
                or time.monotonic() - self._last_try < RETRY_S
            ):
                return
            self._retrying = True
        threading.Thread(target=self._retry, name="records-retry", daemon=True).start()

    def get_store(self) -> Store:
        """The store, or NotReady (503) saying why there is none."""
        store = self.store
        if store is not None:
            return store
        self._maybe_retry()
        raise NotReady(self.error or "the records database is not open yet")

    def describe(self) -> tuple[str, str | None]:
        """(status, reason) for /readyz; asking also starts a retry when one is due."""
        if self.store is None:
            self._maybe_retry()
        return self.status, self.error

    def close(self) -> None:
        with self._lock:
            self._closed = True
            store, self.store = self.store, None
        if store is not None:
            store.close()

    # --- users -----------------------------------------------------------------------------

    def users_exist(self, store: Store) -> bool:
        """Whether the laboratory configured users: any user but the implicit `local` one."""
        if self._users_exist:
            return True
        n = count_users(store)
        exist = n > 1 or (n == 1 and list_users(store)[0].name != LOCAL_USER)
        self._users_exist = exist
        return exist

    def needs_token(self) -> bool:
        """Whether /slides asks for a user's token now: False only in local mode (loopback, the
        database open, no users). Without a database /slides answers 503 whatever is sent."""
        store = self.store
        if store is None or not self.loopback:
            return True
        try:
            return self.users_exist(store)
        except Exception:  # the database went away: the next /slides request will say so
            return True

    def local_user(self, store: Store) -> User:
        """The `local` user (admin), created on first use with a token nobody ever sees."""
        if self._local is not None:
            return self._local
        for _ in range(2):
            found = [u for u in list_users(store) if u.name == LOCAL_USER]
            if found:
                self._local = found[0]
                return found[0]
            try:
                user, _token = create_user(store, LOCAL_USER, "admin")  # the token is dropped
            except DuplicateName:  # another instance made it meanwhile
                continue
            log.info("no users configured: acting as the local user %r (admin)", LOCAL_USER)
            self._local = user
            return user
        raise RecordsError(f"the local user {LOCAL_USER!r} could not be created")

    def user_for(self, headers: Mapping[bytes, bytes]) -> User:
        """Who a /slides request acts as (runs in a worker thread: it reads the database).
        NotReady without a database, Unauthorized without a valid token once users exist,
        Forbidden for a proxied request in local mode."""
        store = self.get_store()
        if self.users_exist(store):
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not token.strip():
                raise Unauthorized(
                    "the slides API needs a user's token: send 'Authorization: Bearer <token>' "
                    "(an administrator makes one with `python -m records create-user`)"
                )
            user = authenticate(store, token.strip().decode("latin-1"))
            if user is None:
                raise Unauthorized("the token is not valid, or its user is inactive")
            return user
        if not self.loopback:  # users cannot vanish; a defence, not a path
            raise NotReady(f"no users are configured: create one ({self.create_user_hint})")
        if any(name in headers for name in FORWARDING_HEADERS):
            raise Forbidden(
                "this request came through a proxy, but no users are configured: the local user "
                "serves this machine only. Create users (`python -m records create-user`) and "
                "send a token"
            )
        return self.local_user(store)


__all__ = ["LOCAL_USER", "RecordsSlot", "StartRefused", "is_loopback"]
