"""`/metrics` only on the gateway's internal port: a real gateway process over HTTPS."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.support.procs import free_port


def test_metrics_are_served_on_the_internal_port_only(gateway_factory):
    gateway = gateway_factory(tls=True)
    with gateway.client("alice") as alice, gateway.client(None) as anonymous:
        assert alice.get("/v1/predictions").status_code == 200
        for http in (alice, anonymous):
            public = http.get("/metrics")
            assert public.status_code == 404, public.text
            assert "cxr_gateway" not in public.text
    text = gateway.metrics_text()  # plain HTTP, no key, its own port
    assert 'cxr_gateway_requests_total{method="GET",route="/v1/predictions",status="200"}' in text
    assert 'status="404"' in text  # the public /metrics refused above is counted
    assert "cxr_pacs_reports_pending" in text  # read from Redis for the scrape
    with pytest.raises(httpx.HTTPError):  # the public port speaks only HTTPS
        httpx.get(f"http://127.0.0.1:{gateway.port}/metrics", timeout=5)


def test_metrics_port_zero_serves_no_metrics(gateway_factory):
    gateway = gateway_factory(env={"CXR_GATEWAY_METRICS_PORT": "0"})
    with gateway.client(None) as anonymous:
        assert anonymous.get("/metrics").status_code == 404
        assert anonymous.get("/healthz").status_code == 200


def test_a_metrics_port_in_use_stops_the_gateway_at_start(gateway_factory):
    taken = socket.socket()
    taken.bind(("127.0.0.1", free_port()))
    taken.listen()
    try:
        with pytest.raises(RuntimeError, match="process exited") as failed:
            gateway_factory(env={"CXR_GATEWAY_METRICS_PORT": str(taken.getsockname()[1])})
        assert "metrics endpoint could not listen" in str(failed.value)
    finally:
        taken.close()
