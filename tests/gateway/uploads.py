"""Upload bodies for the gateway tests: real sample X-rays and raw HTTP for streaming checks."""

from __future__ import annotations

import select
import socket
import ssl
from pathlib import Path

from tests.support.procs import REPO_ROOT

SAMPLE_DIR = REPO_ROOT / "data" / "sample"


def sample_xray(label: str = "PNEUMONIA", index: int = 0) -> Path:
    """One of the repo's real sample X-rays (data/sample/<label>/)."""
    folder = SAMPLE_DIR / label
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
    if not images:
        raise FileNotFoundError(f"no sample X-rays in {folder}")
    return images[index]


def multipart_prefix(boundary: str, filename: str = "big.png") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{filename}\"\r\nContent-Type: image/png\r\n\r\n").encode()


def stream_until_answered(port: int, headers: dict[str, str], chunks: int, chunk_size: int,
                          tls: ssl.SSLContext | None = None,
                          pause_s: float = 0.1) -> tuple[bytes, int]:
    """POST a chunked multipart body of `chunks` x `chunk_size` bytes, one chunk at a time,
    stopping as soon as the server answers. Returns (the response, body bytes sent).

    A `Content-Length` in `headers` replaces chunked framing (and then no chunk is sent). The
    pause between chunks lets an early answer arrive before the next chunk is written."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock = tls.wrap_socket(raw, server_hostname="localhost") if tls else raw
    boundary = "cxr-boundary"
    head = "".join(f"{name}: {value}\r\n" for name, value in {
        "Host": f"127.0.0.1:{port}", "Content-Type": f"multipart/form-data; boundary={boundary}",
        **({} if "Content-Length" in headers else {"Transfer-Encoding": "chunked"}),
        **headers}.items())
    sock.sendall(f"POST /v1/predictions HTTP/1.1\r\n{head}\r\n".encode())
    sent = 0
    payload = b"\x00" * chunk_size
    try:
        for index in range(chunks):
            readable, _, _ = select.select([sock], [], [], pause_s)
            if readable:
                break
            data = multipart_prefix(boundary) + payload if index == 0 else payload
            try:
                sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break  # the server closed after answering; read what it said
            sent += len(data)
        response = b""
        while b"\r\n\r\n" not in response:  # the status line and headers are enough
            part = sock.recv(65536)
            if not part:
                break
            response += part
        return response, sent
    finally:
        sock.close()
