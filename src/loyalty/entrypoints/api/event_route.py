"""``POST /v1/programs/{program_id}/events`` on its busiest path: a well-formed event from a key
verified moments ago, parsed straight from the body's bytes and recorded, without the framework's
per-request work (walking the routes, resolving four dependencies, decoding the JSON twice).

The documented route (``routes.post_event``) stays the reference and the only place an error is
worked out: a request this path does not take whole (no cached key, a body that does not
validate, an unusual content type) is handed to it untouched, body included, before anything is
recorded. Both paths call the same use case and build the answer with the same function, so a
client cannot tell which one answered; ``tests/e2e/test_api_event_route.py`` checks that.
"""

from __future__ import annotations

from fastapi.security.utils import get_authorization_scheme_param
from pydantic import TypeAdapter, ValidationError
from starlette.routing import Match, Route
from starlette.types import Message, Receive, Scope, Send

from loyalty.adapters.clock import utc_now
from loyalty.application import access
from loyalty.application.event_documents import Event
from loyalty.entrypoints.api.routes import respond

EVENT: TypeAdapter[Event] = TypeAdapter(Event)
PATH = "/v1/programs/{program_id}/events"
PROGRAM_ID_LENGTH_MAX = 32
# Set on a request handed back to the application's routes, so this route lets it pass.
HANDED_BACK = "loyalty.event_route.handed_back"


class EventRoute(Route):
    """Placed before the application's own routes; matches only ``POST`` to :data:`PATH` not
    already handed back."""

    def __init__(self) -> None:
        super().__init__(PATH, _record_event, methods=["POST"], include_in_schema=False)
        # A function endpoint would be wrapped as a request handler; this one speaks ASGI.
        self.app = _record_event

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope.get("method") != "POST" or HANDED_BACK in scope:
            return Match.NONE, {}
        return super().matches(scope)


async def _hand_back(scope: Scope, receive: Receive, send: Send) -> None:
    """The request goes through the application's routes to the documented route."""
    scope[HANDED_BACK] = True
    await scope["app"].router(scope, receive, send)


async def _record_event(scope: Scope, receive: Receive, send: Send) -> None:
    app = scope["app"]
    groups = app.state.event_groups
    program_id: str = scope["path_params"]["program_id"]
    token = _bearer_and_json(scope["headers"])
    principal = (
        access.cached_principal(app.state.engine, token)
        if token is not None and groups is not None
        else None
    )
    if principal is None or not 1 <= len(program_id) <= PROGRAM_ID_LENGTH_MAX:
        await _hand_back(scope, receive, send)
        return
    messages, body = await _read_body(receive)
    try:
        event = EVENT.validate_json(body)
    except ValidationError:
        await _hand_back(scope, _replay(messages, receive), send)
        return
    outcome = await groups.submit(principal, program_id, event, now=utc_now())
    await respond(outcome)(scope, receive, send)


def _bearer_and_json(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The bearer token, when the request also declares a JSON body; None for anything the
    documented route should judge."""
    authorization: str | None = None
    json_body = False
    for name, value in headers:
        if name == b"authorization":
            if authorization is not None:
                return None
            authorization = value.decode("latin-1")
        elif name == b"content-type":
            json_body = value == b"application/json"
    scheme, token = get_authorization_scheme_param(authorization)
    if not json_body or scheme.lower() != "bearer" or not token:
        return None
    return token


async def _read_body(receive: Receive) -> tuple[list[Message], bytes]:
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            break
    return messages, b"".join(m.get("body", b"") for m in messages)


def _replay(messages: list[Message], then: Receive) -> Receive:
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        return await then()

    return receive
