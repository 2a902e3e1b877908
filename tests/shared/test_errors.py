"""Every typed error reaches an HTTP client as problem details with its own code and status."""

from __future__ import annotations

import inspect

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from services.gateway.errors import HTTPHeadersMixin  # also registers the HTTP layer's errors
from services.gateway.problems import PROBLEM_MEDIA_TYPE, install_problem_handlers
from shared.errors import CXRError


def _every_error_type(base: type[CXRError] = CXRError) -> list[type[CXRError]]:
    found = []
    for sub in base.__subclasses__():
        found += [sub, *_every_error_type(sub)]
    return found


ERROR_TYPES = [t for t in _every_error_type() if t.__module__.startswith(("shared", "services"))]


def _instance(error_type: type[CXRError]) -> CXRError:
    """The error as its raisers make it: required arguments (limits, counts) given as 3."""
    required = [p for p in inspect.signature(error_type).parameters.values()
                if p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return error_type(*[3] * len(required))


def _raising_app(error: CXRError) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/boom")
    def boom() -> None:
        raise error

    return app


def test_no_two_error_types_share_a_code():
    codes: dict[str, str] = {}
    for error_type in ERROR_TYPES:
        assert error_type.code not in codes, (error_type, codes.get(error_type.code))
        codes[error_type.code] = error_type.__name__


@pytest.mark.parametrize("error_type", ERROR_TYPES, ids=lambda t: t.__name__)
def test_an_error_becomes_problem_details_with_its_code_and_status(error_type):
    error = _instance(error_type)
    client = TestClient(_raising_app(error), raise_server_exceptions=False)
    response = client.get("/boom")
    assert response.status_code == error_type.http_status
    assert 400 <= response.status_code < 600
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = response.json()
    assert body["code"] == error_type.code and body["status"] == error_type.http_status
    assert body["type"].endswith(error_type.code) and body["instance"] == "/boom"
    assert len(body["detail"]) > 20  # a sentence a client can act on, not a bare code
    if isinstance(error, HTTPHeadersMixin):  # Retry-After, WWW-Authenticate
        for name, value in error.headers().items():
            assert response.headers.get(name) == value


def test_a_given_message_and_transience_override_the_class_defaults():
    error_type = next(t for t in ERROR_TYPES if t.transient)
    error = error_type("S3 said no.", transient=False)
    assert (error.message, error.transient) == ("S3 said no.", False)
    assert error_type().transient  # the class default is untouched
