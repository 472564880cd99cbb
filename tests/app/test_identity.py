"""One identity model (app/identity.py) and one gate (app.middleware.IdentityGate): who is asking
on the analysis API and on the records API, decided from the headers before the body is read.

The answers of each mode (401, 403, 503 and their headers) are pinned where each API is tested
(tests/app/test_service.py, test_limits.py, test_slides.py); here: the model itself, the gate on
its own (a fake records slot: no database), and what only one gate can do, such as telling the
API token's holder why /slides refuses it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient

from app.deps import get_identity, require_token
from app.errors import Unauthorized
from app.identity import (
    ANYONE,
    API_TOKEN_HOLDER,
    Identities,
    Identity,
    Permission,
    Realm,
    needed,
    of_user,
    refusal,
)
from app.main import create_app
from app.middleware import IdentityGate
from records.store import User, create_user, default_url, open_store
from tests.app.helpers import cell_png, make_settings, wait_ready
from tests.app.test_inputs import assert_error

TOKEN = "s3cret"


def user(name: str, role: str) -> User:
    return User(id=1, name=name, role=role, active=True, created_at=datetime.now(UTC))


# --- the model ------------------------------------------------------------------------------


def test_what_each_identity_may_do() -> None:
    analyse, read, write = Permission.ANALYSE, Permission.READ_RECORDS, Permission.WRITE_RECORDS
    for analyst in (ANYONE, API_TOKEN_HOLDER):
        assert analyst.permissions == {analyse} and analyst.user is None
    assert of_user(user("vic", "viewer")).permissions == {read}
    for role in ("reviewer", "admin"):
        rae = of_user(user("rae", role))
        assert rae.permissions == {read, write} and rae.role == role and rae.user is not None
    assert needed(Realm.ANALYSIS, "POST") is analyse
    assert needed(Realm.RECORDS, "GET") is needed(Realm.RECORDS, "HEAD") is read
    assert {needed(Realm.RECORDS, m) for m in ("POST", "PATCH", "DELETE")} == {write}
    viewer = of_user(user("vic", "viewer"))
    assert refusal(viewer, write) == "user 'vic' (viewer) may read slides but not change them"
    assert refusal(API_TOKEN_HOLDER, read) == "'RBC_API_TOKEN' (analyst) may not read slides"


def test_the_analysis_api_is_told_by_rbc_api_token() -> None:
    assert Identities(None).analyst({}) is ANYONE  # no token set: the API is open
    identities = Identities(TOKEN)
    assert identities.analyst({b"authorization": b"bearer s3cret"}) is API_TOKEN_HOLDER
    for headers, words in (
        ({}, "needs a token"),
        ({b"authorization": b"Basic s3cret"}, "needs a token"),
        ({b"authorization": b"Bearer "}, "needs a token"),
        ({b"authorization": b"Bearer s3cre"}, "not valid"),
        ({b"authorization": b"Bearer s3cret2"}, "not valid"),
    ):
        with pytest.raises(Unauthorized, match=words):
            identities.analyst(headers)


def test_routes_only_read_the_identity() -> None:
    request: Any = type("Request", (), {"state": type("State", (), {})()})()
    with pytest.raises(Unauthorized):  # no gate ran: nobody is let through
        get_identity(request)
    request.state.identity = API_TOKEN_HOLDER
    assert get_identity(request) is API_TOKEN_HOLDER
    # The analysis API's dependency compares nothing: no credentials, and it still passes.
    assert require_token(API_TOKEN_HOLDER, None) is API_TOKEN_HOLDER


# --- the gate on its own --------------------------------------------------------------------


class FakeSlot:
    """A records slot with users: tokens by user, no database."""

    def __init__(self, users: Mapping[bytes, User]) -> None:
        self.users = users

    def user_for(self, headers: Mapping[bytes, bytes]) -> User:
        _, _, token = headers.get(b"authorization", b"").partition(b" ")
        if token.strip() in self.users:
            return self.users[token.strip()]
        raise Unauthorized("the token is not valid, or its user is inactive")


def call_gate(
    method: str, path: str, token: str | None = None, slot: Any = None
) -> tuple[int, Identity | None, int, list[tuple[bytes, bytes]]]:
    """(status, the identity the route saw, body reads, the answer's headers)."""
    seen: list[Identity | None] = []
    reads = 0

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope.get("state", {}).get("identity"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"\0" * 1024, "more_body": True}

    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    headers = [(b"content-length", b"66060288")]
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": headers,
        "state": {"records": slot},
    }
    gate = IdentityGate(app, api_token=TOKEN, analysis_paths={"/predict", "/model"})
    anyio.run(gate, scope, receive, send)
    start = next(m for m in messages if m["type"] == "http.response.start")
    return start["status"], (seen[0] if seen else None), reads, start["headers"]


