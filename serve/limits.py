"""Guards in front of the routes: the Host a request names, bearer tokens, the body size limit and a
deadline for reading it (ASGI middleware); and in the HTTP protocol, a deadline and size bound on
request headers, one framing per request, room for new connections at the cap, a deadline on
clients that stop reading, and idle connections answered (not reset) while the server drains."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
from urllib.parse import unquote_plus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

BODY_LIMIT = 16 * 1024  # bytes: a body with 64 digits and every field is under 1 kB
BODY_SECONDS = 10.0  # a client that has not sent its body within this is answered 408
HEADER_SECONDS = 10.0  # a connection that has not sent a request's headers within this is closed
HEADER_LIMIT = 16 * 1024  # bytes of request line and headers; more is answered 400
DRAIN_BYTES = 8 << 20  # after refusing a request, read and drop up to this much of what the client
DRAIN_SECONDS = 2.0  # still sends, for at most this long, so that the answer is not lost to a reset
WRITE_SECONDS = 30.0  # a client that reads nothing of a response for this long is disconnected
PUBLIC_PATHS = ("/healthz", "/", "/docs", "/docs/oauth2-redirect", "/openapi.json")  # hold no data
SECRET_NAMES = ("token", "access_token", "api_key", "apikey", "key", "password")  # query values the log hides


async def _reply(send, status: int, detail: str, headers: tuple = (), receive=None) -> None:
    """A one-line JSON error that closes the connection. With ``receive``, what the client still
    sends of its body is read and dropped (within bounds) before the response ends, so that a client
    still sending reads the answer instead of a connection reset."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
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
    except TimeoutError:
        pass


def host_name(header: str) -> str:
    """The name in a Host header, without its port: ``[::1]:8000`` -> ``::1``,
    ``Example.COM.:80`` -> ``example.com``."""
    if header.startswith("["):
        return header[1 : header.find("]")].lower() if "]" in header else header.lower()
    name, colon, port = header.rpartition(":")
    return (name if colon and port.isdigit() else header).lower().rstrip(".")


def is_own_name(name: str, allowed: frozenset[str]) -> bool:
    """Whether a Host name can only reach this server: an IP address (DNS rebinding needs a domain
    name), ``localhost`` and names under ``.localhost`` (RFC 6761 keeps them on this machine), or a
    name the operator allowed."""
    if name in allowed or name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class HostCheck:
    """ASGI middleware against DNS rebinding: a web page whose domain an attacker points at 127.0.0.1
    reaches a loopback server with its own name in ``Host``. Requests naming any host but an IP
    address, ``localhost`` or one of ``allowed`` ("*": any) get a one-line 400."""

    def __init__(self, app, allowed: list[str]) -> None:
        self.app, self.allowed = app, frozenset(name.lower().rstrip(".") for name in allowed)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or "*" in self.allowed:
            return await self.app(scope, receive, send)
        header = dict(scope["headers"]).get(b"host")
        if header is None:  # HTTP/1.0 without a Host: no browser sends that
            return await self.app(scope, receive, send)
        name = host_name(header.decode("latin-1"))
        if is_own_name(name, self.allowed):
            return await self.app(scope, receive, send)
        await _reply(
            send,
            400,
            f"Host {name!r} is not a name of this server; if it is, start ddpm-serve with --allow-host {name}",
            receive=receive,
        )


def redact_query(target: str) -> str:
    """A request target with the values of secret-named query parameters replaced: ``?token=abc`` -> ``?token=***``."""
    path, mark, query = target.partition("?")
    if not mark:
        return target
    items = []
    for item in query.split("&"):
        name, equals, _ = item.partition("=")
        items.append(f"{name}=***" if equals and unquote_plus(name).lower() in SECRET_NAMES else item)
    return f"{path}?{'&'.join(items)}"


