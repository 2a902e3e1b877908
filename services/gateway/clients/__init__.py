"""The gateway's clients of other services over HTTP: the model server's REST API
(`serving_rest`) and the MLflow model registry's (`mlflow_registry`)."""

from __future__ import annotations

import httpx

# What a down or misbehaving upstream raises from these clients; callers degrade instead of failing.
UPSTREAM_ERRORS = (httpx.HTTPError, KeyError, ValueError, TypeError, StopIteration)
