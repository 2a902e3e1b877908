"""RFC 7807 problem details: the one place where errors become HTTP status codes and bodies."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from services.gateway.errors import HTTPHeadersMixin
from shared.audit import AuditEntry
from shared.errors import CXRError, NotChestRadiographError
from shared.schemas import ScopeReason

PROBLEM_MEDIA_TYPE = "application/problem+json"
log = logging.getLogger("cxr.gateway")


class Problem(BaseModel):
    """An error answer (RFC 7807) with the service's stable error `code`."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="URI naming the kind of problem; ends with `code`.")
    title: str = Field(description="The HTTP status phrase.")
    status: int
    detail: str = Field(description="What went wrong and what to do about it.")
    instance: str = Field(description="The request path that failed.")
    code: str = Field(description="Stable machine-readable error code, e.g. `not_an_image`.")
    reasons: list[ScopeReason] | None = Field(
        default=None, description="For `not_a_chest_radiograph`: the scope reasons that refused "
                                  "the film.")


def problem_type(code: str) -> str:
    return f"urn:cxr-pneumonia:problem:{code}"


def problem_response(request: Request, status: int, code: str, detail: str,
                     headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = Problem(type=problem_type(code), title=HTTPStatus(status).phrase, status=status,
                   detail=detail, instance=request.url.path, code=code, **extra)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers,
                        media_type=PROBLEM_MEDIA_TYPE)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting problem answers for `statuses`."""
    schema = {"$ref": "#/components/schemas/Problem"}
    return {
        status: {"description": HTTPStatus(status).phrase,
                 "content": {PROBLEM_MEDIA_TYPE: {"schema": schema}}}
        for status in statuses
    }


def document_problems(app: FastAPI) -> None:
    """Add the `Problem` schema that `problem_responses` refers to to the generated OpenAPI."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("Problem", Problem.model_json_schema(
            ref_template="#/components/schemas/{model}"))
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _status_code_slug(status: int) -> str:
    return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")


RETRY_AFTER_S = "5"
# Refusals of the caller itself (key, permission, rate): each one is an audit line.
AUDITED_REFUSALS = frozenset({401, 403, 429})


def audit_refusal(request: Request, status: int, code: str) -> None:
    """One audit line for a refused request: who (when known), what, and from where (the
    address comes from the access gate); never the key that was sent."""
    if status not in AUDITED_REFUSALS:
        return
    client = getattr(request.state, "client", None)
    AuditEntry(client, "refused", status=status,
               extra={"code": code, "method": request.method, "path": request.url.path}).emit()


def error_response(request: Request, exc: CXRError) -> JSONResponse:
    """The problem answer for a typed error; also used by middleware outside the handlers.

    A 5xx is the service's own failure: its message (storage paths, errno, addresses) goes to the
    log, the client gets the error class's fixed message, and `Retry-After` when it is transient.
    """
    headers = dict(exc.headers()) if isinstance(exc, HTTPHeadersMixin) else {}
    detail = exc.message
    if exc.http_status >= 500:
        log.warning("%s %s answered %s: %s", request.method, request.url.path, exc.http_status,
                    exc.message)
        detail = type(exc).default_message
        if exc.transient:
            headers.setdefault("Retry-After", RETRY_AFTER_S)
    extra = {"reasons": list(exc.reasons)} if isinstance(exc, NotChestRadiographError) else {}
    audit_refusal(request, exc.http_status, exc.code)
    return problem_response(request, exc.http_status, exc.code, detail, headers or None, **extra)


async def _cxr_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CXRError)
    return error_response(request, exc)


def backend_down_response(request: Request) -> JSONResponse:
    return problem_response(request, 503, "backend_unavailable",
                            "The job database is unavailable right now; try again shortly.",
                            {"Retry-After": "5"})


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).description
    if isinstance(exc.__context__, MultiPartException):  # Starlette's 400 for a broken form
        return _invalid_multipart(request, exc.__context__)
    code = _status_code_slug(exc.status_code)
    audit_refusal(request, exc.status_code, code)
    return problem_response(request, exc.status_code, code, detail, exc.headers)


def _invalid_multipart(request: Request, exc: MultiPartException) -> JSONResponse:
    """The form parser's reason, and the one python-multipart gave it (e.g. a part header over
    its size limit) when Starlette's message only says "Invalid multipart data"."""
    reason = exc.message.rstrip(".")
    if exc.__cause__ is not None and str(exc.__cause__):
        reason += f" ({exc.__cause__})"
    return problem_response(request, 400, "invalid_multipart",
                            f"The multipart/form-data body cannot be read: {reason}. Send the "
                            "image as one part named 'file'.")


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # The offending input is left out: it may be a whole upload or a key.
    errors = [{"loc": [str(part) for part in err.get("loc", ())],
               "msg": _plain_message(str(err.get("msg", ""))),
               "type": str(err.get("type", ""))} for err in exc.errors()]
    summary = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors) or "invalid request"
    if any(e["loc"] == ["body", "file"] for e in errors):
        summary += (". Send the image as a multipart/form-data part named 'file' (a body cut off "
                    "before its closing boundary has no complete part)")
    return problem_response(request, 422, "invalid_request", f"The request is invalid: {summary}",
                            errors=errors)


def _plain_message(message: str) -> str:
    """A validation message without Python reprs (`<class 'str'>`, `<object at 0x...>`)."""
    if "<class " in message or " object at 0x" in message:
        return "has the wrong type (a file part needs a filename)"
    return message


async def _backend_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("Redis unavailable during %s %s: %s", request.method, request.url.path, exc)
    return backend_down_response(request)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(request, 500, "internal_error",
                            "The service failed unexpectedly; the error has been logged.")


def install_problem_handlers(app: FastAPI) -> None:
    document_problems(app)
    app.add_exception_handler(CXRError, _cxr_error)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(redis.exceptions.ConnectionError, _backend_down)
    app.add_exception_handler(redis.exceptions.TimeoutError, _backend_down)
    app.add_exception_handler(Exception, _unexpected)
