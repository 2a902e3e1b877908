# The four service images, one target each, built from the repository root:
#   docker build --target gateway -t cxr-pneumonia/gateway:0.1.0 .   (also worker, trainer, pacs)
# Each image gets its own dependency group, installed from uv.lock with `uv sync --frozen` in a
# builder stage; the runtime holds that virtualenv, `shared/` and its own service only, runs as
# uid 10001 and has no compilers. A build runs only the stages its target needs.
ARG PYTHON_IMAGE=python:3.11-slim

# ---- builders: uv and the lock, then one locked virtualenv per dependency group ----
FROM ${PYTHON_IMAGE} AS builder
ARG UV_VERSION=0.13.8
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
COPY pyproject.toml uv.lock ./

FROM builder AS gateway-venv
RUN uv sync --frozen --no-dev --no-default-groups --group gateway --no-install-project

FROM builder AS worker-venv
RUN uv sync --frozen --no-dev --no-default-groups --group worker --no-install-project

FROM builder AS trainer-venv
RUN uv sync --frozen --no-dev --no-default-groups --group trainer --no-install-project

FROM builder AS pacs-venv
RUN uv sync --frozen --no-dev --no-default-groups --group pacs --no-install-project

# ---- runtime base: the service user and the interpreter settings every image shares ----
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 cxr \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin cxr
WORKDIR /app
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# ---- gateway: FastAPI over HTTPS on 8443; group "gateway" (no TensorFlow) ----
FROM runtime AS gateway
COPY --from=gateway-venv /app/.venv /app/.venv
COPY services/__init__.py services/__init__.py
COPY shared/ shared/
COPY services/gateway/ services/gateway/
ENV CXR_GATEWAY_HOST=0.0.0.0 \
    CXR_GATEWAY_PORT=8443
USER 10001:10001
EXPOSE 8443
# /healthz over the gateway's own TLS; the certificate is not verified (loopback, may be self-signed).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import ssl, urllib.request; urllib.request.urlopen('https://127.0.0.1:8443/healthz', context=ssl._create_unverified_context(), timeout=4)"]
ENTRYPOINT ["python", "-m", "services.gateway"]

# ---- worker: Celery on queue "inference", calls TF Serving over gRPC ----
FROM runtime AS worker
COPY --from=worker-venv /app/.venv /app/.venv
COPY services/__init__.py services/__init__.py
COPY shared/ shared/
COPY services/worker/ services/worker/
# Prefork pool processes write their metric samples under PROMETHEUS_MULTIPROC_DIR (on the
# writable /tmp); the main process serves their sum on the metrics port.
ENV CXR_WORKER_METRICS_PORT=9100 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus-worker
USER 10001:10001
EXPOSE 9100
# The node name is inference@<hostname>, so the health check pings only this container's worker.
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
    CMD celery -A services.worker.celery_app inspect ping --destination "inference@$HOSTNAME" --timeout 10 || exit 1
ENTRYPOINT ["celery", "-A", "services.worker.celery_app", "worker"]
CMD ["-Q", "inference", "-n", "inference@%h", "--loglevel", "INFO"]

# ---- trainer: the training Celery worker (queue "training"), beat, the trainer CLI
# (python -m services.trainer ...) and the MLflow server, from one locked dependency group ----
FROM runtime AS trainer
COPY --from=trainer-venv /app/.venv /app/.venv
COPY services/__init__.py services/__init__.py
COPY shared/ shared/
COPY services/trainer/ services/trainer/
# The bundled default model that `python -m services.trainer bootstrap` registers and publishes.
COPY models/ models/
# Mount points owned by the service user, so fresh named volumes there are writable by it:
# /models is the serving folder shared with TF Serving, var/ and out/ the trainer's working files.
RUN install -d -o 10001 -g 10001 /models /app/var /app/out
ENV MPLCONFIGDIR=/tmp/matplotlib \
    CXR_BUNDLED_MODELS_DIR=/app/models
USER 10001:10001
# Pings this container's training worker; the beat and MLflow containers override the check.
HEALTHCHECK --interval=30s --timeout=20s --start-period=60s --retries=3 \
    CMD celery -A services.trainer.celery_app inspect ping --destination "training@$HOSTNAME" --timeout 10 || exit 1
CMD ["celery", "-A", "services.trainer.celery_app", "worker", "-Q", "training", "-n", "training@%h", "--concurrency", "1", "--loglevel", "INFO"]

# ---- pacs: the DICOM C-STORE SCP on 11112 (default command) and, with the command
# `celery -A services.pacs.celery_app worker -Q pacs`, the report sender; group "pacs" ----
FROM runtime AS pacs
COPY --from=pacs-venv /app/.venv /app/.venv
COPY services/__init__.py services/__init__.py
COPY shared/ shared/
COPY services/pacs/ services/pacs/
ENV CXR_PACS_HOST=0.0.0.0 \
    CXR_PACS_PORT=11112
USER 10001:10001
EXPOSE 11112
# The SCP accepts TCP connections on its port (a C-ECHO would need our own AE title allowed).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import socket; socket.create_connection(('127.0.0.1', 11112), timeout=4).close()"]
ENTRYPOINT ["python", "-m", "services.pacs"]
