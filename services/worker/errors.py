"""The worker's own typed errors, and the one mapping from gRPC status codes to them.

Only the worker talks to the model server and holds job locks, so these live here rather than in
`shared.errors`; the transient `ModelUnavailableError` is shared because the gateway reports it too.
"""

from __future__ import annotations

import grpc

from shared.errors import CXRError, ModelUnavailableError

# Codes a later attempt can clear: the server is down or restarting, overloaded, or too slow.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)


class ModelNotFoundError(CXRError):
    code = "model_not_found"
    http_status = 503
    default_message = "The model server does not serve the configured model."


class ModelVersionGoneError(CXRError):
    """The exact version that answered a first call was unloaded before the second one."""

    code = "model_version_gone"
    http_status = 503
    transient = True
    default_message = "The model version was replaced while the image was being read; retrying."


class InferenceRejectedError(CXRError):
    code = "inference_rejected"
    http_status = 500
    default_message = "The model server refused the request as invalid."


class ModelSignatureError(CXRError):
    """The served model does not have the inputs and outputs the contract names."""

    code = "model_signature_mismatch"
    http_status = 500
    default_message = "The served model does not match the expected serving signatures."


class ModelServerError(CXRError):
    code = "model_server_error"
    http_status = 502
    default_message = "The model server failed while reading the image."


class JobBusyError(CXRError):
    """Another delivery of the same job holds its lock (Redis delivered the message twice)."""

    code = "job_busy"
    http_status = 409
    transient = True
    default_message = "Another worker is processing this job."


class AttemptsExhaustedError(CXRError):
    """A job started too often without finishing: its worker keeps dying (memory, time limit)."""

    code = "attempts_exhausted"
    http_status = 500
    default_message = "The job was started too many times without finishing."


class RedisUnavailableError(CXRError):
    code = "redis_unavailable"
    http_status = 503
    transient = True
    default_message = "The job queue (Redis) is unavailable right now."


class TaskTimeoutError(CXRError):
    code = "task_timeout"
    http_status = 504
    transient = True
    default_message = "Processing the image took longer than the task's time limit."


def error_from_rpc(
    error: grpc.RpcError, *, target: str, pinned_version: int | None = None
) -> CXRError:
    """The typed error for a failed call; `transient` says whether retrying can help."""
    status = error.code()
    details = error.details() or status.name
    if status in TRANSIENT_CODES:
        return ModelUnavailableError(
            f"The model server at {target} did not answer ({status.name}: {details})."
        )
    if status == grpc.StatusCode.NOT_FOUND:
        if pinned_version is not None:
            return ModelVersionGoneError(
                f"Model version {pinned_version} is no longer served ({details})."
            )
        return ModelNotFoundError(f"The model server at {target} does not serve it: {details}")
    if status == grpc.StatusCode.INVALID_ARGUMENT:
        return InferenceRejectedError(f"The model server refused the request: {details}")
    return ModelServerError(f"The model server failed ({status.name}: {details}).")
