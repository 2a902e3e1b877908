"""Pure-ASGI middleware that bounds request bodies while they stream in: in size and in time.

Size: a declared Content-Length over the limit is refused before any body byte is read. Otherwise
the bytes are counted as they arrive; the moment the count passes the limit the body is abandoned
and the client gets 413, so an oversized upload is never buffered, parsed or written anywhere.

Time: the whole body must have arrived within `CXR_BODY_READ_TIMEOUT_SECONDS` of the request's
start; a body still arriving then (one byte a second, say) is abandoned and the client gets 408
with `Connection: close`, so a trickling client cannot hold a connection and a request's memory
for as long as it likes. Once the body is complete, waits on the connection (a `?wait=` request
listening for the client going away) are not limited.
"""

from __future__ import annotations

import asyncio
import time

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.errors import BodyReadTimeoutError, UploadTooLargeError
from services.gateway.problems import problem_response


class _BodyTooLarge(Exception):
    """Raised into the application when the body passes the limit; never leaves the middleware."""


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._refuse(scope, receive, send)
            return

        received = 0
        exceeded = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise _BodyTooLarge()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    exceeded = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if exceeded and not response_started:
                return  # whatever the app answers to a cut-off body is replaced by the 413
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            pass
        except Exception:
            if not exceeded:
                raise
        if exceeded and not response_started:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = UploadTooLargeError(self.max_body_bytes)
        response = problem_response(Request(scope), error.http_status, error.code, error.message,
                                    {"Connection": "close"})
        await response(scope, receive, send)


class _BodyTimedOut(Exception):
    """Raised into the application when the body is late; never leaves the middleware."""


class BodyReadTimeoutMiddleware:
    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.timeout_s
        body_complete = False
        timed_out = False
        response_started = False

        async def timed_receive() -> Message:
            nonlocal body_complete, timed_out
            if body_complete:
                return await receive()
            if timed_out:
                raise _BodyTimedOut()
            try:
                message = await asyncio.wait_for(receive(), deadline - time.monotonic())
            except TimeoutError:
                timed_out = True
                raise _BodyTimedOut() from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_complete = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if timed_out and not response_started:
                return  # whatever the app answers to a cut-off body is replaced by the 408
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, guarded_send)
        except _BodyTimedOut:
            pass
        except Exception:
            if not timed_out:
                raise
        if timed_out and not response_started:
            error = BodyReadTimeoutError(self.timeout_s)
            response = problem_response(Request(scope), error.http_status, error.code,
                                        error.message, {"Connection": "close"})
            await response(scope, receive, send)
