"""The OpenAPI document at /openapi.json: FastAPI's, made true to what the service does.

Clients are generated from this document and fuzzers test the service against it
(tests/app/test_contract.py), so it must promise what the service answers, no more and no less:
- errors are JSON (`{"detail": ...}`) whatever an operation answers on success (the report is
  HTML, cells.csv is CSV, a field's image is an image);
- an operation that takes a body can be refused before a route runs: 413 (over
  RBC_MAX_REQUEST_BYTES) and 408 (the body did not arrive in time);
- /slides (and /audit) ask for a user's token only when they do: in local mode (loopback, no
  users) their operations declare no security at all; once users exist, every one needs it;
- file parts say what the service refuses outright: an empty file (422), an empty list of files
  (400), more files than RBC_MAX_FILES (413). In a batch, a bad file gets its own error in a 200
  answer, so the items stay unconstrained. No schema can say "bytes that decode as an image":
  such a file gets 415 or 422. (The accepted formats are not given as `encoding` media types:
  TIFF and BMP have no registered serializer in common clients and fuzzers, which then fail.)
- lists bounded by a setting say so: a field's cells sent back (POST /analyze/smear/counts,
  /analyze/smear/cells.csv) hold at most RBC_MAX_SMEAR_CELLS (413 beyond), as an analysed
  field does.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}
BODY_REFUSALS = {
    "408": "the body did not arrive in time",
    "413": "the request is larger than RBC_MAX_REQUEST_BYTES",
}
METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
SLIDES_SCHEME = "UserToken"


def _operations(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (path, operation)
        for path, item in document.get("paths", {}).items()
        for method, operation in item.items()
        if method in METHODS
    ]


def _errors_are_json(operation: dict[str, Any]) -> None:
    for status, response in operation.get("responses", {}).items():
        if status[:1] not in ("4", "5"):
            continue
        schemas = [c.get("schema") for c in response.get("content", {}).values()]
        if ERROR_REF in schemas or not schemas:
            response["content"] = {"application/json": {"schema": ERROR_REF}}


def _body_refusals(operation: dict[str, Any]) -> None:
    if "requestBody" not in operation:
        return
    responses = operation.setdefault("responses", {})
    for status, description in BODY_REFUSALS.items():
        responses.setdefault(
            status,
            {"description": description, "content": {"application/json": {"schema": ERROR_REF}}},
        )


def _is_file(schema: dict[str, Any]) -> bool:
    return (
        schema.get("contentMediaType") == "application/octet-stream"
        or schema.get("format") == "binary"
    )


def _file_parts(document: dict[str, Any], operation: dict[str, Any], max_files: int) -> None:
    """Each file part of a multipart body: not empty; a list of files, 1 to `max_files`."""
    content = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
    if content is None:
        return
    schema = content.get("schema", {})
    ref = schema.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        schema = document["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    for part in schema.get("properties", {}).values():
        if part.get("type") == "array" and _is_file(part.get("items", {})):
            part.update(minItems=1, maxItems=max_files)
        elif _is_file(part):
            part["minLength"] = 1


def _list_bounds(document: dict[str, Any], bounds: dict[str, int]) -> None:
    """maxItems of the lists named "Schema.property" (a setting, so not in the model)."""
    schemas = document.get("components", {}).get("schemas", {})
    for name, bound in bounds.items():
        model, prop = name.split(".")
        schemas[model]["properties"][prop]["maxItems"] = bound


def build_document(
    app: FastAPI, max_files: int, list_bounds: dict[str, int] | None = None
) -> dict[str, Any]:
    """FastAPI's document with the rules above, slides secured (users mode)."""
    document = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    for _, operation in _operations(document):
        _errors_are_json(operation)
        _body_refusals(operation)
        _file_parts(document, operation, max_files)
    _list_bounds(document, list_bounds or {})
    return document


def without_slides_security(document: dict[str, Any]) -> dict[str, Any]:
    """The document for local mode: the operations secured by a user's token (/slides, /audit)
    need none, so they declare none."""
    local = copy.deepcopy(document)
    for _, operation in _operations(local):
        if any(SLIDES_SCHEME in requirement for requirement in operation.get("security", [])):
            operation.pop("security")
    schemes = local.get("components", {}).get("securitySchemes", {})
    schemes.pop(SLIDES_SCHEME, None)
    if not schemes:
        local.get("components", {}).pop("securitySchemes", None)
    return local


class OpenApiDocuments:
    """The two documents, built once each: slides with a token (users) and without (local)."""

    def __init__(
        self, app: FastAPI, max_files: int, list_bounds: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_files = max_files
        self.list_bounds = dict(list_bounds or {})
        self._documents: dict[bool, dict[str, Any]] = {}

    def get(self, slides_token: bool) -> dict[str, Any]:
        if slides_token not in self._documents:
            users = self._documents.get(True) or build_document(
                self.app, self.max_files, self.list_bounds
            )
            self._documents[True] = users
            if not slides_token:
                self._documents[False] = without_slides_security(users)
        return self._documents[slides_token]


def allowed_methods(document: dict[str, Any], path: str) -> list[str]:
    """The methods the document lists for the path template that `path` fills (for `Allow`)."""
    for template, item in document.get("paths", {}).items():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            return [m.upper() for m in item if m in METHODS]
    return []


def link(
    method: str,
    path: str,
    description: str,
    parameters: dict[str, str],
    body: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An OpenAPI link to the operation `method path`: which values of this answer (or of its
    request) fill the next request. Named by operationRef, so that the operationIds, which
    generated clients use as method names, stay as they are."""
    pointer = path.replace("~", "~0").replace("/", "~1")
    found: dict[str, Any] = {
        "operationRef": f"#/paths/{pointer}/{method.lower()}",
        "description": description,
        "parameters": parameters,
    }
    if body is not None:
        found["requestBody"] = body
    return found
