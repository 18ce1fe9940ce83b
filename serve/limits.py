"""Guards in front of the routes: the body size limit, a deadline for reading it, and bearer tokens."""

from __future__ import annotations

import asyncio
import hmac
import json

from fastapi import HTTPException, Request

BODY_LIMIT = 16 * 1024  # bytes: a body with 64 digits and every field is under 1 kB
BODY_SECONDS = 10.0  # a client that has not sent its body within this is dropped (slow clients)


async def _reply(send, status: int, detail: str, headers: tuple = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


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
            return await _reply(send, 413, f"the body is over {self.limit} bytes")
        try:
            body = await asyncio.wait_for(self._read(receive), self.seconds)
        except asyncio.TimeoutError:
            return await _reply(send, 408, f"the body did not arrive within {self.seconds:g} s")
        if body is None:
            return await _reply(send, 413, f"the body is over {self.limit} bytes")
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


def bearer(token: str | None):
    """A dependency that lets a request through only with ``Authorization: Bearer <token>`` (compared
    in constant time); with no token, everything passes."""
    expected = None if token is None else token.encode()

    async def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise HTTPException(401, "this server needs a bearer token: Authorization: Bearer <token>",
                                headers={"WWW-Authenticate": "Bearer"})

    return check
