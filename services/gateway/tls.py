"""TLS for `python -m services.gateway`: the configured certificate, or in development a
self-signed one for localhost / 127.0.0.1 kept under `var/tls/` and reused while it is valid."""

from __future__ import annotations

import ipaddress
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.gateway.settings import GatewaySettings

log = logging.getLogger("cxr.gateway")
CERT_FILE, KEY_FILE = "localhost.crt", "localhost.key"
VALIDITY = timedelta(days=365)


def tls_files(settings: GatewaySettings) -> tuple[Path, Path] | None:
    """(certificate, key) to serve HTTPS with, or None for plain HTTP (CXR_GATEWAY_TLS=false)."""
    if not settings.gateway_tls:
        return None
    if settings.tls_cert and settings.tls_key:
        return Path(settings.tls_cert), Path(settings.tls_key)
    if settings.tls_cert or settings.tls_key:
        raise ValueError("Set both CXR_TLS_CERT and CXR_TLS_KEY, or neither.")
    return ensure_self_signed(Path(settings.tls_dir))


def ensure_self_signed(directory: Path) -> tuple[Path, Path]:
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if cert_path.exists() and key_path.exists() and _still_valid(cert_path):
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed_certificate(key)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    log.warning("no CXR_TLS_CERT/CXR_TLS_KEY: made a self-signed certificate in %s", directory)
    return cert_path, key_path


def self_signed_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cxr-pneumonia development")])
    now = datetime.now(UTC)
    alt_names = x509.SubjectAlternativeName([
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ])
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(alt_names, critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def _still_valid(cert_path: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError:
        return False
    return cert.not_valid_after_utc > datetime.now(UTC) + timedelta(days=1)
