"""`python -m records`: upgrade the records database, create and list users.

    python -m records upgrade [--database URL]
    python -m records create-user NAME [--role viewer|reviewer|admin] [--database URL]
    python -m records list-users [--database URL]
    python -m records backup --out FILE [--overwrite] [--database URL]
    python -m records delete-slides --older-than DAYS --admin NAME
        [--status open|signed_off] [--dry-run] [--database URL]

`--database` defaults to $RBC_DATABASE_URL, else sqlite:///data/rbc.sqlite3 (its folder is made).
A malformed URL or an unreachable database: one line on stderr, exit status 2.

`backup` copies a SQLite database with SQLite's online backup API (one consistent snapshot while
the service keeps writing); for PostgreSQL it prints the pg_dump command to use and exits 2.
`delete-slides` deletes the slides created more than DAYS ago, through the store's
`delete_slide` (audited; fields, cells and images go, the audit trail stays). A signed-off slide
is first reopened with the reason "retention: older than DAYS days" (audited too), then deleted.
`--dry-run` lists them and changes nothing. NAME must be an active admin.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from records.errors import (
    DatabaseUnavailable,
    RecordsError,
    SchemaOutOfDate,
    SlideNotSignedOff,
    first_line,
)
from records.schema import ROLES, SLIDE_STATUSES, utcnow
from records.store import (
    Store,
    User,
    backup_sqlite,
    create_user,
    delete_slide,
    find_user,
    list_users,
    open_store,
    reopen,
    slides_created_before,
)

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
    backup = sub.add_parser(
        "backup", parents=[common], help="copy a SQLite database online (PostgreSQL: pg_dump)"
    )
    backup.add_argument("--out", metavar="FILE", required=True, help="the copy to write")
    backup.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    retention = sub.add_parser(
        "delete-slides", parents=[common], help="delete slides created more than DAYS ago"
    )
    retention.add_argument("--older-than", metavar="DAYS", type=_days, required=True)
    retention.add_argument(
        "--status", choices=SLIDE_STATUSES, default=None, help="only slides in this status"
    )
    retention.add_argument("--dry-run", action="store_true", help="list them, delete nothing")
    retention.add_argument(
        "--admin", metavar="NAME", required=True, help="the admin user the deletions are audited to"
    )
    return parser


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if days < 1:
        raise argparse.ArgumentTypeError("DAYS must be at least 1")
    return days


def _open(url_arg: str | None) -> Store:
    url = _url(url_arg)
    return open_store(url, create_dirs=url == DEFAULT_URL)


def _url(url_arg: str | None) -> str:
    return url_arg or os.environ.get(ENV_URL) or DEFAULT_URL


def _pg_dump_advice(url: str, out: str) -> str | None:
    """For a PostgreSQL URL: the message with the pg_dump command to use (no password in it);
    None for any other URL."""
    from sqlalchemy import URL, make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        return None
    # Without the password (URL.set(password=None) would keep it) and the driver.
    libpq = URL.create(
        "postgresql",
        username=parsed.username,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
        query={k: v for k, v in parsed.query.items() if k != "connect_timeout"},
    )
    shown = libpq.render_as_string(hide_password=False)
    return (
        f"{shown} is a PostgreSQL database: this command backs up SQLite only. Use pg_dump "
        f"(the server's major version or newer), with the password in PGPASSWORD or ~/.pgpass:\n"
        f"  pg_dump --format=custom --no-owner --no-privileges --file {out} '{shown}'\n"
        f"restore into an empty database with:\n"
        f"  pg_restore --no-owner --no-privileges "
        f"--dbname 'postgresql://USER@HOST:PORT/NEWDB' {out}"
    )


def _backup(url: str, out: str, overwrite: bool) -> int:
    """`backup`: SQLite only (exit 0); PostgreSQL: the pg_dump advice, exit 2."""
    advice = _pg_dump_advice(url, out)
    if advice is not None:
        print(f"error: {advice}", file=sys.stderr)
        return 2
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        print(f"error: malformed database URL: {exc}", file=sys.stderr)
        return 2
    path = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or path in ("", ":memory:"):
        print(f"error: {url}: only a SQLite file or PostgreSQL can be backed up", file=sys.stderr)
        return 2
    if not path.startswith("file:") and not Path(path).is_file():
        # Opening it would create an empty database.
        print(f"error: no SQLite database at {path}", file=sys.stderr)
        return 2
    target = Path(out)
    if target.exists() and not overwrite:
        print(f"error: {out} exists (--overwrite replaces it)", file=sys.stderr)
        return 2
    try:
        store = open_store(url)
    except DatabaseUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with store:
        try:
            size = backup_sqlite(store, target)
        except Exception as exc:  # sqlite3.Error, OSError: a full disk, an unreadable file
            print(f"error: backup of {store.display_url} failed: {exc}", file=sys.stderr)
            return 2
    print(f"{store.display_url}: backed up to {target} ({size} bytes)")
    return 0


def _delete_slides(store: Store, days: int, status: str | None, dry_run: bool, name: str) -> int:
    """`delete-slides`: see the module's docstring."""
    admin: User | None = find_user(store, name)
    if admin is None or not admin.active or admin.role != "admin":
        print(
            f"error: {name!r} is not an active admin user (python -m records list-users)",
            file=sys.stderr,
        )
        return 2
    cutoff = utcnow() - timedelta(days=days)
    slides = slides_created_before(store, cutoff, status)
    what = f"created before {cutoff.isoformat(timespec='seconds')} ({days} days ago)"
    if not slides:
        print(f"no slides {what}" + (f" with status {status}" if status else ""))
        return 0
    reason = f"retention: older than {days} days"
    deleted = failed = 0
    for slide in slides:
        line = (
            f"{slide.id}\t{slide.sample_id}\t{slide.status}\t"
            f"{slide.created_at.isoformat(timespec='seconds')}\t{slide.field_count} fields"
        )
        if dry_run:
            print(f"would delete\t{line}")
            continue
        try:
            if slide.status == "signed_off":
                # Reopened by someone else meanwhile: delete it as it is.
                with contextlib.suppress(SlideNotSignedOff):
                    reopen(store, admin, slide.id, reason)
            delete_slide(store, admin, slide.id)
        except RecordsError as exc:  # gone meanwhile, signed off again meanwhile...
            failed += 1
            print(f"not deleted\t{line}\t{exc}", file=sys.stderr)
            continue
        deleted += 1
        print(f"deleted\t{line}")
    if dry_run:
        print(f"{len(slides)} slides {what} would be deleted (dry run: nothing changed)")
        return 0
    print(f"{deleted} slides {what} deleted" + (f", {failed} not deleted" if failed else ""))
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "backup":
        return _backup(_url(args.database), args.out, args.overwrite)
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
            if args.command == "delete-slides":
                return _delete_slides(store, args.older_than, args.status, args.dry_run, args.admin)
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
            print(f"error: database {store.display_url}: {first_line(exc)}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