class RedactSecrets(logging.Filter):
    """For uvicorn's access log: a secret passed in a query string (by mistake; the API takes tokens
    only in the Authorization header) is not written to the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


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
        await _reply(
            send,
            401,
            "this server needs a bearer token: Authorization: Bearer <token>",
            ((b"www-authenticate", b"Bearer"),),
            receive,
        )


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
        except TimeoutError:
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
    """Uvicorn's h11 protocol with the guards a public port needs:

    - a deadline on each request's head: a client that opens a connection (or finishes a response)
      and then sends its headers a byte at a time is closed after :data:`HEADER_SECONDS`; a head over
      :data:`HEADER_LIMIT` bytes is answered 431, however it arrives;
    - one framing per request: ``Content-Length`` together with ``Transfer-Encoding`` (a request
      smuggling vector, RFC 9112 §6.1) is answered 400 and the connection closed;
    - room at the cap: at ``max_connections``, a new connection closes the one that has waited
      longest for a request head, so half-sent connections cannot crowd out clients that send whole
      requests; only when every connection is in a request is the new one answered a JSON 503;
    - a write deadline: a client that reads nothing for :data:`WRITE_SECONDS` while the server has
      data for it is disconnected, so a stream nobody reads holds no buffer or task for long;
    - draining: an idle keep-alive connection stays open for ``drain_seconds`` after the server
      starts to drain, so a request sent on it is answered (503 for new work) instead of reset.
    """

    drain_seconds: float = 0.0  # set per server (see serve.server)
    max_connections: int | None = None  # set per server; None: no cap
    _deadline: asyncio.TimerHandle | None = None  # armed while waiting for a request head
    _waiting_since: float = 0.0
    _head: bytes = b""  # what arrived of the current request's head (line and headers)
    _dropping: int | None = None  # bytes dropped after refusing an over-long head (None: not refusing)
    _refusal: str | None = None  # why the request being refused is refused
    _stalled: asyncio.TimerHandle | None = None  # the write deadline, while the client reads nothing
    _draining: bool = False

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.conn.next_event = self._one_framing(self.conn.next_event)
        self._arm()
        if not self._make_room():
            self._refuse(
                b"503 Service Unavailable",
                "the server has as many connections as it takes, all in requests; retry later",
                b"retry-after: 1\r\n",
            )

    def _one_framing(self, next_event):
        def checked():
            event = next_event()
            if isinstance(event, h11.Request):
                names = {name for name, _ in event.headers}  # h11 gives them lower-cased
                if b"transfer-encoding" in names and b"content-length" in names:
                    self._refusal = "a request may not carry both Content-Length and Transfer-Encoding"
                    raise h11.RemoteProtocolError(self._refusal)
            return event

        return checked

    def send_400_response(self, msg: str) -> None:
        """A malformed request: one line of JSON, then the connection closes."""
        body = json.dumps({"detail": self._refusal or "not a valid HTTP/1.1 request"}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (h11.Response(status_code=400, headers=headers), h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()

    def _make_room(self) -> bool:
        """Below the cap again: close the connections that have waited longest for a request head, as
        many as the new one puts over. False when they are all in requests."""
        if self.max_connections is None:
            return True
        staying = [
            other
            for other in self.connections
            if not other.transport.is_closing() and getattr(other, "_dropping", None) is None
        ]
        excess = len(staying) - self.max_connections
        if excess <= 0:
            return True
        waiting = [other for other in staying if other is not self and getattr(other, "_deadline", None) is not None]
        for other in sorted(waiting, key=lambda other: other._waiting_since)[:excess]:
            other._expire()
        return len(waiting) >= excess

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
            if self._draining and self.cycle is not None:
                self.cycle.keep_alive = False  # answered, then closed: the server is going away

    def _refuse_head(self) -> None:
        self._refuse(b"431 Request Header Fields Too Large", f"the request's headers are over {HEADER_LIMIT} bytes")

    def _refuse(self, status: bytes, detail: str, headers: bytes = b"") -> None:
        """A one-line JSON answer, then drop what the client still sends of its head (bounded), and
        close: closing at once with its bytes unread would reset the connection before the client
        reads the answer."""
        body = json.dumps({"detail": detail}).encode()
        self.transport.write(
            b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s"
            b"connection: close\r\n\r\n%s" % (status, len(body), headers, body)
        )
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

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._stalled is None:
            self._stalled = self.loop.call_later(WRITE_SECONDS, self._abort)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    def _abort(self) -> None:
        """Drop the connection and what is buffered for it: close() would wait for a reader that never reads."""
        self._stalled = None
        self.transport.abort()

    def shutdown(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            return super().shutdown()  # in a request: closed once it is answered
        self._draining = True
        self._disarm()
        self._deadline = self.loop.call_later(self.drain_seconds, self._expire)

    def connection_lost(self, exc) -> None:
        self._disarm()
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._waiting_since = self.loop.time()
        self._deadline = self.loop.call_later(HEADER_SECONDS, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()
