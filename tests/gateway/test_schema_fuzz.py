"""Schemathesis generates requests from the gateway's own OpenAPI schema (with a valid key):
none may cause an internal error, and every answer must match the documented schema."""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import content_type_conformance, response_schema_conformance

REQUESTS_PER_WINDOW = 15  # the module's gateway allows 20 a minute per client


@pytest.fixture(scope="module")
def api_operations(module_gateway):
    schema = schemathesis.openapi.from_url(f"{module_gateway.url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_schema_lists_every_route(api_operations):
    labels = {operation.label for operation in api_operations}
    assert {"POST /v1/predictions", "GET /v1/predictions/{job_id}",
            "GET /v1/predictions/{job_id}/heatmap", "GET /v1/models/current",
            "GET /healthz", "GET /readyz", "GET /metrics"} <= labels


def test_generated_requests_never_cause_a_server_error(api_operations, module_gateway,
                                                       redis_server):
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {module_gateway.keys['bob']}"
    redis_client = redis_server.client()
    sent = 0

    def fresh_window_now_and_then() -> None:
        nonlocal sent
        sent += 1
        if sent % REQUESTS_PER_WINDOW == 0:
            redis_client.flushall()  # a new rate-limit window: fuzz the API, not the limit

    for operation in api_operations:
        fuzz_operation(operation, session, fresh_window_now_and_then)
    assert sent >= len(api_operations)


def fuzz_operation(operation, session: requests.Session, before_each) -> None:
    documented = {str(status) for status in operation.definition.raw["responses"]}

    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate], database=None)
    def exercise(case):
        before_each()
        response = case.call(session=session)
        assert response.status_code != 500, f"{case.method} {case.formatted_path}: 500"
        if response.status_code >= 500:  # only documented ones, e.g. /readyz's 503
            assert str(response.status_code) in documented, response.text
        case.validate_response(response, checks=[response_schema_conformance,
                                                 content_type_conformance])

    exercise()
