"""The one table from errors to HTTP: RFC 9457 problem details with a stable ``code``."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from loyalty.adapters.db.engine import StorageUnavailable
from loyalty.application.access import Forbidden, Unauthenticated
from loyalty.domain import errors as e

log = logging.getLogger("loyalty.api")

PROBLEM_JSON = "application/problem+json"

STATUS_BY_ERROR: list[tuple[type[e.DomainError], int]] = [
    (Unauthenticated, 401),
    (Forbidden, 403),
    (e.NotFound, 404),
    (e.Conflict, 409),
    (e.Unprocessable, 422),
    (e.TooManyAttempts, 429),
]


class ApiProblem(Exception):
    """An error raised by the API layer itself (bad header, missing key...)."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = extra


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:loyalty:problem:{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "code": code,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def status_for(exc: e.DomainError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 400


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    path = ""
    for p in parts:
        path += f"[{p}]" if p.isdigit() else (f".{p}" if path else p)
    return path or "body"


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route accepts on this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.state.api_routes:
        match, _ = route.matches({**request.scope, "method": "__NONE__"})
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def install(app: FastAPI) -> None:
    @app.exception_handler(e.DomainError)
    async def _domain(request: Request, exc: e.DomainError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
        if isinstance(exc, e.TooManyAttempts):
            headers = {"Retry-After": str(exc.context["retry_after_s"])}
        return problem(
            status_for(exc),
            exc.code,
            exc.detail,
            instance=request.url.path,
            headers=headers,
            **exc.context,
        )

    @app.exception_handler(ApiProblem)
    async def _api(request: Request, exc: ApiProblem) -> JSONResponse:
        return problem(exc.status, exc.code, exc.detail, instance=request.url.path, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": _loc(tuple(err.get("loc", ()))),
                "message": err.get("msg", ""),
                "type": err.get("type", ""),
            }
            for err in exc.errors()
        ]
        return problem(
            422,
            "validation_error",
            f"{len(errors)} field(s) are invalid.",
            instance=request.url.path,
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's answer to a body it can't decode (bytes that are not UTF-8, a JSON
            # integer longer than Python reads): for the client, an invalid body like any other.
            return problem(
                422,
                "validation_error",
                "1 field(s) are invalid.",
                instance=request.url.path,
                errors=[
                    {
                        "field": "body",
                        "message": "The body can't be read as JSON (it must be UTF-8, with "
                        "numbers of at most 4,300 digits).",
                        "type": "json_invalid",
                    }
                ],
            )
        codes = {404: "not_found", 405: "method_not_allowed"}
        code = codes.get(exc.status_code, f"http_{exc.status_code}")
        headers = dict(exc.headers) if exc.headers else {}
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return problem(
            exc.status_code,
            code,
            str(exc.detail),
            instance=request.url.path,
            headers=headers or None,
        )

    @app.exception_handler(StorageUnavailable)
    async def _storage(request: Request, exc: StorageUnavailable) -> JSONResponse:
        return problem(
            503,
            "storage_unavailable",
            "The database is unavailable; nothing was "
            "recorded. Retry with the same idempotency key.",
            instance=request.url.path,
            headers={"Retry-After": str(exc.retry_after_s)},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return problem(
            500,
            "internal_error",
            "An unexpected error occurred; nothing was recorded.",
            instance=request.url.path,
        )


ERROR_CODES: dict[str, int] = {
    "validation_error": 422,
    "payload_too_large": 413,
    "unauthenticated": 401,
    "forbidden": 403,
    "idempotency_key_required": 400,
    "not_found": 404,
    "method_not_allowed": 405,
    "storage_unavailable": 503,
    "internal_error": 500,
}
"""Codes the API layer itself produces; domain codes come from ``domain_error_codes()``."""


def domain_error_codes() -> dict[str, int]:
    """Every domain error's code and status, found by walking the error classes."""
    found: dict[str, int] = {}
    pending: list[type[e.DomainError]] = [e.DomainError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__subclasses__():
            continue
        status = next((s for base, s in STATUS_BY_ERROR if issubclass(cls, base)), 400)
        found[cls.code] = status
    return found
