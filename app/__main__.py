"""`python -m app`: serve with uvicorn on RBC_HOST:RBC_PORT (see docs/service.md)."""

from __future__ import annotations

from app.config import get_settings
from app.server import serve


def main() -> None:
    serve(get_settings())


if __name__ == "__main__":
    main()
