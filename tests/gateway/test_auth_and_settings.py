"""API key parsing and checking, the demo key, production refusals and the TLS certificate."""

from __future__ import annotations

import ipaddress
import os
import stat
import time

import pytest
from cryptography import x509
from pydantic import ValidationError

from services.gateway.auth import ApiKeyConfigError, ApiKeyRing, load_or_create_demo_key
from services.gateway.errors import UnauthorizedError
from services.gateway.settings import GatewaySettings
from services.gateway.tls import ensure_self_signed
from tests.support.procs import ManagedProcess, python_argv, wait_until


def test_keys_map_to_their_clients_and_nothing_else():
    ring = ApiKeyRing.parse(" alice:k-1 , bob:k-2,")
    assert ring.clients == ["alice", "bob"]
    assert ring.authenticate("Bearer k-1") == "alice"
    assert ring.authenticate("bearer k-2") == "bob"
    for header in (None, "", "Bearer", "Bearer ", "Bearer k-3", "Basic k-1", "k-1", "Bearer k-1x"):
        with pytest.raises(UnauthorizedError):
            ring.authenticate(header)


def test_only_digests_of_the_keys_are_kept():
    ring = ApiKeyRing.parse("alice:very-secret-key")
    assert "very-secret-key" not in repr(vars(ring))


@pytest.mark.parametrize("spec", ["alice", "alice:", ":key", "al ice:key", "a:k1,a:k2",
                                  "a:same,b:same"])
def test_malformed_key_lists_are_refused(spec):
    with pytest.raises(ApiKeyConfigError):
        ApiKeyRing.parse(spec)


def test_demo_key_is_private_and_reused(tmp_path):
    path = tmp_path / "var" / "demo-api-key"
    key = load_or_create_demo_key(path)
    assert len(key) >= 24
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_demo_key(path) == key


def test_production_refuses_to_run_without_keys_or_certificate(monkeypatch):
    monkeypatch.setenv("CXR_ENV", "production")
    monkeypatch.delenv("CXR_API_KEYS", raising=False)
    with pytest.raises(ValidationError, match="CXR_API_KEYS"):
        GatewaySettings()
    monkeypatch.setenv("CXR_API_KEYS", "alice:k-1")
    with pytest.raises(ValidationError, match="CXR_TLS_CERT"):
        GatewaySettings()
    monkeypatch.setenv("CXR_GATEWAY_TLS", "false")  # behind a proxy that terminates TLS
    assert GatewaySettings().api_keys.get_secret_value() == "alice:k-1"


def test_production_gateway_process_without_keys_exits(tmp_path):
    process = ManagedProcess("gateway-prod", python_argv("-m", "services.gateway"), tmp_path,
                             env={"CXR_ENV": "production", "CXR_API_KEYS": ""})
    try:
        wait_until(lambda: not process.alive(), 120, "production gateway refusing to start")
        assert process.popen.returncode != 0
        assert "CXR_API_KEYS" in process.log_tail()
    finally:
        process.stop()


def test_self_signed_certificate_names_localhost_and_is_reused(tmp_path):
    cert_path, key_path = ensure_self_signed(tmp_path / "tls")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    first = cert_path.read_bytes()
    time.sleep(0.01)
    assert ensure_self_signed(tmp_path / "tls")[0].read_bytes() == first
    cert_path.write_text("not a certificate")
    assert ensure_self_signed(tmp_path / "tls")[0].read_bytes() != first


def test_the_gateway_imports_neither_tensorflow_nor_worker_code():
    """The gateway image has no TensorFlow: tasks are sent by name, models asked over REST."""
    import subprocess

    from tests.support.procs import REPO_ROOT

    probe = ("import sys, services.gateway.__main__, services.gateway.app; "
             "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow' "
             "or m.startswith(('services.worker', 'services.trainer', 'services.model_server'))); "
             "print(bad); sys.exit(1 if bad else 0)")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(python_argv("-c", probe), cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
