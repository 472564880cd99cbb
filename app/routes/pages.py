"""The upload page: plain HTML, CSS and JavaScript from templates/ and static/, no build step."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.deps import SettingsDep

router = APIRouter(tags=["page"], include_in_schema=False)

# The page runs only its own script and styles; images may be data: (heatmaps) or blob: (previews).
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


@router.get("/", response_class=HTMLResponse)
def index(request: Request, settings: SettingsDep) -> HTMLResponse:
    response: HTMLResponse = request.app.state.templates.TemplateResponse(
        request,
        "index.html",
        {
            "token_required": settings.api_token is not None,
            "max_files": settings.max_files,
            "max_upload_mib": round(settings.max_upload_bytes / (1 << 20), 1),
            "accepted_formats": ", ".join(settings.accepted_formats),
        },
    )
    response.headers["Content-Security-Policy"] = CSP
    return response
