"""`python -m app`: serve with uvicorn on RBC_HOST:RBC_PORT, or `python -m app analyze-smear`
(app/cli.py, docs/service.md)."""

from __future__ import annotations

from app.cli import main

if __name__ == "__main__":
    main()
