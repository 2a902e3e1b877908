"""Idle and unauthenticated connections to the DICOM node (`python -m services.pacs`, real
process) cannot lock the allowed modalities out.

Before the limits, twelve idle TCP connections (no AE title needed) filled pynetdicom's ten
association slots, and every allowed modality was rejected ("local limit exceeded") until the
30 s ACSE timeout closed them; opening them again repeated it. Now a connection that sends no
A-ASSOCIATE request is closed after `CXR_PACS_SCP_ACSE_TIMEOUT_S`, one sender address holds at
most `CXR_PACS_SCP_MAX_CONNECTIONS_PER_ADDRESS` connections, and an established association that
stays silent is aborted after `CXR_PACS_NETWORK_TIMEOUT_S`. A peer that sends the first bytes of
a PDU and then nothing, or one byte at a time, held its connection forever (pynetdicom reads a PDU
with blocking reads without a timeout); it is now closed too.

The attacker's connections come from other loopback addresses (127.0.0.2, 127.0.0.3: Linux
answers the whole of 127/8), as another host's would; the modality sends from 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.pacs.conftest import PacsNode, start_node, stop_node
from tests.pacs.peers import c_store, modality_ae
from tests.pacs.studies import chest_dx

pytestmark = pytest.mark.slow

ACSE_TIMEOUT_S = 4.0
NETWORK_TIMEOUT_S = 5.0  # tests.pacs.conftest.pacs_env
PER_ADDRESS = 4
ATTACKER, STALLER = "127.0.0.2", "127.0.0.3"
FLOOD = 12
SUCCESS = 0x0000


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[PacsNode]:
    started = start_node(tmp_path_factory.mktemp("dicom-connections"), model_server_target=None,
                         destination_allows=["CXR"],
                         env={"CXR_PACS_SCP_ACSE_TIMEOUT_S": str(ACSE_TIMEOUT_S),
                              "CXR_PACS_SCP_MAX_CONNECTIONS_PER_ADDRESS": str(PER_ADDRESS)})
    yield started
    stop_node(started)


def connect_from(source: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_peer(sock: socket.socket, wait_s: float) -> bool:
    """True once the node has closed the connection (EOF or reset) within `wait_s`."""
    sock.settimeout(wait_s)
    try:
        return sock.recv(65536) == b"" or closed_by_peer(sock, wait_s)
    except TimeoutError:
        return False
    except OSError:  # reset
        return True


def wait_all_closed(socks: list[socket.socket], timeout_s: float) -> float:
    """Seconds until every one of `socks` was closed by the node; fails after `timeout_s`."""
    start = time.monotonic()
    for sock in socks:
        left = timeout_s - (time.monotonic() - start)
        assert left > 0 and closed_by_peer(sock, left), "a connection stayed open"
    return time.monotonic() - start


def partial_associate_request() -> bytes:
    """The first 10 bytes of an A-ASSOCIATE-RQ PDU (type 1, length 200): the rest never comes."""
    return struct.pack(">BBIHH", 0x01, 0x00, 200, 0x0001, 0x0000)


def echo(port: int, calling: str = "MODALITY") -> int:
    assoc = modality_ae(calling).associate("127.0.0.1", port, ae_title="CXR")
    assert assoc.is_established, "the allowed modality was locked out"
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


def flood(port: int, source: str, count: int, payload: bytes = b"") -> tuple[list, list]:
    """Open `count` connections from `source` (sending `payload` on each): (open, refused)."""
    socks = [connect_from(source, port) for _ in range(count)]
    for sock in socks:
        if payload:
            with contextlib.suppress(OSError):  # one the node already closed
                sock.sendall(payload)
    time.sleep(0.5)  # the node accepts and refuses in its own thread
    refused = [sock for sock in socks if closed_by_peer(sock, 0.01)]
    return [sock for sock in socks if sock not in refused], refused


def test_idle_connections_do_not_lock_out_allowed_modalities(node, fault_report):
    port = node.scp_port
    rounds = []
    for _ in range(2):  # opening them again must not lock anyone out either
        opened_at = time.monotonic()
        idle, idle_refused = flood(port, ATTACKER, FLOOD)
        stalled, stalled_refused = flood(port, STALLER, FLOOD, partial_associate_request())
        # Per address, only the limit is kept open; the rest are closed at once.
        assert (len(idle), len(idle_refused)) == (PER_ADDRESS, FLOOD - PER_ADDRESS)
        assert (len(stalled), len(stalled_refused)) == (PER_ADDRESS, FLOOD - PER_ADDRESS)

        # While those are open, the allowed modality is served at once.
        started = time.monotonic()
        assert echo(port) == SUCCESS
        served_s = time.monotonic() - started
        assert not any(closed_by_peer(sock, 0.01) for sock in idle + stalled), \
            f"the idle connections were closed before the C-ECHO was served ({served_s:.1f} s)"
        assert c_store(port, chest_dx()) == SUCCESS

        # Then the idle and stalled ones are closed by the ACSE timeout (not after 30 s).
        wait_all_closed(idle + stalled, ACSE_TIMEOUT_S + 5)
        closed_after_s = time.monotonic() - opened_at
        assert closed_after_s < ACSE_TIMEOUT_S + 5
        for sock in idle + idle_refused + stalled + stalled_refused:
            sock.close()
        rounds.append((served_s, closed_after_s))

    # The slots are given back: the address may open its connections again.
    again, refused = flood(port, ATTACKER, PER_ADDRESS)
    assert (len(again), len(refused)) == (PER_ADDRESS, 0)
    for sock in again:
        sock.close()
    assert echo(port) == SUCCESS
    fault_report({"scenario": "dicom idle connections", "opened": 4 * FLOOD,
                  "refused_at_once": 4 * (FLOOD - PER_ADDRESS),
                  "modality_served_s": round(max(r[0] for r in rounds), 2),
                  "idle_closed_after_s": round(max(r[1] for r in rounds), 1),
                  "acse_timeout_s": ACSE_TIMEOUT_S})


def test_unknown_ae_title_is_rejected_and_a_silent_association_aborted(node, fault_report):
    port = node.scp_port
    unknown = AE(ae_title="INTRUDER")
    unknown.add_requested_context(Verification)
    unknown.acse_timeout = 10
    assoc = unknown.associate("127.0.0.1", port, ae_title="CXR")
    assert assoc.is_rejected

    # An allowed modality that associates and then says nothing is aborted by the node.
    silent = modality_ae()
    silent.network_timeout = 60  # the requestor's own idle timeout must not end it first
    assoc = silent.associate("127.0.0.1", port, ae_title="CXR")
    assert assoc.is_established
    started = time.monotonic()
    while assoc.is_established and time.monotonic() - started < NETWORK_TIMEOUT_S + 10:
        time.sleep(0.1)
    aborted_after_s = time.monotonic() - started
    assert assoc.is_aborted, "the node kept a silent association open"
    assert aborted_after_s < NETWORK_TIMEOUT_S + 10
    assert echo(port) == SUCCESS
    fault_report({"scenario": "dicom silent association", "aborted_after_s":
                  round(aborted_after_s, 1), "network_timeout_s": NETWORK_TIMEOUT_S})


def test_a_trickling_associate_request_is_cut_off(node, fault_report):
    """The first bytes of an A-ASSOCIATE-RQ, then one byte a second: pynetdicom alone would read
    it for as long as bytes keep coming (its ACSE timeout does not end a read in progress)."""
    sock = connect_from(STALLER, node.scp_port)
    sock.sendall(partial_associate_request())
    started = time.monotonic()
    closed = False
    while not closed and time.monotonic() - started < ACSE_TIMEOUT_S + 10:
        closed = closed_by_peer(sock, 1.0)
        if not closed:
            with contextlib.suppress(OSError):
                sock.sendall(b"\x00")
    closed_after_s = time.monotonic() - started
    sock.close()
    assert closed, "a trickling peer kept its connection"
    assert echo(node.scp_port) == SUCCESS
    fault_report({"scenario": "dicom trickling A-ASSOCIATE-RQ",
                  "closed_after_s": round(closed_after_s, 1), "acse_timeout_s": ACSE_TIMEOUT_S})
