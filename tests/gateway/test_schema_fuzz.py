"""Schemathesis generates requests from the gateway's own OpenAPI schema (with a valid key), both
valid ones and ones that break the schema on purpose: none may cause an internal error, every
answer must match the documented status codes, media types and schemas, and requests that break
the schema must be refused with a 4xx."""

from __future__ import annotations

import collections

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

REQUESTS_PER_WINDOW = 15  # the module's gateway allows 20 a minute per client
EXAMPLES_PER_MODE = 25
CHECKS = {
    GenerationMode.POSITIVE: [response_schema_conformance, content_type_conformance,
                              status_code_conformance],
    GenerationMode.NEGATIVE: [response_schema_conformance, content_type_conformance,
                              status_code_conformance, negative_data_rejection],
}


@pytest.fixture(scope="module")
def api_operations(module_gateway):
    schema = schemathesis.openapi.from_url(f"{module_gateway.url}/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


def test_schema_lists_every_route(api_operations):
    labels = {operation.label for operation in api_operations}
    assert {"POST /v1/predictions", "GET /v1/predictions/{job_id}",
            "GET /v1/predictions/{job_id}/heatmap", "POST /v1/predictions/{job_id}/feedback",
            "GET /v1/models/current",
            "POST /dicomweb/studies", "GET /healthz", "GET /readyz", "GET /v1/predictions",
            "DELETE /v1/predictions/{job_id}"} <= labels
    assert "GET /metrics" not in labels  # served on the internal metrics port only


def test_generated_requests_never_cause_a_server_error(api_operations, module_gateway,
                                                       redis_server):
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {module_gateway.keys['bob']}"
    redis_client = redis_server.client()
    sent: collections.Counter[tuple[str, str]] = collections.Counter()

    def fresh_window_now_and_then(label: str, mode: GenerationMode) -> None:
        sent[label, mode.value] += 1
        if sent.total() % REQUESTS_PER_WINDOW == 0:
            redis_client.flushall()  # a new rate-limit window: fuzz the API, not the limit

    for operation in api_operations:
        for mode in GenerationMode:
            if mode is GenerationMode.NEGATIVE and not has_inputs(operation):
                continue  # nothing in the request can break the schema
            fuzz_operation(operation, mode, session, fresh_window_now_and_then)
    print(f"\nschemathesis: {sent.total()} requests; "
          + ", ".join(f"{label} {mode}: {count}" for (label, mode), count in sorted(sent.items())))
    assert {label for label, _mode in sent} == {operation.label for operation in api_operations}
    assert any(mode == "negative" for _label, mode in sent)


def has_inputs(operation) -> bool:
    definition = operation.definition.raw
    return bool(definition.get("parameters") or definition.get("requestBody"))


def fuzz_operation(operation, mode: GenerationMode, session: requests.Session,
                   before_each) -> None:
    documented = {str(status) for status in operation.definition.raw["responses"]}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_PER_MODE, deadline=None,
              suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate], database=None)
    def exercise(case):
        before_each(operation.label, mode)
        response = case.call(session=session)
        assert response.status_code != 500, f"{case.method} {case.formatted_path}: 500"
        if response.status_code >= 500:  # only documented ones, e.g. /readyz's 503
            assert str(response.status_code) in documented, response.text
        case.validate_response(response, checks=CHECKS[mode])

    exercise()
