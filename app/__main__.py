"""`python -m app`: serve with uvicorn on RBC_HOST:RBC_PORT (see docs/service.md)."""

from __future__ import annotations

import uvicorn

from app.config import get_settings


def main() -> None:
    settings = get_settings()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Behind Render's or another proxy, trust its X-Forwarded-* headers only from loopback.
        proxy_headers=True,
    )


if __name__ == "__main__":
    main()
