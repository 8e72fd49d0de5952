"""The relay's TLS certificate: configured, or self-signed once and kept.

``load_tls(cert, key, data_dir, server_name) -> TlsMaterial`` uses the configured PEM
pair when both paths are given; otherwise it generates a self-signed pair on first
start into ``<data_dir>/tls/`` (key mode 0600) and reuses it afterwards.
``TlsMaterial`` carries the server ``ssl.SSLContext``, the leaf certificate's PEM
(what ``smtpplus tls export`` prints) and its SHA-256 fingerprint as
``SHA256:AB:CD:…`` (what the console shows).

The generated certificate is what Apple's clients (and the CA/Browser baseline)
accept: ``extendedKeyUsage=serverAuth``, at most 825 days from notBefore (the
backdating included) to notAfter, SANs for the server name. A generated pair that
lacks serverAuth, is valid longer or expires within 30 days is made anew at start
(``TlsMaterial.regenerated`` says why).

Relays started at once on one data dir (``--reuse-port``) must end with one pair
they all serve: checking, making and loading the generated pair happen under an
exclusive lock on ``<data_dir>/tls/.relay-cert.lock``, and each file is written to a
temporary name then renamed into place, so no start ever loads half a pair or a
certificate with another start's key. A pair left mismatched (a generation cut off
between its two renames) is made anew at the next start.

``TlsKeeper`` keeps a configured pair current without a restart: it polls the files'
change stamps (and reloads on :meth:`TlsKeeper.reload`, which the service calls on
SIGHUP); a good new pair is loaded into the same ``SSLContext`` (new connections get
it, open sessions keep theirs), a bad one is a one-line error and the old pair stays.
Both are recorded as events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import fcntl
import ipaddress
import logging
import os
import ssl
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay.reasons import EventKind, Reason
from relay.store import StoreError

if TYPE_CHECKING:
    from relay.store.events import NewEvent

log = logging.getLogger("smtpplus.tls")

SELF_SIGNED_CERT = "relay-cert.pem"
SELF_SIGNED_KEY = "relay-key.pem"
GENERATION_LOCK = ".relay-cert.lock"
MAX_VALIDITY = dt.timedelta(days=825)  # notAfter - notBefore, backdating included
BACKDATE = dt.timedelta(minutes=5)  # clients with a slightly slow clock still accept it
RENEW_BEFORE = dt.timedelta(days=30)


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
    regenerated: str | None = None  # why the generated pair was made anew at this start


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
    if cert is None or key is None:
        directory = Path(data_dir) / "tls"
        with _generation_lock(directory):
            return _generated_pair(directory, server_name)
    context = server_context(cert, key)
    leaf = _leaf_pem(cert)
    return TlsMaterial(context, leaf, fingerprint_of(leaf), cert, key, False)


def _generated_pair(directory: Path, server_name: str) -> TlsMaterial:
    """The self-signed pair in ``directory``, made (anew) when missing or unfit.
    Called under the generation lock: the check, the write and the load see one pair."""
    cert, key = directory / SELF_SIGNED_CERT, directory / SELF_SIGNED_KEY
    regenerated = None
    if not (cert.exists() and key.exists()):
        _generate_self_signed(cert, key, server_name)
    else:
        regenerated = unfit_reason(cert, server_name=server_name) or mismatch_reason(cert, key)
        if regenerated is not None:
            _generate_self_signed(cert, key, server_name)
    context = server_context(cert, key)
    leaf = _leaf_pem(cert)
    return TlsMaterial(context, leaf, fingerprint_of(leaf), cert, key, True, regenerated)


@contextlib.contextmanager
def _generation_lock(directory: Path) -> Iterator[None]:
    """Hold the exclusive lock on the generated pair (see the module doc). A data dir
    where the lock file cannot be made (read-only) is used without it: nothing can be
    generated there anyway, and generating then fails naming the directory."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / GENERATION_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a start generating holds it for well under a second
        yield
    finally:
        os.close(fd)  # releases the lock


def unfit_reason(cert_path: Path, now: dt.datetime | None = None, *, server_name: str | None = None) -> str | None:
    """Why a generated certificate must be made anew (no serverAuth, valid longer than
    825 days, expiring within 30 days, unreadable, not naming ``server_name``), else None."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    moment = now or dt.datetime.now(dt.UTC)
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    except (OSError, ValueError) as exc:
        return f"the certificate cannot be read ({exc})"
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        server_auth = ExtendedKeyUsageOID.SERVER_AUTH in usage
    except x509.ExtensionNotFound:
        server_auth = False
    if not server_auth:
        return "it has no extendedKeyUsage serverAuth (Apple clients refuse it)"
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    if lifetime > MAX_VALIDITY:
        return f"it is valid for {lifetime.days} days, more than 825 (Apple clients refuse it)"
    left = cert.not_valid_after_utc - moment
    if left < RENEW_BEFORE:
        return f"it expires within 30 days ({cert.not_valid_after_utc:%Y-%m-%d})"
    if server_name and server_name != "localhost" and server_name not in _san_values(cert):
        return f"it does not name the server name {server_name!r}"
    return None


def mismatch_reason(cert_path: Path, key_path: Path) -> str | None:
    """Why a generated pair's key is unusable with its certificate, else None. An
    unreadable file is not a reason here: :func:`server_context` names it and the fix."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except OSError:
        return None
    except (ValueError, TypeError) as exc:
        return f"its key cannot be read ({exc})"
    der = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*der) != key.public_key().public_bytes(*der):
        return "the certificate does not match its key (a generation was cut off)"
    return None


