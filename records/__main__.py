"""`python -m records`: upgrade the records database, create and list users.

    python -m records upgrade [--database URL]
    python -m records create-user NAME [--role viewer|reviewer|admin] [--database URL]
    python -m records list-users [--database URL]

`--database` defaults to $RBC_DATABASE_URL, else sqlite:///data/rbc.sqlite3 (its folder is made).
A malformed URL or an unreachable database: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from records.errors import DatabaseUnavailable, RecordsError, SchemaOutOfDate
from records.schema import ROLES
from records.store import Store, create_user, list_users, open_store

ENV_URL = "RBC_DATABASE_URL"
DEFAULT_URL = "sqlite:///data/rbc.sqlite3"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database",
        metavar="URL",
        default=None,
        help=f"SQLAlchemy URL (default: ${ENV_URL}, else {DEFAULT_URL})",
    )
    parser = argparse.ArgumentParser(prog="python -m records", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("upgrade", parents=[common], help="create or upgrade the database schema")
    create = sub.add_parser("create-user", parents=[common], help="add a user; prints the token")
    create.add_argument("name")
    create.add_argument("--role", choices=ROLES, default="reviewer")
    sub.add_parser("list-users", parents=[common], help="list the users")
    return parser


def _open(url_arg: str | None) -> Store:
    url = url_arg or os.environ.get(ENV_URL) or DEFAULT_URL
    return open_store(url, create_dirs=url == DEFAULT_URL)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        store = _open(args.database)
    except DatabaseUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with store:
            if args.command == "upgrade":
                revision = store.upgrade()
                print(f"{store.display_url}: at schema revision {revision}")
                return 0
            store.check_current()
            if args.command == "create-user":
                user, token = create_user(store, args.name, args.role)
                print(
                    f"created user {user.name!r} ({user.role}); their API token:", file=sys.stderr
                )
                print(token)
                print(
                    "This token will not be shown again: give it to the user now.", file=sys.stderr
                )
                return 0
            for user in list_users(store):
                state = "active" if user.active else "inactive"
                print(f"{user.name}\t{user.role}\t{state}\t{user.created_at.isoformat()}")
            return 0
    except SchemaOutOfDate as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RecordsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a database that went away half-way, a full disk...
        from sqlalchemy.exc import DBAPIError

        if isinstance(exc, DBAPIError):
            line = str(exc.orig).strip().splitlines()
            print(
                f"error: database {store.display_url}: {line[0] if line else exc}", file=sys.stderr
            )
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
