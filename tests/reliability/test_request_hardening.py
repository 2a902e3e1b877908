"""Requests that used to get a 500 or leak a secret, against a real gateway process:

- image metadata: a JPEG whose EXIF Orientation is typed ASCII, RATIONAL (zero denominators
  too), SRATIONAL, FLOAT or UNDEFINED, out of range or empty, and PNGs whose eXIf chunk is not a
  TIFF structure: accepted with the orientation ignored, never 500, and the kept-alive connection
  stays open;
- a multipart file part naming its file only as `filename*=UTF-8''...` (RFC 5987 / RFC 7578);
- secrets in the query string (`?api_key=...`) never reach a log line.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.jobs.records import JobRecord
from tests.reliability.corpus import upload
from tests.support.gateway import GatewayProcess, start_gateway

# A real film (the scope screening refuses synthetic patterns as noise).
BASE = Image.open(sorted((Path(__file__).resolve().parents[2] / "data" / "sample" / "NORMAL")
                         .glob("*.jpeg"))[0]).convert("L")
ORIENTATION = 0x0112
ASCII, SHORT, RATIONAL, UNDEFINED, SRATIONAL, FLOAT = 2, 3, 5, 7, 10, 11


def tiff_orientation(field_type: int, count: int, payload: bytes) -> bytes:
    """A little-endian TIFF structure with one IFD entry: Orientation of any type."""
    ifd_size = 2 + 12 + 4
    if len(payload) <= 4:
        value, extra = payload.ljust(4, b"\x00"), b""
    else:
        value, extra = struct.pack("<I", 8 + ifd_size), payload
    return (b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
            + struct.pack("<HHI", ORIENTATION, field_type, count) + value
            + struct.pack("<I", 0) + extra)


def jpeg_with_exif(exif: bytes) -> bytes:
    out = io.BytesIO()
    BASE.save(out, "JPEG", exif=b"Exif\x00\x00" + exif)
    return out.getvalue()


def png_with_exif(exif: bytes) -> bytes:
    out = io.BytesIO()
    BASE.save(out, "PNG", exif=exif)
    return out.getvalue()


METADATA_CASES = {
    "jpeg_orientation_ascii": jpeg_with_exif(tiff_orientation(ASCII, 2, b"6\x00")),
    "jpeg_orientation_ascii_long": jpeg_with_exif(tiff_orientation(ASCII, 8, b"rotate6\x00")),
    "jpeg_orientation_rational_zero_denominator": jpeg_with_exif(
        tiff_orientation(RATIONAL, 1, struct.pack("<II", 6, 0))),
    "jpeg_orientation_rational": jpeg_with_exif(
        tiff_orientation(RATIONAL, 1, struct.pack("<II", 12, 2))),
    "jpeg_orientation_srational_zero_denominator": jpeg_with_exif(
        tiff_orientation(SRATIONAL, 1, struct.pack("<ii", -6, 0))),
    "jpeg_orientation_float": jpeg_with_exif(tiff_orientation(FLOAT, 1, struct.pack("<f", 6.0))),
    "jpeg_orientation_undefined": jpeg_with_exif(tiff_orientation(UNDEFINED, 1, b"\x06")),
    "jpeg_orientation_out_of_range": jpeg_with_exif(
        tiff_orientation(SHORT, 1, struct.pack("<H", 99))),
    "jpeg_orientation_no_values": jpeg_with_exif(tiff_orientation(SHORT, 0, b"")),
    "png_exif_not_tiff": png_with_exif(b"not a tiff structure at all"),
    "png_exif_truncated_tiff": png_with_exif(b"MM\x00*\x00"),
    "png_exif_orientation_ascii": png_with_exif(tiff_orientation(ASCII, 2, b"6\x00")),
}
SECRET = "sk-live-0f1e2d3c4b5a69788796a5b4c3d2e1f0"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, redis_server) -> Iterator[GatewayProcess]:
    process = start_gateway(tmp_path_factory.mktemp("hardening"), redis_server.url,
                            env={"CXR_RATE_LIMIT_PER_MINUTE": "100000"})
    yield process
    process.stop()


def local_port(response) -> int:
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def test_malformed_image_metadata_is_accepted_on_one_kept_alive_connection(gateway,
                                                                         fault_report):
    statuses, ports = {}, set()
    with gateway.client("alice") as http:
        for kind, data in METADATA_CASES.items():
            spec = upload(data, filename=f"{kind}.img".encode())
            response = http.post("/v1/predictions", content=spec.content, headers=spec.headers)
            statuses[kind] = response.status_code
            ports.add(local_port(response))
            assert response.headers.get("connection", "").lower() != "close", kind
    assert statuses == dict.fromkeys(METADATA_CASES, 202), statuses
    assert len(ports) == 1  # the same connection throughout
    fault_report({"scenario": "image metadata", "sent": len(METADATA_CASES), "accepted":
                  sum(1 for status in statuses.values() if status == 202), "5xx": 0})


@pytest.mark.parametrize(("disposition", "expected"), [
    ("form-data; name=\"file\"; filename*=UTF-8''r%C3%B6ntgen.jpg", "röntgen.jpg"),
    ("form-data; name=\"file\"; filename*=utf-8'de'Thorax%20PA.jpeg", "Thorax PA.jpeg"),
    ("form-data; name=\"file\"; filename*=iso-8859-1''r%F6ntgen.jpg", "röntgen.jpg"),
    ("form-data; name=\"file\"; filename=\"plain.jpg\"; filename*=UTF-8''r%C3%B6ntgen.jpg",
     "plain.jpg"),
])
def test_a_file_named_only_by_filename_star_is_accepted(gateway, disposition, expected):
    data = METADATA_CASES["jpeg_orientation_out_of_range"]
    boundary = "cxr-rfc5987"
    body = (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + data \
        + f"\r\n--{boundary}--\r\n".encode()
    with gateway.client("alice") as http:
        response = http.post("/v1/predictions", content=body,
                             headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    record = JobRecord.model_validate_json(
        (gateway.storage_root / "jobs" / f"{job_id}.json").read_bytes())
    assert record.filename == expected
    # Stored without its metadata (EXIF can carry names), the pixels untouched.
    stored = Image.open(gateway.storage_root / "uploads" / job_id)
    np.testing.assert_array_equal(np.asarray(stored), np.asarray(Image.open(io.BytesIO(data))))


def test_no_query_string_secret_reaches_a_log_line(gateway):
    requests = [
        ("GET", f"/v1/predictions?api_key={SECRET}"),
        ("GET", f"/v1/models/current?key={SECRET}&wait=5"),
        ("GET", f"/healthz?token={SECRET}"),
        ("GET", f"/no/such/route?{SECRET}"),
        ("POST", f"/v1/predictions?api_key={SECRET}"),
        ("POST", f"/dicomweb/studies?access_token={SECRET}"),
        ("GET", f"/metrics?x=1&password={SECRET}"),
    ]
    with gateway.client(None) as anonymous, gateway.client("alice") as alice:
        for method, path in requests:
            refused = anonymous.request(method, path)
            assert refused.status_code < 500
            if path.startswith(("/v1", "/dicomweb")):
                assert refused.status_code == 401  # a key is accepted in the header only
            assert alice.request(method, path).status_code < 500
    log_text = gateway.process.log_tail(10**7)
    audit_text = gateway.audit_log.read_text() if gateway.audit_log.exists() else ""
    assert SECRET not in log_text and SECRET not in audit_text
    assert "api_key=REDACTED" in log_text  # the access lines are there, redacted
