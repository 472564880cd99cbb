"""Alembic migrations of the records store (a package so that wheels carry them)."""
