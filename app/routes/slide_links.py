"""What each answer of the slides API leads to: OpenAPI links (app/openapi.py's `link`), for
generated clients and the contract fuzzer (tests/app/test_contract.py), which follows them from a
new slide to its fields, its cells' reviews, its sign-off, report and deletion."""

from __future__ import annotations

from typing import Any

from app.middleware import AUDIT_PREFIX
from app.openapi import link

_SLIDE = "/slides/{slide_id}"
_CELL = _SLIDE + "/cells/{cell_id}"
_FIELD = _SLIDE + "/fields/{field_id}"
_NEW_SLIDE = {"slide_id": "$response.body#/id"}
_SAME_SLIDE = {"slide_id": "$request.path.slide_id"}


def _slide_links(ids: dict[str, str], version: str) -> dict[str, Any]:
    """Where a slide's id leads: its detail, fields, cells, sign-off, exports, deletion."""
    return {
        "GetSlide": link("GET", _SLIDE, "the slide with its counts", ids),
        "AddField": link("POST", _SLIDE + "/fields", "add a field to the slide", ids),
        "ListCells": link("GET", _SLIDE + "/cells", "the slide's cells", ids),
        "ReviewQueue": link(
            "GET", _SLIDE + "/review-queue", "the cells to review, most teaching first", ids
        ),
        "SignOff": link(
            "POST", _SLIDE + "/sign-off", "sign the slide off", ids, {"version": version}
        ),
        "Audit": link("GET", _SLIDE + "/audit", "the slide's audit trail", ids),
        "CellsCsv": link("GET", _SLIDE + "/cells.csv", "every cell as CSV", ids),
        "Report": link("GET", _SLIDE + "/report", "the printable report", ids),
        "DeleteSlide": link("DELETE", _SLIDE, "delete the slide", ids),
    }


def _cell_links(prefix: str) -> dict[str, Any]:
    """Review the cell at `prefix` of this answer (a JSON pointer), with its version."""
    ids = {**_SAME_SLIDE, "cell_id": f"$response.body#{prefix}/id"}
    return {
        "ReviewCell": link(
            "PATCH",
            _CELL,
            "confirm or relabel the cell",
            ids,
            {"version": f"$response.body#{prefix}/version"},
        )
    }


def _field_links(prefix: str) -> dict[str, Any]:
    ids = {**_SAME_SLIDE, "field_id": f"$response.body#{prefix}/id"}
    return {
        "FieldImage": link("GET", _FIELD + "/image", "the field's image", ids),
        "RemoveField": link("DELETE", _FIELD, "remove the field", ids),
    }


DELETED_LINKS: dict[int | str, dict[str, Any]] = {
    204: {
        "links": {
            "AuditOfDeleted": link(
                "GET",
                AUDIT_PREFIX,
                "the deleted slide's audit trail, kept",
                {"query.slide_id": "$request.path.slide_id"},
            )
        }
    }
}
CREATED_LINKS: dict[int | str, dict[str, Any]] = {
    201: {"links": _slide_links(_NEW_SLIDE, "$response.body#/version")}
}
LISTED_LINKS: dict[int | str, dict[str, Any]] = {
    200: {
        "links": {
            "GetSlide": link(
                "GET", _SLIDE, "the newest slide", {"slide_id": "$response.body#/items/0/id"}
            )
        }
    }
}
DETAIL_LINKS: dict[int | str, dict[str, Any]] = {
    200: {
        "links": {
            **_slide_links(_SAME_SLIDE, "$response.body#/version"),
            **_field_links("/fields/0"),
            "AcceptProposals": link(
                "POST",
                _FIELD + "/accept-proposals",
                "accept the rest of the field's proposals",
                {**_SAME_SLIDE, "field_id": "$response.body#/fields/0/id"},
                {"version": "$response.body#/version"},
            ),
        }
    }
}
FIELD_LINKS: dict[int | str, dict[str, Any]] = {
    201: {
        "links": {
            **_cell_links("/cells/0"),
            **_field_links("/field"),
            "GetSlide": link("GET", _SLIDE, "the slide, counts updated", _SAME_SLIDE),
        }
    }
}
CELLS_LINKS: dict[int | str, dict[str, Any]] = {200: {"links": _cell_links("/items/0")}}
QUEUE_LINKS: dict[int | str, dict[str, Any]] = {200: {"links": _cell_links("/items/0")}}
ACCEPTED_LINKS: dict[int | str, dict[str, Any]] = {
    200: {
        "links": {
            **_cell_links("/cells/0"),
            "GetSlide": link("GET", _SLIDE, "the slide, counts updated", _SAME_SLIDE),
            "ReviewQueue": link(
                "GET", _SLIDE + "/review-queue", "the cells still to review", _SAME_SLIDE
            ),
            "SignOff": link(
                "POST",
                _SLIDE + "/sign-off",
                "sign the slide off",
                _SAME_SLIDE,
                {"version": "$response.body#/slide/version"},
            ),
        }
    }
}
REVIEWED_LINKS: dict[int | str, dict[str, Any]] = {
    200: {
        "links": {
            **_cell_links(""),
            "GetSlide": link("GET", _SLIDE, "the slide, counts updated", _SAME_SLIDE),
        }
    }
}
SIGNED_LINKS: dict[int | str, dict[str, Any]] = {
    200: {
        "links": {
            "Reopen": link("POST", _SLIDE + "/reopen", "reopen the slide", _NEW_SLIDE),
            "Report": link("GET", _SLIDE + "/report", "the printable report", _NEW_SLIDE),
        }
    }
}
REOPENED_LINKS: dict[int | str, dict[str, Any]] = {
    200: {
        "links": {
            "SignOff": link(
                "POST",
                _SLIDE + "/sign-off",
                "sign it off again",
                _NEW_SLIDE,
                {"version": "$response.body#/version"},
            )
        }
    }
}
