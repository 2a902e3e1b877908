"""Everything a request handler talks to, built once per app from the settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry

from services.gateway.auth import DEMO_CLIENT, ApiKeyRing, load_or_create_demo_key
from services.gateway.clients.mlflow_registry import MlflowRegistryClient, VersionFiles
from services.gateway.clients.serving_rest import ServingRestClient
from services.gateway.idempotency import IdempotencyKeys
from services.gateway.metrics import GatewayMetrics
from services.gateway.notices import JobNotices
from services.gateway.ratelimit import RateLimiter
from services.gateway.settings import GatewaySettings
from shared.imaging import DecodeLimits
from shared.jobs.queue import JobQueue
from shared.jobs.store import JobStore
from shared.redis_clients import REDIS_RETRIES, redis_backoff, redis_client
from shared.reidentification import ReidentificationKeys
from shared.storage import Storage, get_storage, storage_at


def build_key_ring(settings: GatewaySettings) -> tuple[ApiKeyRing, str | None]:
    """The configured keys; in development without any, a generated demo key (also returned)."""
    spec = settings.api_keys.get_secret_value()
    if spec.strip():
        return ApiKeyRing.parse(spec), None
    if settings.env == "production":  # settings validation already refuses this; belt and braces
        raise ValueError("CXR_API_KEYS must be set in production.")
    demo_key = load_or_create_demo_key(Path(settings.demo_key_file))
    return ApiKeyRing.parse(f"{DEMO_CLIENT}:{demo_key}"), demo_key


@dataclass
class GatewayResources:
    settings: GatewaySettings
    keys: ApiKeyRing
    demo_key: str | None
    redis: redis.asyncio.Redis
    storage: Storage
    jobs: JobStore
    queue: JobQueue
    limiter: RateLimiter
    idempotency: IdempotencyKeys
    metrics: GatewayMetrics
    limits: DecodeLimits
    notices: JobNotices
    # Where those are kept: the DICOM intake records a job's re-identification key, and deleting
    # the job deletes it.
    reid: ReidentificationKeys | None = None
    http: httpx.AsyncClient = field(init=False)
    serving: ServingRestClient = field(init=False)
    registry: MlflowRegistryClient = field(init=False)

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> GatewayResources:
        keys, demo_key = build_key_ring(settings)
        # Commands retried on a fresh connection after a Redis restart (shared.redis_clients):
        # without it the first requests after a restart got 503.
        async_redis = redis.asyncio.Redis.from_url(
            settings.redis_url, retry=AsyncRetry(redis_backoff(), REDIS_RETRIES))
        storage = get_storage(settings)
        resources = cls(
            settings=settings, keys=keys, demo_key=demo_key, redis=async_redis, storage=storage,
            jobs=JobStore(redis_client(settings.redis_url), storage),
            queue=JobQueue(settings),
            limiter=RateLimiter(async_redis, settings.rate_limit_per_minute),
            idempotency=IdempotencyKeys(async_redis, storage, settings.idempotency_ttl_seconds),
            metrics=GatewayMetrics(), limits=DecodeLimits.from_settings(settings),
            notices=JobNotices(async_redis),
            reid=ReidentificationKeys.from_settings(settings),
        )
        resources.metrics.watch_notices(resources.notices)
        resources.open_http()
        return resources

    def open_http(self) -> None:
        self.http = httpx.AsyncClient(timeout=self.settings.upstream_timeout_seconds)
        self.serving = ServingRestClient(self.http, self.settings.model_server_rest,
                                         self.settings.model_name)
        # A bundled version's metrics and card are in its own folder of the serving base.
        version_files = VersionFiles(lambda: storage_at(self.settings.model_base_path,
                                                        self.settings.s3_endpoint_url,
                                                        self.settings.s3_region),
                                     self.settings.model_name)
        self.registry = MlflowRegistryClient(self.http, self.settings.mlflow_tracking_uri,
                                             self.settings.model_name, version_files)

    async def aclose(self) -> None:
        await self.notices.stop()
        await self.http.aclose()
        await self.redis.aclose()
        self.queue.close()
