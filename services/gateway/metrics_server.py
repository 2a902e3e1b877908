"""The gateway's Prometheus metrics on their own internal port, never on the public one.

`GET /metrics` answers on `CXR_GATEWAY_METRICS_HOST:CXR_GATEWAY_METRICS_PORT` (plain HTTP, no
key: only the scraper can reach it) from a second uvicorn server that runs inside the gateway's
event loop, started and stopped with the app (its lifespan). It reads the same collectors the
public app's middleware fills, and refreshes the PACS report counts from Redis before each scrape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import redis
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.gateway.resources import GatewayResources

log = logging.getLogger("cxr.gateway")
START_TIMEOUT_S = 10.0


async def metrics_response(resources: GatewayResources) -> Response:
    """The Prometheus exposition of the gateway's metrics, PACS report counts read just before."""
    try:
        await resources.metrics.refresh_pacs_reports(resources.redis)
    except (redis.RedisError, OSError) as exc:  # the other metrics still answer
        log.warning("PACS report counts not read from Redis: %s", type(exc).__name__)
    return Response(generate_latest(resources.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def metrics_app(resources: GatewayResources) -> Starlette:
    async def metrics(_request: Request) -> Response:
        return await metrics_response(resources)

    return Starlette(routes=[Route("/metrics", metrics, methods=["GET"])])


class _InnerServer(uvicorn.Server):
    """A uvicorn server that leaves signals to the public server, which owns the process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class MetricsServer:
    """Start it in the app's lifespan, stop it on the way out."""

    def __init__(self, resources: GatewayResources, host: str, port: int) -> None:
        # log_config and log_level None: the public server's logging (its access-log filter
        # included) is left exactly as it is.
        config = uvicorn.Config(metrics_app(resources), host=host, port=port, lifespan="off",
                                log_config=None, log_level=None, server_header=False)
        self._server = _InnerServer(config)
        self._task: asyncio.Task[None] | None = None
        self.host, self.port = host, port
        self.address = f"{host}:{port}"

    def _listen(self) -> socket.socket:
        """The bound socket; RuntimeError naming the address when the port cannot be had."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise RuntimeError(
                f"the metrics endpoint could not listen on {self.address}: {exc.strerror}; "
                "set CXR_GATEWAY_METRICS_PORT to a free port (0: no metrics)") from exc
        return sock

    async def start(self) -> None:
        """Listen, or raise when the port cannot be had (the gateway then does not start)."""
        sock = self._listen()
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while not self._server.started:
            if self._task.done() or asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise RuntimeError(f"the metrics endpoint could not listen on {self.address}")
            await asyncio.sleep(0.05)
        log.info("metrics on http://%s/metrics", self.address)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(BaseException):  # a failed start ends in SystemExit
            await self._task
        self._task = None