def test_the_gate_puts_who_is_asking_on_the_request() -> None:
    slot = FakeSlot({b"rae-token": user("rae", "reviewer"), b"vic-token": user("vic", "viewer")})
    status, identity, _, _ = call_gate("POST", "/predict", TOKEN, slot)
    assert status == 200 and identity is API_TOKEN_HOLDER
    status, identity, _, headers = call_gate("PATCH", "/slides/1/cells/2", "rae-token", slot)
    assert status == 200 and identity is not None and identity.name == "rae"
    assert (b"cache-control", b"no-store") in headers
    status, identity, _, _ = call_gate("GET", "/audit", "vic-token", slot)
    assert status == 200 and identity is not None and identity.role == "viewer"
    # Paths nobody guards, and CORS preflights (they carry no credentials), pass with no identity.
    for method, path in (
        ("GET", "/healthz"), ("GET", "/"), ("OPTIONS", "/slides"), ("OPTIONS", "/predict")
    ):  # fmt: skip
        assert call_gate(method, path, None, slot)[:2] == (200, None)


def test_the_gate_refuses_from_the_headers_alone() -> None:
    slot = FakeSlot({b"vic-token": user("vic", "viewer")})
    for method, path, token, status in (
        ("POST", "/predict", None, 401),
        ("POST", "/predict", "vic-token", 401),  # a user's token is not the analysis API's
        ("POST", "/slides", TOKEN, 401),  # nor RBC_API_TOKEN a records user's
        ("POST", "/slides/1/fields", "vic-token", 403),
        ("POST", "/slides", None, 503),  # no records database
    ):
        answer, identity, reads, headers = call_gate(
            method, path, token, None if status == 503 else slot
        )
        assert (answer, identity, reads) == (status, None, 0), (method, path, token)
        assert (b"connection", b"close") in headers


# --- the service: both credentials at once ------------------------------------------------


@pytest.fixture(scope="module")
def both(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """RBC_API_TOKEN set, and a records database with users."""
    data = tmp_path_factory.mktemp("identity")
    with open_store(default_url(data), create_dirs=True) as store:
        store.upgrade()
        tokens = {role: create_user(store, f"{role}-1", role)[1] for role in ("viewer", "admin")}
    settings = make_settings(model_dir, data_dir=data, api_token=TOKEN)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client, tokens


def test_the_api_token_holder_is_no_records_user(both: Any) -> None:
    client, _ = both
    for method, path in (("GET", "/slides"), ("POST", "/slides"), ("GET", "/audit")):
        refused = client.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert_error(refused, 401, "RBC_API_TOKEN", "not a records user", "create-user")
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.headers["cache-control"] == "no-store"


def test_a_records_user_does_not_open_the_analysis_api(both: Any) -> None:
    client, tokens = both
    files = {"file": ("c.png", cell_png())}
    for token in tokens.values():
        refused = client.post("/predict", files=files, headers={"Authorization": f"Bearer {token}"})
        assert_error(refused, 401, "the token is not valid")
        assert_error(client.get("/model", headers={"Authorization": f"Bearer {token}"}), 401)
    # Each credential opens its own API.
    assert client.get("/model", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    listed = client.get("/slides", headers={"Authorization": f"Bearer {tokens['viewer']}"})
    assert listed.status_code == 200


def test_without_rbc_api_token_the_analysis_api_stays_open_whatever_is_sent(
    model_dir: Path, tmp_path: Path
) -> None:
    with TestClient(create_app(make_settings(model_dir, data_dir=tmp_path))) as client:
        wait_ready(client)
        for headers in ({}, {"Authorization": "Bearer anything"}):
            assert client.get("/model", headers=headers).status_code == 200
        schema = client.get("/openapi.json").json()
    assert "security" not in schema["paths"]["/predict"]["post"]
