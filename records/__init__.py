"""The laboratory's records for slides: users and their tokens, slides, fields (with the uploaded
images), cells, reviews, sign-off and the audit trail (SQLAlchemy 2, Alembic; SQLite by default,
PostgreSQL for several service instances).

- `schema`: the ORM models; `migrations/`: the Alembic revisions (hand-written to match);
- `store`: the functions the service calls (`open_store`, `create_slide`, `add_field`,
  `review_cell`, `sign_off`, ...), returning frozen dataclasses;
- `errors`: what they raise, each with its HTTP status;
- `python -m records`: `upgrade`, `create-user`, `list-users`.

Nothing here imports torch, the classifier, the detector, the service or training; counts and
grades come from `core.smear.counting` / `core.smear.grading` (pure Python).
"""
