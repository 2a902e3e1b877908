"""The DICOM node's and the report sender's Prometheus endpoints, on their own ports, counting real
associations, C-STOREs and report sends (the sender with its prefork pool in multiprocess mode)."""

from __future__ import annotations

import http.client
import urllib.request
from collections.abc import Iterator

import pytest
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from services.pacs.settings import PacsSettings
from shared.jobs.queue import REPORT_QUEUE, REPORT_TASK
from tests.pacs.conftest import PacsNode, pacs_env, start_node, stop_node
from tests.pacs.peers import c_store, modality_ae
from tests.pacs.studies import chest_dx, sample_pixels
from tests.pacs.test_permanent_rejection import succeeded_dicom_job
from tests.support.procs import ManagedProcess, free_port, port_open, python_argv, wait_until

START_TIMEOUT_S = 60


class MeteredNode:
    def __init__(self, node: PacsNode, scp_metrics_port: int, sender_metrics_port: int) -> None:
        self.node = node
        self.scp_metrics_port = scp_metrics_port
        self.sender_metrics_port = sender_metrics_port

    @staticmethod
    def _read(port: int) -> dict[tuple[str, frozenset], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return {(sample.name, frozenset(sample.labels.items())): sample.value
                for family in text_string_to_metric_families(text) for sample in family.samples}

    def scp(self) -> dict[tuple[str, frozenset], float]:
        return self._read(self.scp_metrics_port)

    def sender(self) -> dict[tuple[str, frozenset], float]:
        return self._read(self.sender_metrics_port)


def value(samples: dict, name: str, **labels: str) -> float:
    """The sample `name` with exactly `labels` (0 when not exported yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def metered(tmp_path_factory) -> Iterator[MeteredNode]:
    """No inference worker; the sender runs a prefork pool of one, as deployed."""
    tmp = tmp_path_factory.mktemp("pacs-metrics")
    scp_port, sender_port = free_port(), free_port()
    node = start_node(tmp, model_server_target=None, destination_allows=["CXR"],
                      env={"CXR_PACS_METRICS_PORT": str(scp_port),
                           "CXR_PACS_SENDER_METRICS_PORT": str(sender_port)},
                      sender_env={"PROMETHEUS_MULTIPROC_DIR": str(tmp / "sender-prometheus")},
                      sender_pool=("--pool", "prefork", "--concurrency", "1"))
    try:
        wait_until(lambda: port_open(scp_port), START_TIMEOUT_S, "scp metrics", node.scp)
        wait_until(lambda: port_open(sender_port), START_TIMEOUT_S, "sender metrics",
                   node.sender)
        yield MeteredNode(node, scp_port, sender_port)
    finally:
        stop_node(node)


def test_the_dicom_port_serves_no_metrics_and_the_metrics_port_no_dicom(metered):
    assert metered.scp_metrics_port != metered.node.scp_port
    # pynetdicom answers an HTTP request with an A-ABORT, never an HTTP response
    with pytest.raises((http.client.HTTPException, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{metered.node.scp_port}/metrics", timeout=10)
    caller = modality_ae()
    caller.acse_timeout = caller.network_timeout = 3  # the HTTP server never answers DICOM
    assoc = caller.associate("127.0.0.1", metered.scp_metrics_port, ae_title="CXR")
    assert not assoc.is_established
    assert any(name.startswith("cxr_pacs_") for name, _ in metered.scp())


def test_settings_refuse_metrics_on_the_dicom_port():
    with pytest.raises(ValidationError, match="CXR_PACS_METRICS_PORT"):
        PacsSettings(pacs_port=11112, pacs_metrics_port=11112)
    assert PacsSettings().pacs_metrics_address == "127.0.0.1"


def test_an_accepted_c_store_is_counted(metered):
    before = metered.scp()
    dataset = chest_dx()
    assert c_store(metered.node.scp_port, dataset) == 0x0000
    assert c_store(metered.node.scp_port, dataset) == 0x0000  # the same image again
    after = metered.scp()

    assert (value(after, "cxr_pacs_associations_total", outcome="accepted", reason="")
            - value(before, "cxr_pacs_associations_total", outcome="accepted", reason="")) == 2
    for reason in ("queued", "duplicate"):
        assert (value(after, "cxr_pacs_c_store_requests_total", status="success", reason=reason)
                - value(before, "cxr_pacs_c_store_requests_total", status="success",
                        reason=reason)) == 1, reason
    received = (value(after, "cxr_pacs_received_bytes_total")
                - value(before, "cxr_pacs_received_bytes_total"))
    assert received >= 2 * len(dataset.PixelData)
    assert value(after, "cxr_pacs_c_store_requests_total", status="cannot_understand",
                 reason="") == 0


def test_refused_c_stores_are_counted_by_status_and_reason(metered):
    before = metered.scp()
    first = chest_dx()
    assert c_store(metered.node.scp_port, first) == 0x0000
    # the same SOP Instance UID with another image: refused as a duplicate instance
    other = chest_dx(pixels=sample_pixels("NORMAL"))
    other.SOPInstanceUID = first.SOPInstanceUID
    other.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    assert c_store(metered.node.scp_port, other) == 0x0111
    # pixel data shorter than its rows and columns: an instance that cannot be understood
    broken = chest_dx()
    broken.PixelData = broken.PixelData[:100]
    assert c_store(metered.node.scp_port, broken) == 0xC000
    after = metered.scp()

    def delta(**labels: str) -> float:
        return (value(after, "cxr_pacs_c_store_requests_total", **labels)
                - value(before, "cxr_pacs_c_store_requests_total", **labels))

    assert delta(status="duplicate_sop_instance", reason="sop_instance_uid_conflict") == 1
    refused = {labels: number for (name, labels), number in after.items()
               if name == "cxr_pacs_c_store_requests_total"
               and dict(labels)["status"] == "cannot_understand"}
    assert sum(refused.values()) - sum(
        number for (name, labels), number in before.items()
        if name == "cxr_pacs_c_store_requests_total"
        and dict(labels)["status"] == "cannot_understand") == 1
    assert all(dict(labels)["reason"] for labels in refused), refused  # the error code


def test_a_rejected_association_is_counted_with_its_reason(metered):
    before = metered.scp()
    assoc = modality_ae("STRANGER").associate("127.0.0.1", metered.node.scp_port,
                                              ae_title="CXR")
    assert assoc.is_rejected
    after = metered.scp()
    rejected = dict(outcome="rejected", reason="calling_ae_title_not_allowed")
    assert (value(after, "cxr_pacs_associations_total", **rejected)
            - value(before, "cxr_pacs_associations_total", **rejected)) == 1
    assert (value(after, "cxr_pacs_associations_total", outcome="accepted", reason="")
            == value(before, "cxr_pacs_associations_total", outcome="accepted", reason=""))


def test_open_associations_rise_and_fall(metered):
    def open_now() -> float:
        return value(metered.scp(), "cxr_pacs_open_associations")

    wait_until(lambda: open_now() == 0, 15, "no association open", metered.node.scp)
    assoc = modality_ae().associate("127.0.0.1", metered.node.scp_port, ae_title="CXR")
    assert assoc.is_established
    try:
        assert open_now() == 1
    finally:
        assoc.release()
    wait_until(lambda: open_now() == 0, 15, "the association closed", metered.node.scp)


def _send_report(node: PacsNode, job_id: str) -> None:
    producer = Celery("test-producer", broker=node.redis.url, set_as_current=False)
    producer.send_task(REPORT_TASK, args=[job_id], queue=REPORT_QUEUE)
    producer.close()


def test_the_senders_pool_attempts_reach_its_main_process_endpoint(metered):
    node = metered.node
    before = metered.sender()
    job_id = succeeded_dicom_job(node)
    _send_report(node, job_id)
    _send_report(node, "no-such-job")

    def attempts(outcome: str) -> float:
        return (value(metered.sender(), "cxr_pacs_report_attempts_total", outcome=outcome)
                - value(before, "cxr_pacs_report_attempts_total", outcome=outcome))

    wait_until(lambda: attempts("sent") == 1 and attempts("not_applicable") == 1, 60,
               "report attempts counted", node.sender)
    assert node.job(job_id).extra["pacs_report"]["state"] == "sent"
    assert attempts("failed") == 0 and attempts("retried") == 0


def test_a_prefork_sender_without_a_multiprocess_folder_refuses_to_start(metered, tmp_path,
                                                                         monkeypatch):
    """Its pool processes' attempts would never reach the endpoint: it stops, and says why."""
    node = metered.node
    # prometheus-client takes the variable's presence, even empty, for multiprocess mode
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    env = pacs_env(node.redis.url, node.storage_root, tmp_path / "audit.log",
                   CXR_PACS_SENDER_METRICS_PORT=str(free_port()))
    argv = python_argv("-m", "celery", "-A", "services.pacs.celery_app", "worker", "-Q",
                       "pacs-unused", "--pool", "prefork", "--concurrency", "1",
                       "--without-gossip", "--without-mingle", "--hostname", "refused@%h")
    sender = ManagedProcess("pacs-sender-refused", argv, tmp_path, env=env, cwd=tmp_path)
    try:
        sender.popen.wait(START_TIMEOUT_S)
        assert sender.popen.returncode != 0
        assert "PROMETHEUS_MULTIPROC_DIR" in sender.log_tail(20000)
    finally:
        sender.stop()
