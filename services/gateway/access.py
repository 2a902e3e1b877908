"""Pure-ASGI gate in front of `/v1/`: API key and rate limit checked before any body byte is read.

Running before the route means an unknown caller cannot make the gateway receive, parse or spool
an upload; the route's dependency then only reads the client name stored here.

It also notes the caller's network address for the audit trail (`shared.audit.caller_address`)
before anything else, so every audit line of the request, refusals included, carries it.
"""

from __future__ import annotations

import logging

import redis.exceptions
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from services.gateway.problems import backend_down_response, error_response
from shared.audit import caller_address
from shared.errors import CXRError

PROTECTED_PREFIXES = ("/v1/", "/dicomweb/")
log = logging.getLogger("cxr.gateway")


class ApiAccessMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            peer = scope.get("client")
            caller_address.set(peer[0] if peer else None)
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        resources = scope["app"].state.resources
        try:
            client = resources.keys.authenticate(Headers(scope=scope).get("authorization"))
            scope.setdefault("state", {})["client"] = client  # a 429 is audited under its client
            await resources.limiter.hit(client)
        except CXRError as exc:
            await error_response(Request(scope), exc)(scope, receive, send)
            return
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.warning("rate limiter cannot reach Redis: %s", exc)
            await backend_down_response(Request(scope))(scope, receive, send)
            return
        await self.app(scope, receive, send)
