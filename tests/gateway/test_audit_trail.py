"""The audit trail of a real gateway process: refusals (401, 429) with the caller's address and
never a key, the stdout setting, and the `audit-export` command; and the DELETE refusal of a job
still queued (no worker here, so jobs stay queued)."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.gateway.uploads import sample_xray
from tests.support.procs import REPO_ROOT, python_argv, wait_until


@pytest.fixture
def gateway(gateway_factory, redis_url):
    """A gateway on a freshly flushed Redis (no worker listens to its queue)."""
    return gateway_factory()


def test_refused_requests_are_audited_with_address_and_never_the_key(gateway_factory, redis_url):
    gateway = gateway_factory(env={"CXR_RATE_LIMIT_PER_MINUTE": "2"})
    wrong_key = "wrong-key-0000000000000000"
    with gateway.client(None, headers={"Authorization": f"Bearer {wrong_key}"}) as stranger:
        assert stranger.get("/v1/predictions").status_code == 401
    with gateway.client(None) as anonymous:
        assert anonymous.delete("/v1/predictions/abc").status_code == 401
    with gateway.client("alice") as alice:
        # 2 a clock minute: the third or, across a minute's end, a later one is refused
        answers = [alice.get("/v1/predictions").status_code for _ in range(5)]
    assert answers[:2] == [200, 200] and 429 in answers

    text = gateway.audit_log.read_text()
    assert wrong_key not in text and not any(key in text for key in gateway.keys.values())
    refused = [json.loads(line) for line in text.splitlines()
               if json.loads(line)["action"] == "refused"]
    seen = [(e["client"], e["status"], e["code"], e["method"], e["path"]) for e in refused]
    assert seen[:2] == [(None, 401, "unauthorized", "GET", "/v1/predictions"),
                        (None, 401, "unauthorized", "DELETE", "/v1/predictions/abc")]
    limited = ("alice", 429, "rate_limited", "GET", "/v1/predictions")
    assert seen[2:] == [limited] * answers.count(429)
    assert all(e["address"] == "127.0.0.1" and e["time"] for e in refused)


def test_an_unfinished_job_is_not_deleted(gateway):
    path = sample_xray("NORMAL")
    with gateway.client("alice") as alice:
        job_id = alice.post("/v1/predictions",
                            files={"file": (path.name, path.read_bytes())}).json()["job_id"]
        refused = alice.delete(f"/v1/predictions/{job_id}")
        assert refused.status_code == 409 and refused.json()["code"] == "job_not_finished"
        assert alice.get(f"/v1/predictions/{job_id}").json()["status"] == "queued"
    assert (gateway.storage_root / "uploads" / job_id).is_file()


def test_audit_stdout_setting_writes_the_lines_to_the_process_output(gateway_factory, redis_url):
    gateway = gateway_factory(env={"CXR_AUDIT_LOG": "stdout"})
    with gateway.client(None) as anonymous:
        assert anonymous.get("/v1/predictions").status_code == 401

    def refusal_printed() -> bool:
        return any(line.startswith("{") and json.loads(line).get("action") == "refused"
                   for line in Path(gateway.process.log_path).read_text().splitlines())

    wait_until(refusal_printed, 10, "audit line on stdout", gateway.process)
    assert not gateway.audit_log.exists()


def audit_export(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    outside_env = {name: value for name, value in os.environ.items()
                   if not name.startswith("CXR_")}
    outside_env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(python_argv("-m", "services.gateway", "audit-export", *args),
                          cwd=REPO_ROOT, env={**outside_env, **(env or {})},
                          capture_output=True, text=True, timeout=60)


def test_audit_export_prints_the_lines_of_a_period(gateway, tmp_path):
    with gateway.client("alice") as alice:
        assert alice.get("/v1/predictions/first").status_code == 404
    between = datetime.now(UTC)
    with gateway.client("alice") as alice:
        assert alice.get("/v1/predictions/second").status_code == 404
    after = datetime.now(UTC) + timedelta(seconds=1)
    trail = gateway.audit_log.read_text().splitlines()

    later = audit_export("--since", between.isoformat(), "--until", after.isoformat(),
                         "--file", str(gateway.audit_log))
    assert later.returncode == 0, later.stderr
    assert [json.loads(line)["job_id"] for line in later.stdout.splitlines()] == ["second"]
    everything = audit_export("--since", "2000-01-01", "--until", after.isoformat(),
                              env={"CXR_AUDIT_LOG": str(gateway.audit_log)})
    assert everything.returncode == 0, everything.stderr
    assert everything.stdout.splitlines() == trail  # the lines exactly as written

    for bad in (["--since", "yesterday", "--until", "2030-01-01"],
                ["--since", "2030-01-01", "--until", "2020-01-01"],
                ["--since", "2020-01-01", "--until", "2030-01-01",
                 "--file", str(tmp_path / "missing.log")]):
        refused = audit_export(*bad)
        assert refused.returncode == 2 and refused.stdout == "", bad
    on_stdout = audit_export("--since", "2020-01-01", "--until", "2030-01-01",
                             env={"CXR_AUDIT_LOG": "stdout"})
    assert on_stdout.returncode == 2 and "--file" in on_stdout.stderr
