"""The interactive API docs (Swagger UI) from this service's own files: no third-party script.

FastAPI's default /docs page loads Swagger UI from a CDN; here its files come from the pinned
`swagger-ui-bundle` package, and the page's content security policy allows only this origin's
scripts plus the page's one inline start-up script (by its hash).
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from app.openapi import OpenApiDocuments
from app.records_slot import RecordsSlot

ASSETS = "/docs/assets"
OPENAPI_URL = "/openapi.json"
router = APIRouter(include_in_schema=False)


def inline_script_hashes(html: str) -> list[str]:
    """CSP source expressions ('sha256-...') for each inline <script> of `html`."""
    hashes = []
    for body in re.findall(r"<script>(.*?)</script>", html, flags=re.DOTALL):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes.append(f"'sha256-{digest}'")
    return hashes


@router.get("/docs", response_class=HTMLResponse)
def swagger_ui(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    page = get_swagger_ui_html(
        openapi_url=OPENAPI_URL,
        title=f"{app.title} - API",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
    )
    html = bytes(page.body).decode()
    scripts = " ".join(["'self'", *inline_script_hashes(html)])
    page.headers["Content-Security-Policy"] = (
        f"default-src 'self'; script-src {scripts}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )
    return page


@router.get(OPENAPI_URL)
def openapi_document(request: Request) -> JSONResponse:
    """The OpenAPI document (app/openapi.py); /slides operations declare the user token only
    when the service asks for one (a plain `def`: deciding may read the records database)."""
    documents: OpenApiDocuments = request.app.state.openapi_documents
    records: RecordsSlot = request.state.records
    return JSONResponse(documents.get(slides_token=records.needs_token()))


def mount_assets(app: FastAPI) -> None:
    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")
