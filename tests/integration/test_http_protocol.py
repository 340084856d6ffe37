"""The HTTP protocol ``loyalty serve`` runs: uvicorn's httptools protocol, with the writes of one
event-loop callback sent as one. A real uvicorn server on a loopback socket; the test's
protocol subclass records what reaches the real transport (and passes it on), so the test can
see how many sends an answer took as well as what the client received."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from loyalty.entrypoints.api.http_protocol import FLUSH_BYTES, HttpProtocol

# What the real transport of every connection was asked to write, in order.
WRITES: list[bytes] = []


class _Recorded:
    """The real transport, recording each write before making it."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        WRITES.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Recording(asyncio.Protocol):
    """Put before a protocol class: it gets the real transport wrapped in ``_Recorded``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_Recorded(transport))  # type: ignore[arg-type]


class RecordedHttpProtocol(_Recording, HttpProtocol):
    pass


class RecordedUvicornProtocol(_Recording, HttpToolsProtocol):
    """uvicorn's own protocol, recorded the same way: what the shipped one is compared with."""


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/?size=N&chunks=K``: N bytes of body in K body messages sent back to back (no await
    between them that waits); ``/json``: a small JSON answer, as the engine's are."""
    if scope["type"] != "http":
        return
    query = dict(
        part.split("=") for part in scope["query_string"].decode().split("&") if "=" in part
    )
    if scope["path"] == "/json":
        body = json.dumps({"balance": 25, "earned": [{"rule": "base", "points": 25}]}).encode()
        chunks = [body]
    else:
        size, parts = int(query.get("size", "10")), int(query.get("chunks", "1"))
        body = bytes(ord("a") + i % 26 for i in range(size))
        step = -(-size // parts)
        chunks = [body[i : i + step] for i in range(0, size, step)]
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    for n, chunk in enumerate(chunks):
        await send({"type": "http.response.body", "body": chunk, "more_body": n < len(chunks) - 1})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(protocol: type[asyncio.Protocol]) -> Iterator[str]:
    port = _free_port()
    config = uvicorn.Config(
        _app, host="127.0.0.1", port=port, http=protocol, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def shipped() -> Iterator[str]:
    yield from _serve(RecordedHttpProtocol)


@pytest.fixture
def uvicorn_default() -> Iterator[str]:
    yield from _serve(RecordedUvicornProtocol)


def _answers(base: str, paths: list[str]) -> list[httpx.Response]:
    WRITES.clear()
    with httpx.Client(base_url=base) as client:  # one keep-alive connection
        return [client.get(path) for path in paths]


def test_each_answer_leaves_in_one_send(shipped: str, uvicorn_default: str) -> None:
    paths = ["/json"] * 20
    answers = _answers(shipped, paths)
    assert [a.status_code for a in answers] == [200] * 20
    assert all(a.json()["balance"] == 25 for a in answers)
    writes = list(WRITES)
    assert len(writes) == 20
    assert all(w.startswith(b"HTTP/1.1 200 OK\r\n") and w.endswith(b"}") for w in writes)

    # uvicorn's own protocol sends the head and the body apart: twice as many sends.
    assert all(a.status_code == 200 for a in _answers(uvicorn_default, paths))
    assert len(WRITES) == 40


def test_a_body_in_many_pieces_arrives_whole_and_in_order(shipped: str) -> None:
    [answer] = _answers(shipped, ["/?size=5000&chunks=50"])
    assert answer.content == bytes(ord("a") + i % 26 for i in range(5000))
    assert len(WRITES) == 1


def test_a_long_answer_leaves_in_bounded_pieces(shipped: str) -> None:
    size = 5 * FLUSH_BYTES
    [answer] = _answers(shipped, [f"/?size={size}&chunks=100"])
    assert answer.content == bytes(ord("a") + i % 26 for i in range(size))
    # Gathered up to the bound, then sent: never one send of the whole answer.
    assert 5 <= len(WRITES) <= 6
    assert max(len(w) for w in WRITES) < FLUSH_BYTES + size // 100 + 200


def test_an_answer_before_a_close_is_sent_whole(shipped: str) -> None:
    host, port = shipped.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(b"GET /?size=3000&chunks=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"connection: close" in head.lower()
    assert body == bytes(ord("a") + i % 26 for i in range(3000))
