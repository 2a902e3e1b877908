"""Errors only the HTTP layer raises; like every `CXRError` they become problem details."""

from __future__ import annotations

from shared.errors import CXRError


class HTTPHeadersMixin:
    """Errors that must add response headers (WWW-Authenticate, Retry-After)."""

    def headers(self) -> dict[str, str]:
        return {}


class UnauthorizedError(HTTPHeadersMixin, CXRError):
    code = "unauthorized"
    http_status = 401
    default_message = "Send a valid API key as 'Authorization: Bearer <key>'."

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="cxr-pneumonia"'}


class RateLimitedError(HTTPHeadersMixin, CXRError):
    code = "rate_limited"
    http_status = 429

    def __init__(self, limit: int, retry_after_s: int) -> None:
        self.retry_after_s = max(1, retry_after_s)
        super().__init__(
            f"This API key made more than {limit} requests in a minute; "
            f"retry after {self.retry_after_s} seconds."
        )

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class UploadTooLargeError(CXRError):
    code = "upload_too_large"
    http_status = 413

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(
            f"The request body is larger than the {limit_bytes:,} bytes accepted; "
            "send a smaller export of the image."
        )


class BodyReadTimeoutError(CXRError):
    code = "request_body_timeout"
    http_status = 408

    def __init__(self, limit_s: float) -> None:
        super().__init__(
            f"The request body did not arrive within {limit_s:g} seconds; "
            "send it again over a faster connection."
        )


class MissingFileError(CXRError):
    code = "missing_file"
    http_status = 422
    default_message = "Send the image as the multipart form field 'file'."


class TooManyFilesError(CXRError):
    code = "too_many_files"
    http_status = 422

    def __init__(self, count: int) -> None:
        super().__init__(
            f"The form holds {count} parts named 'file'; send one X-ray per request."
        )


class InvalidIdempotencyKeyError(CXRError):
    code = "invalid_idempotency_key"
    http_status = 400
    default_message = "The Idempotency-Key header must be 1 to 200 printable ASCII characters."


class IdempotencyConflictError(CXRError):
    code = "idempotency_key_reused"
    http_status = 409
    default_message = (
        "This Idempotency-Key was already used for a different file; "
        "use a new key for a new upload."
    )


class HeatmapNotReadyError(CXRError):
    code = "heatmap_not_ready"
    http_status = 404
    default_message = "The heatmap is not ready yet; it appears when the job has succeeded."


class NotReadyError(CXRError):
    code = "not_ready"
    http_status = 503
    transient = True
    default_message = "The service is not ready to take requests."
