"""The relay's TLS certificate: configured, or self-signed once and kept.

``load_tls(cert, key, data_dir, server_name) -> TlsMaterial`` uses the configured PEM
pair when both paths are given; otherwise it generates a self-signed pair on first
start into ``<data_dir>/tls/`` (key mode 0600) and reuses it afterwards.
``TlsMaterial`` carries the server ``ssl.SSLContext``, the leaf certificate's PEM
(what ``smtpplus tls export`` prints) and its SHA-256 fingerprint as
``SHA256:AB:CD:…`` (what the console shows).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from relay.store.db import StoreError

SELF_SIGNED_CERT = "relay-cert.pem"
SELF_SIGNED_KEY = "relay-key.pem"


class TlsError(StoreError):
    """The certificate or key cannot be used (one line naming the file and the fix)."""


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    context: ssl.SSLContext
    cert_pem: str  # the leaf certificate
    fingerprint: str  # "SHA256:AB:CD:…" of the leaf certificate's DER
    cert_path: Path
    key_path: Path
    self_signed: bool


def fingerprint_of(cert_pem: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_pem_x509_certificate(cert_pem.encode("ascii"))
    digest = cert.fingerprint(hashes.SHA256())
    return "SHA256:" + ":".join(f"{b:02X}" for b in digest)


def load_tls(
    cert: Path | None,
    key: Path | None,
    data_dir: Path,
    server_name: str,
) -> TlsMaterial:
    """The configured pair, else the self-signed pair in ``data_dir`` (made if missing)."""
    if (cert is None) != (key is None):
        raise TlsError("set both tls_cert and tls_key (or neither, for a self-signed certificate)")
    self_signed = cert is None
    if cert is None or key is None:
        directory = Path(data_dir) / "tls"
        cert, key = directory / SELF_SIGNED_CERT, directory / SELF_SIGNED_KEY
        if not (cert.exists() and key.exists()):
            _generate_self_signed(cert, key, server_name)
    context = server_context(cert, key)
    leaf = _leaf_pem(cert)
    return TlsMaterial(context, leaf, fingerprint_of(leaf), cert, key, self_signed)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _check_files(cert, key)
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise TlsError(
            f"TLS certificate {cert} or key {key} is not usable ({exc.reason or exc}) — "
            "give a PEM certificate and its matching private key"
        ) from None
    except OSError as exc:  # not SSLError: raced with the check above; ssl gives no file name
        raise TlsError(
            f"TLS certificate {cert} or key {key} cannot be read ({exc.strerror or exc}) — check tls_cert / tls_key"
        ) from None
    return context


def _check_files(cert: Path, key: Path) -> None:
    """Name each missing or unreadable file: ssl's own errors carry no file name."""
    problems = []
    for setting, path in (("tls_cert", Path(cert)), ("tls_key", Path(key))):
        if not path.is_file():
            problems.append(f"{setting} {path} does not exist")
        elif not os.access(path, os.R_OK):
            problems.append(f"{setting} {path} is not readable")
    if problems:
        raise TlsError(
            f"TLS file problem: {'; '.join(problems)} — fix the path or permissions "
            "(or set neither tls_cert nor tls_key for a self-signed certificate)"
        )


def _leaf_pem(cert: Path) -> str:
    text = cert.read_text(encoding="ascii", errors="replace")
    end = "-----END CERTIFICATE-----"
    start = text.find("-----BEGIN CERTIFICATE-----")
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        raise TlsError(f"TLS certificate {cert} holds no PEM certificate")
    return text[start : stop + len(end)] + "\n"


def _generate_self_signed(cert_path: Path, key_path: Path, server_name: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (server_name or "localhost")[:64])])
    alt_names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    if server_name and server_name != "localhost":
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(server_name)))
        except ValueError:
            alt_names.append(x509.DNSName(server_name))
    alt_names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    try:
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        key_bytes = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_atomic(key_path, key_bytes, mode=0o600)
        _write_atomic(cert_path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
    except OSError as exc:
        raise TlsError(
            f"cannot write the self-signed certificate into {cert_path.parent}: {exc.strerror or exc} — "
            "set data_dir to a writable directory, or give tls_cert and tls_key"
        ) from None


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
