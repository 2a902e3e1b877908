"""Typed errors reach an HTTP client of the real gateway as problem details with their own status
and code (a few representative ones, each provoked by a real request); no two share a code."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from services.gateway.app import create_app
from services.gateway.errors import HTTPHeadersMixin  # also registers the HTTP layer's errors
from services.gateway.problems import PROBLEM_MEDIA_TYPE
from services.gateway.settings import GatewaySettings
from shared.errors import CXRError
from tests.gateway.uploads import sample_xray
from tests.support.procs import free_port

KEY = {"Authorization": "Bearer k-1"}


def _every_error_type(base: type[CXRError] = CXRError) -> list[type[CXRError]]:
    found = []
    for sub in base.__subclasses__():
        found += [sub, *_every_error_type(sub)]
    return found


ERROR_TYPES = [t for t in _every_error_type() if t.__module__.startswith(("shared", "services"))]


def _app(tmp_path, redis_url: str, **overrides):
    return create_app(GatewaySettings(
        env="test", api_keys="alice:k-1", redis_url=redis_url,
        storage_root=str(tmp_path / "storage"), audit_log=str(tmp_path / "audit.log"),
        model_server_rest=f"http://127.0.0.1:{free_port()}",
        mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}", **overrides))


def _send(app, *requests: tuple[str, str, dict]) -> list[httpx.Response]:
    """The requests in turn on one client; the last answers are the ones a test checks."""
    async def call() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return [await client.request(method, path, **kwargs)
                    for method, path, kwargs in requests]

    return asyncio.run(call())


def _problem(response: httpx.Response, status: int, code: str, path: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = response.json()
    assert body["code"] == code and body["status"] == status
    assert body["type"].endswith(code) and body["instance"] == path
    assert len(body["detail"]) > 20  # a sentence a client can act on, not a bare code
    return body


def test_a_request_without_a_key_is_told_how_to_authenticate(tmp_path, redis_url):
    [response] = _send(_app(tmp_path, redis_url), ("GET", "/v1/predictions/job-1", {}))
    _problem(response, 401, "unauthorized", "/v1/predictions/job-1")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_an_unknown_job_is_a_404_with_its_code(tmp_path, redis_url):
    [response] = _send(_app(tmp_path, redis_url),
                       ("GET", "/v1/predictions/no-such-job", {"headers": KEY}))
    _problem(response, 404, "job_not_found", "/v1/predictions/no-such-job")


@pytest.mark.parametrize(("files", "status", "code"), [
    ({"file": ("notes.txt", b"these are a reader's notes, not a film", "text/plain")},
     415, "not_an_image"),
    ({"file": ("empty.png", b"", "image/png")}, 400, "empty_upload"),
    ([("file", ("a.jpeg", b"\xff\xd8\xff", "image/jpeg")),
      ("file", ("b.jpeg", b"\xff\xd8\xff", "image/jpeg"))], 422, "too_many_files"),
], ids=["text", "empty", "two-files"])
def test_a_bad_upload_is_refused_with_its_own_status_and_code(tmp_path, redis_url, files, status,
                                                              code):
    [response] = _send(_app(tmp_path, redis_url),
                       ("POST", "/v1/predictions", {"headers": KEY, "files": files}))
    _problem(response, status, code, "/v1/predictions")
    assert not list((tmp_path / "storage").rglob("*.json"))  # no job was made


def test_a_film_over_the_upload_limit_and_a_body_far_over_it_are_both_413(tmp_path, redis_url):
    """The film over CXR_MAX_UPLOAD_BYTES is refused as an image; a body so large that it cannot
    be a film within the limit is cut off as a request, before it is read to the end."""
    film = sample_xray().read_bytes()
    app = _app(tmp_path, redis_url, max_upload_bytes=len(film) // 2)
    big_film, huge_body = _send(
        app,
        ("POST", "/v1/predictions",
         {"headers": KEY, "files": {"file": ("film.jpeg", film, "image/jpeg")}}),
        ("POST", "/v1/predictions",
         {"headers": KEY, "files": {"file": ("film.jpeg", film * 8, "image/jpeg")}}))
    _problem(big_film, 413, "image_too_large", "/v1/predictions")
    _problem(huge_body, 413, "upload_too_large", "/v1/predictions")


def test_a_client_over_its_rate_is_told_when_to_come_back(tmp_path, redis_url):
    app = _app(tmp_path, redis_url, rate_limit_per_minute=1)
    first, second = _send(app, ("GET", "/v1/predictions/job-1", {"headers": KEY}),
                          ("GET", "/v1/predictions/job-1", {"headers": KEY}))
    assert first.status_code == 404
    _problem(second, 429, "rate_limited", "/v1/predictions/job-1")
    assert 0 < int(second.headers["retry-after"]) <= 60


def test_no_two_error_types_share_a_code():
    codes: dict[str, str] = {}
    for error_type in ERROR_TYPES:
        assert error_type.code not in codes, (error_type, codes.get(error_type.code))
        codes[error_type.code] = error_type.__name__
    assert any(issubclass(t, HTTPHeadersMixin) for t in ERROR_TYPES)  # the HTTP layer's are seen

