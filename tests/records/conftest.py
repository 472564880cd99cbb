"""The records tests' databases (a temporary SQLite file and a fresh PostgreSQL database per
module, each test on an emptied one) and users, for every module here: defined with the store's
own tests in test_records.py, which say how PostgreSQL is found."""

from __future__ import annotations

from tests.records.test_records import (  # noqa: F401  (fixtures, shared)
    admin,
    backend,
    module_url,
    pg,
    reviewer,
    store,
)
