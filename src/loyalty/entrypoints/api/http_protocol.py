"""uvicorn's httptools protocol, with each answer leaving in one send.

uvicorn writes an answer's status line and headers when the application starts it, and the
body when the application sends it: two ``send`` system calls per answer, each taking the
loopback or network stack's full path under Python's lock. On the earn path that was about a
tenth of the server's time under the lock. Here the connection's writes are gathered while the
event loop runs one callback and leave together when it is done: the application's start and
body messages arrive in the same callback, so one answer is one send.

Nothing is held longer than the callback that wrote it: the writes leave on the event loop's
next turn, before it waits for any socket, and before the connection closes. Nor is much held:
past ``FLUSH_BYTES`` the writes leave at once, so a long answer written in one callback still
meets the transport's flow control (which pauses the application) as it did.

``loyalty serve`` runs it; with uvicorn's own command, pass
``--http loyalty.entrypoints.api.http_protocol:HttpProtocol``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

PROTOCOL = "loyalty.entrypoints.api.http_protocol:HttpProtocol"
"""What ``uvicorn --http`` takes to run this protocol."""

FLUSH_BYTES = 64 * 1024
"""Writes gathered past this size leave at once, without waiting for the callback's end."""


class CoalescingTransport:
    """A transport whose writes made within one event-loop callback leave as one write.

    Everything but ``write``, ``writelines`` and ``close`` is the wrapped transport's own, so
    flow control (pausing reads, the write buffer's limits) is unchanged."""

    __slots__ = ("_loop", "_pending", "_pending_bytes", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))
        self._pending_bytes += len(data)
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Hand what was written to the wrapped transport, as one write."""
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        # A connection the client dropped meanwhile takes nothing more, as before.
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a ``CoalescingTransport``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not ``asyncio.Transport`` subclasses, but have its methods.
        loop = asyncio.get_running_loop()
        wrapped: Any = CoalescingTransport(transport, loop)  # type: ignore[arg-type]
        super().connection_made(wrapped)
