"""The ASGI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loyalty import __version__
from loyalty.adapters.db.engine import background_checkpoints
from loyalty.application.limits import REQUEST_BODY_BYTES_MAX
from loyalty.bootstrap import Settings, build_engine, build_event_groups
from loyalty.entrypoints.api import errors
from loyalty.entrypoints.api.event_route import EventRoute
from loyalty.entrypoints.api.routes import router

DESCRIPTION = """
An API-first engine for customer loyalty programs.

* Authenticate with an API key: `Authorization: Bearer <key id>.<secret>`.
* Members are addressed by the engine's id (`mbr_...`) or by `ext:<your external id>`.
* Every error is an RFC 9457 problem (`application/problem+json`) with a stable `code`.
* Writes are idempotent: events on their `id`, other writes on the `Idempotency-Key` header.
* Points and money are integers in their smallest unit (`*_minor` for money).
"""


class BodySizeLimit:
    """Refuse bodies over the maximum before the application reads them, whether or not the
    client sent a truthful Content-Length."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.max_bytes + 1
                if declared > self.max_bytes:
                    await self._reject(scope, receive, send)
                    return
        # Read the whole body first (it is bounded), so an oversized chunked body is refused
        # with 413 before any handler or parser sees it.
        chunks: list[bytes] = []
        seen = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        for where, found in (
            ("body", _has_nul(body)),
            ("query", b"%00" in scope.get("query_string", b"")),
            ("path", "\x00" in scope["path"]),
        ):
            if found:
                await self._refuse_nul(scope, receive, send, where)
                return
        await self.app(
            scope,
            _replay([{"type": "http.request", "body": body, "more_body": False}], receive),
            send,
        )

    async def _refuse_nul(self, scope: Scope, receive: Receive, send: Send, where: str) -> None:
        response = errors.problem(
            422,
            "validation_error",
            "Text must not contain NUL characters.",
            instance=scope.get("path"),
            errors=[{"field": where, "message": "NUL character (U+0000)", "type": "nul"}],
        )
        await response(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = errors.problem(
            413,
            "payload_too_large",
            f"The request body exceeds {self.max_bytes} bytes.",
            instance=scope.get("path"),
            max_bytes=self.max_bytes,
        )
        await response(scope, receive, send)


def _has_nul(body: bytes) -> bool:
    """NUL has no place in any text the engine stores (PostgreSQL refuses it); in JSON it can
    only arrive as the escape ``\\u0000``."""
    return b"\x00" in body or b"\\u0000" in body.lower()


def _replay(messages: list[Message], then: Receive | None = None) -> Receive:
    """A ``receive`` that hands out ``messages`` and then defers to ``then``."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


def create_app(engine: Engine | None = None, settings: Settings | None = None) -> FastAPI:
    """The application on ``engine`` (else the configured database); ``settings`` default to
    the environment's."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            with background_checkpoints(app.state.engine):
                yield
        finally:
            if app.state.event_groups is not None:
                app.state.event_groups.close()

    app = FastAPI(
        title="Loyalty Engine",
        version=__version__,
        description=DESCRIPTION,
        docs_url="/docs",
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.engine = engine if engine is not None else build_engine(settings, serving=True)
    app.state.event_groups = build_event_groups(app.state.engine, settings)
    errors.install(app)
    app.include_router(router)
    app.state.api_routes = list(router.routes)
    app.router.routes.insert(0, EventRoute())

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    app.add_middleware(BodySizeLimit, max_bytes=REQUEST_BODY_BYTES_MAX)
    return app