def _san_values(cert: Any) -> set[str]:
    from cryptography import x509

    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in names.get_values_for_type(x509.DNSName)} | {
        str(v) for v in names.get_values_for_type(x509.IPAddress)
    }


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
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, (server_name or "localhost")[:64])])
    alt_names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    if server_name and server_name != "localhost":
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(server_name)))
        except ValueError:
            alt_names.append(x509.DNSName(server_name))
    alt_names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    not_before = dt.datetime.now(dt.UTC).replace(microsecond=0) - BACKDATE
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + MAX_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    try:
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        key_bytes = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Each file whole or not at all; a cut between the two renames leaves a
        # mismatched pair, which the next start (under the lock) makes anew.
        _write_atomic(key_path, key_bytes, mode=0o600)
        _write_atomic(cert_path, certificate.public_bytes(serialization.Encoding.PEM), mode=0o644)
    except OSError as exc:
        raise TlsError(
            f"cannot write the self-signed certificate into {cert_path.parent}: {exc.strerror or exc} — "
            "set data_dir to a writable directory, or give tls_cert and tls_key"
        ) from None


def _write_atomic(path: Path, data: bytes, *, mode: int) -> None:
    # A name of its own (mkstemp), so no other writer's temporary file is ever reused.
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise


# ---------------------------------------------------------------------------
# Reloading a configured pair


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks: certbot's live/ links change targets
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class TlsKeeper:
    """The relay's current TLS material; reloads a configured pair when it changes.

    ``store`` (an :class:`relay.store.AsyncStore`) receives the events and the new
    fingerprint/PEM (what ``status`` and ``tls export`` show); ``observers`` are told
    each event once recorded. ``interval`` seconds
    between polls of the files' change stamps (0: only :meth:`reload`)."""

    def __init__(self, material: TlsMaterial, store: Any = None, *, interval: float = 5.0) -> None:
        self.material = material
        self.store = store
        self.interval = interval
        self.reloads = 0
        self.failures = 0
        self.last_error: str | None = None
        self._stamps = self._current_stamps()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # Told each recorded event (the relay's service shares its observers here).
        self.observers: list[Callable[[list[NewEvent]], None]] = []

    @property
    def watching(self) -> bool:
        return not self.material.self_signed

    def _current_stamps(self) -> tuple[Any, Any]:
        return (_stamp(self.material.cert_path), _stamp(self.material.key_path))

    async def start(self) -> None:
        """Record a start-time regeneration, then poll (configured pairs only)."""
        if self.material.regenerated:
            detail = (
                f"generated certificate {self.material.cert_path} made anew: {self.material.regenerated}; "
                f"new fingerprint {self.material.fingerprint}"
            )
            await self._publish(Reason.TLS_REGENERATED, detail, changed=False, level=logging.WARNING)
        if self.watching and self.interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll(), name="smtpplus-tls-reload")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if self._current_stamps() != self._stamps:
                await self.reload()

    async def reload(self) -> bool:
        """Load the configured pair again (SIGHUP, or its files changed). True when a
        new pair is in use; False when nothing changed, the pair is generated, or the
        new pair is bad (then the old one stays and an error is recorded)."""
        if not self.watching:
            return False
        async with self._lock:
            stamps = self._current_stamps()
            self._stamps = stamps
            m = self.material
            try:
                await asyncio.to_thread(server_context, m.cert_path, m.key_path)  # check on a fresh context first
                leaf = _leaf_pem(m.cert_path)
                fingerprint = fingerprint_of(leaf)
            except (TlsError, ValueError) as exc:
                self.failures += 1
                error = f"TLS reload failed, the previous certificate stays in use: {exc}"
                if error != self.last_error:
                    await self._publish(Reason.TLS_RELOAD_FAILED, error, changed=False, level=logging.ERROR)
                self.last_error = error
                return False
            self.last_error = None
            if fingerprint == m.fingerprint:
                return False
            try:
                # The same context the listeners hand to every new connection: new
                # sessions get the new pair, open ones keep the one they negotiated.
                m.context.load_cert_chain(str(m.cert_path), str(m.key_path))
            except (ssl.SSLError, OSError) as exc:  # changed again between the check and here
                self.failures += 1
                error = f"TLS reload failed, the previous certificate stays in use: {exc}"
                await self._publish(Reason.TLS_RELOAD_FAILED, error, changed=False, level=logging.ERROR)
                return False
            self.material = dataclasses.replace(m, cert_pem=leaf, fingerprint=fingerprint)
            self.reloads += 1
            detail = f"TLS certificate {m.cert_path} reloaded: {m.fingerprint} → {fingerprint}"
            await self._publish(Reason.TLS_RELOADED, detail, changed=True, level=logging.INFO)
            return True

    async def _publish(self, reason: Reason, detail: str, *, changed: bool, level: int) -> None:
        """Record the event (and the facts ``status`` shows), then tell the observers —
        the relay's event log line and metrics, as for every other event. Not recorded
        (no store, a busy one) or nobody listening: the line is logged here."""
        from relay.store.events import NewEvent

        event = NewEvent(kind=EventKind.RELAY, reason=reason, detail=detail)
        recorded = False
        if self.store is not None:
            from relay.store.relay_info import record_relay_change
            from relay.store.settings import Keys

            facts = None
            if changed or reason == Reason.TLS_REGENERATED:
                facts = {Keys.TLS_FINGERPRINT: self.material.fingerprint, Keys.TLS_CERT_PEM: self.material.cert_pem}
            try:
                await self.store.run(record_relay_change, EventKind.RELAY, reason, detail, facts)
                recorded = True
            except Exception as exc:  # a busy store must not stop TLS from working
                log.warning("smtpplus: cannot record the TLS change: %s", exc)
        if recorded and self.observers:
            for observer in self.observers:
                try:
                    observer([event])
                except Exception:  # a log line or a metric must never fail a reload
                    log.exception("event observer failed")
        else:
            log.log(level, "smtpplus: %s", detail)

