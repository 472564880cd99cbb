"""The served model's switches (records/activations.py), on SQLite and PostgreSQL (the fixtures
of tests/records/conftest.py): admins only, newest first, a refused switch writes nothing."""

from __future__ import annotations

import pytest

from records.errors import Forbidden, InvalidInput
from records.store import (
    Store,
    User,
    latest_activation_id,
    recent_activations,
    record_activation,
)
from tests.records.test_records import rows

SHA = "a" * 64


def test_activations_newest_first(store: Store, admin: User) -> None:
    assert latest_activation_id(store) is None and recent_activations(store) == []
    first = record_activation(store, admin, "lab-1", "lab one", SHA)
    second = record_activation(store, admin, "default", "default", "b" * 64, action="rollback")
    assert latest_activation_id(store) == second.id > first.id
    newest = recent_activations(store)
    assert [a.model_id for a in newest] == ["default", "lab-1"]
    assert newest[0].action == "rollback" and newest[0].user == admin.name
    assert newest[1] == first and first.weights_sha256 == SHA and first.at.tzinfo is not None
    assert len(recent_activations(store, limit=1)) == 1


def test_only_admins_switch_and_refusals_write_nothing(
    store: Store, admin: User, reviewer: User
) -> None:
    with pytest.raises(Forbidden, match="may not switch the served model"):
        record_activation(store, reviewer, "lab-1", "lab one", SHA)
    with pytest.raises(InvalidInput):
        record_activation(store, admin, "lab-1", "lab one", SHA, action="delete")
    with pytest.raises(InvalidInput):
        record_activation(store, admin, "", "lab one", SHA)
    assert rows(store, "model_activations") == 0
