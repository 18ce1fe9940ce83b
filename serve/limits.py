"""Guards in front of the routes: bearer tokens, the body size limit and a deadline for reading it
(ASGI middleware), and a deadline and size bound on request headers (the HTTP protocol)."""

from __future__ import annotations

import asyncio
import hmac
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

BODY_LIMIT = 16 * 1024  # bytes: a body with 64 digits and every field is under 1 kB
BODY_SECONDS = 10.0  # a client that has not sent its body within this is answered 408
HEADER_SECONDS = 10.0  # a connection that has not sent a request's headers within this is closed
HEADER_LIMIT = 16 * 1024  # bytes of request line and headers; more is answered 400
DRAIN_BYTES = 8 << 20  # after refusing a request, read and drop up to this much of what the client
DRAIN_SECONDS = 2.0  # still sends, for at most this long, so that the answer is not lost to a reset
PUBLIC_PATHS = ("/healthz", "/", "/docs", "/docs/oauth2-redirect", "/openapi.json")  # hold no data


async def _reply(send, status: int, detail: str, headers: tuple = (), receive=None) -> None:
    """A one-line JSON error that closes the connection. With ``receive``, what the client still
    sends of its body is read and dropped (within bounds) before the response ends, so that a client
    still sending reads the answer instead of a connection reset."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body, "more_body": receive is not None})
    if receive is not None:
        await _drain(receive)
        await send({"type": "http.response.body", "body": b""})


async def _drain(receive) -> None:
    async def read() -> None:
        size = 0
        while size < DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            size += len(message.get("body", b""))

    try:
        await asyncio.wait_for(read(), DRAIN_SECONDS)
    except asyncio.TimeoutError:
        pass


class BearerAuth:
    """ASGI middleware: every path but :data:`PUBLIC_PATHS` needs ``Authorization: Bearer <token>``
    (compared in constant time), checked before the body is read; ``token`` None lets all through."""

    def __init__(self, app, token: str | None) -> None:
        self.app, self.expected = app, None if token is None else token.encode()

    async def __call__(self, scope, receive, send) -> None:
        if self.expected is None or scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.expected):
            return await self.app(scope, receive, send)
        await _reply(send, 401, "this server needs a bearer token: Authorization: Bearer <token>",
                     ((b"www-authenticate", b"Bearer"),), receive)


class BodyLimit:
    """ASGI middleware: reads a request's body first, refusing one over ``limit`` bytes (413) or one
    not received within ``seconds`` (408), then hands the routes the body it read."""

    def __init__(self, app, limit: int = BODY_LIMIT, seconds: float = BODY_SECONDS) -> None:
        self.app, self.limit, self.seconds = app, limit, seconds

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _reply(send, 413, f"the body is over {self.limit} bytes", receive=receive)
        try:
            body = await asyncio.wait_for(self._read(receive), self.seconds)
        except asyncio.TimeoutError:
            return await _reply(send, 408, f"the body did not arrive within {self.seconds:g} s")
        if body is None:
            return await _reply(send, 413, f"the body is over {self.limit} bytes", receive=receive)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect message, when it comes

        await self.app(scope, replay, send)

    async def _read(self, receive) -> bytes | None:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks)
            size += len(message.get("body", b""))
            if size > self.limit:
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)


class GuardedH11(H11Protocol):
    """Uvicorn's h11 protocol with a deadline on each request's headers: a client that opens a
    connection (or finishes a response) and then sends its headers a byte at a time is closed after
    :data:`HEADER_SECONDS`, so slow clients cannot hold connections until the limit is reached.
    A request head over :data:`HEADER_LIMIT` bytes is answered 431, however it arrives."""

    _deadline: asyncio.TimerHandle | None = None
    _head: bytes = b""  # what arrived of the current request's head (line and headers)
    _dropping: int | None = None  # bytes dropped after refusing an over-long head (None: not refusing)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._dropping is not None:
            return self._drop(data)
        if self.conn.their_state is h11.IDLE:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if (end if end >= 0 else len(self._head)) > HEADER_LIMIT:
                return self._refuse_head()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the headers are in: the body has its own deadline
            self._head = b""
            self._disarm()

    def _refuse_head(self) -> None:
        """431, then drop what the client still sends of its head (bounded), and close: closing at
        once with its bytes unread would reset the connection before the client reads the answer."""
        body = json.dumps({"detail": f"the request's headers are over {HEADER_LIMIT} bytes"}).encode()
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        tail, self._head, self._dropping = self._head[-3:], b"", 0
        self._disarm()
        self._deadline = self.loop.call_later(DRAIN_SECONDS, self._expire)
        self._drop(tail)

    def _drop(self, data: bytes) -> None:
        self._dropping += len(data)
        self._head = (self._head + data)[-4:]
        if b"\r\n\r\n" in self._head or self._dropping > DRAIN_BYTES:  # its head has ended: nothing more to wait for
            self._expire()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request on this connection gets its own deadline

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(HEADER_SECONDS, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()
