"""`create_app(settings)`: the FastAPI app with its routes, middleware and error handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from services.gateway import multipart
from services.gateway.access import ApiAccessMiddleware
from services.gateway.metrics import MetricsMiddleware
from services.gateway.metrics_server import MetricsServer
from services.gateway.problems import install_problem_handlers
from services.gateway.resources import GatewayResources
from services.gateway.routes import dicomweb, health, models, predictions, web
from services.gateway.settings import GatewaySettings, get_settings
from services.gateway.upload_limit import BodyReadTimeoutMiddleware, BodySizeLimitMiddleware
from shared.audit import configure_audit

DESCRIPTION = """Reads chest X-rays (JPEG, PNG, DICOM) and answers NORMAL or PNEUMONIA with a
calibrated probability, the decision threshold, the model version and a Grad-CAM heatmap.

**Not for clinical use.** Send `Authorization: Bearer <API key>` on every `/v1` request.
Errors are RFC 7807 problem details (`application/problem+json`) with a stable `code`."""

TAGS = [
    {"name": "predictions", "description": "Upload X-rays and read their predictions."},
    {"name": "models", "description": "The model that answers predictions."},
    {"name": "operations", "description": "Probes (metrics are on the internal metrics port)."},
]


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or get_settings()
    multipart.install()  # file names sent only as filename*=UTF-8''... (RFC 5987)
    resources = GatewayResources.from_settings(settings)
    configure_audit(settings.audit_log)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics_server = None
        if settings.gateway_metrics_port:
            metrics_server = MetricsServer(resources, settings.gateway_metrics_host,
                                           settings.gateway_metrics_port)
            await metrics_server.start()
        resources.notices.start()  # one pub/sub listener for every waiting request
        yield
        if metrics_server is not None:
            await metrics_server.stop()
        await resources.aclose()

    app = FastAPI(title="cxr-pneumonia gateway", version="1.0.0", description=DESCRIPTION,
                  openapi_tags=TAGS, lifespan=lifespan)
    app.state.resources = resources
    install_problem_handlers(app)
    # Added last = outermost: metrics also count what the access gate and size limit refuse.
    app.add_middleware(ApiAccessMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_request_bytes)
    app.add_middleware(BodyReadTimeoutMiddleware, timeout_s=settings.body_read_timeout_seconds)
    app.add_middleware(MetricsMiddleware, metrics=resources.metrics)
    for module in (predictions, dicomweb, models, health, web):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=web.STATIC_DIR), name="static")
    return app
