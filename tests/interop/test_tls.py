"""The relay's certificate: what is generated (parsed with ``cryptography``), when a
generated pair is made anew, and a configured pair reloaded without a restart —
judged by real TLS clients (the ssl module through smtplib) against a real relay."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import multiprocessing
import shutil
import smtplib
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from relay.reasons import EventKind, Reason
from relay.store.events import find_events
from relay.store.settings import Keys, get_setting
from relay.tls import (
    GENERATION_LOCK,
    SELF_SIGNED_CERT,
    SELF_SIGNED_KEY,
    fingerprint_of,
    load_tls,
    mismatch_reason,
    unfit_reason,
)
from tests.delivery.conftest import eventually
from tests.relay.support import relay_config, running_relay


def certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_the_generated_certificate_is_one_apple_clients_accept(tmp_path: Path) -> None:
    material = load_tls(None, None, tmp_path, "relay.example.com")
    cert = certificate(material.cert_path)
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(days=825)
    assert cert.not_valid_before_utc < dt.datetime.now(dt.UTC)  # backdated, within the 825 days
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"relay.example.com", "localhost"} <= set(names.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "::1"} <= {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert material.regenerated is None and unfit_reason(material.cert_path) is None
    # Kept across starts: the same pair comes back; a new server name gets a new pair.
    assert load_tls(None, None, tmp_path, "relay.example.com").fingerprint == material.fingerprint
    renamed = load_tls(None, None, tmp_path, "mail.example.org")
    assert renamed.fingerprint != material.fingerprint and "mail.example.org" in str(renamed.regenerated)
    assert "mail.example.org" in certificate(renamed.cert_path).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName)


def write_old_pair(directory: Path, *, days: int, server_auth: bool, age_days: int = 0) -> None:
    """A generated pair as older smtpplus versions made it (or one about to expire)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")])
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=age_days, minutes=5)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("relay.test")]), critical=False)
    )
    if server_auth:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SELF_SIGNED_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / SELF_SIGNED_KEY).write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


@pytest.mark.parametrize(
    ("days", "server_auth", "age_days", "why"),
    [
        (3650, False, 0, "no extendedKeyUsage serverAuth"),
        (3650, True, 0, "valid for 3650 days"),
        (825, True, 810, "expires within 30 days"),
    ],
)
async def test_an_unfit_generated_pair_is_made_anew_at_start_with_an_event(
    db: Any, store_path: Path, tmp_path: Path, tls_files: dict[str, Path], days: int, server_auth: bool, age_days: int, why: str
) -> None:
    data_dir = tmp_path / "relay-data"
    write_old_pair(data_dir / "tls", days=days, server_auth=server_auth, age_days=age_days)
    old = (data_dir / "tls" / SELF_SIGNED_CERT).read_bytes()
    config = relay_config(tmp_path, tls_files, tls_cert=None, tls_key=None, data_dir=data_dir)
    async with running_relay(store_path, config) as service:
        assert service.tls is not None and service.tls.regenerated is not None and why in service.tls.regenerated
        fingerprint = service.tls.fingerprint
    assert (data_dir / "tls" / SELF_SIGNED_CERT).read_bytes() != old
    assert unfit_reason(data_dir / "tls" / SELF_SIGNED_CERT) is None
    [event] = find_events(db, reason=str(Reason.TLS_REGENERATED), limit=5)
    assert why in event.detail and fingerprint in event.detail
    assert get_setting(db, Keys.TLS_FINGERPRINT) == fingerprint


STARTS = 6  # relays started at once on one data dir (``--reuse-port``)


def start_at_once(barrier: Any, data_dir: str) -> tuple[str, str | None]:
    """One relay start in a process of its own: load (or make) the generated pair the
    moment every other start is ready too. Its context loaded, so its key matched."""
    barrier.wait(timeout=60)
    material = load_tls(None, None, Path(data_dir), "relay.example.com")
    return material.fingerprint, material.regenerated


def starts_at_once(data_dir: Path) -> list[tuple[str, str | None]]:
    context = multiprocessing.get_context("spawn")  # real processes, as two relay commands are
    with context.Manager() as manager, context.Pool(STARTS) as pool:
        barrier = manager.Barrier(STARTS)
        return pool.starmap(start_at_once, [(barrier, str(data_dir))] * STARTS)


def assert_one_consistent_pair(directory: Path, fingerprints: set[str]) -> None:
    cert, key = directory / SELF_SIGNED_CERT, directory / SELF_SIGNED_KEY
    assert fingerprints == {fingerprint_of(cert.read_text())}  # every start serves the pair on disk
    assert mismatch_reason(cert, key) is None and unfit_reason(cert) is None
    assert key.stat().st_mode & 0o777 == 0o600
    assert {p.name for p in directory.iterdir()} == {SELF_SIGNED_CERT, SELF_SIGNED_KEY, GENERATION_LOCK}


def test_relays_started_at_once_on_an_empty_data_dir_all_serve_one_generated_pair(tmp_path: Path) -> None:
    results = starts_at_once(tmp_path)
    assert_one_consistent_pair(tmp_path / "tls", {fingerprint for fingerprint, _ in results})
    assert [why for _, why in results] == [None] * STARTS  # a first pair is made, not made anew


def test_relays_started_at_once_make_an_unfit_pair_anew_once(tmp_path: Path) -> None:
    write_old_pair(tmp_path / "tls", days=3650, server_auth=False)
    old = fingerprint_of((tmp_path / "tls" / SELF_SIGNED_CERT).read_text())
    results = starts_at_once(tmp_path)
    fingerprints = {fingerprint for fingerprint, _ in results}
    assert old not in fingerprints
    assert_one_consistent_pair(tmp_path / "tls", fingerprints)
    # One start made it anew (and records the event); the others found it made.
    [why] = [why for _, why in results if why is not None]
    assert "no extendedKeyUsage serverAuth" in why


def test_a_generated_pair_whose_key_does_not_match_is_made_anew(tmp_path: Path) -> None:
    first = load_tls(None, None, tmp_path, "relay.example.com")
    # A generation cut off between its two renames: another key beside the certificate.
    other = ec.generate_private_key(ec.SECP256R1())
    first.key_path.write_bytes(
        other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    again = load_tls(None, None, tmp_path, "relay.example.com")
    assert again.fingerprint != first.fingerprint and "does not match its key" in str(again.regenerated)
    assert mismatch_reason(again.cert_path, again.key_path) is None


def peer_fingerprint(client: smtplib.SMTP) -> str:
    sock = client.sock
    assert isinstance(sock, ssl.SSLSocket)
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def open_tls_session(port: int, ca: Path) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10)
    client.ehlo()
    client.starttls(context=ssl.create_default_context(cafile=str(ca)))
    client.ehlo()
    return client


def der_fingerprint(pem_path: Path) -> str:
    return hashlib.sha256(certificate(pem_path).public_bytes(serialization.Encoding.DER)).hexdigest()


def install_pair(tls_ca: Any, cert_path: Path, key_path: Path) -> None:
    """A new certificate from the same CA, written over the configured files
    (write then rename, as certbot's deploy hooks and config management do)."""
    issued = tls_ca.issue_cert("127.0.0.1", "localhost")
    for target, pem in ((key_path, issued.private_key_pem), (cert_path, issued.cert_chain_pems[0])):
        tmp = target.with_suffix(".new")
        pem.write_to_path(tmp)
        tmp.replace(target)


async def test_a_configured_pair_is_reloaded_when_its_files_change_new_sessions_only(
    db: Any, store_path: Path, tmp_path: Path, tls_files: dict[str, Path], tls_ca: Any
) -> None:
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copyfile(tls_files["cert"], cert_path)
    shutil.copyfile(tls_files["key"], key_path)
    config = relay_config(tmp_path, tls_files, tls_cert=cert_path, tls_key=key_path, tls_reload_interval=0.1)
    async with running_relay(store_path, config) as service:
        port = service.served[0]
        first = await asyncio.to_thread(open_tls_session, port, tls_files["ca"])
        try:
            old = peer_fingerprint(first)
            assert old == der_fingerprint(tls_files["cert"])
            install_pair(tls_ca, cert_path, key_path)
            await eventually(lambda: find_events(db, reason=str(Reason.TLS_RELOADED), limit=5))
            second = await asyncio.to_thread(open_tls_session, port, tls_files["ca"])
            assert peer_fingerprint(second) == der_fingerprint(cert_path) != old
            await asyncio.to_thread(second.quit)
            # The session opened before the change goes on with the certificate it had.
            assert (await asyncio.to_thread(first.noop))[0] == 250
            assert peer_fingerprint(first) == old
        finally:
            await asyncio.to_thread(first.quit)
        assert get_setting(db, Keys.TLS_FINGERPRINT) == service.tls_keeper.material.fingerprint  # type: ignore[union-attr]

        # A bad new pair: one line saying so, the previous pair stays in use.
        current = der_fingerprint(cert_path)
        cert_path.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
        [failure] = await eventually(lambda: find_events(db, reason=str(Reason.TLS_RELOAD_FAILED), limit=5))
        assert "\n" not in failure.detail and "previous certificate stays in use" in failure.detail
        assert str(cert_path) in failure.detail
        third = await asyncio.to_thread(open_tls_session, port, tls_files["ca"])
        assert peer_fingerprint(third) == current
        await asyncio.to_thread(third.quit)
    assert len(find_events(db, reason=str(Reason.TLS_RELOADED), limit=5)) == 1


async def test_reload_hook_rereads_the_pair_without_polling(
    db: Any, store_path: Path, tmp_path: Path, tls_files: dict[str, Path], tls_ca: Any
) -> None:
    """What SIGHUP runs (``RelayService.reload``): polling off, the change is picked up on request."""
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copyfile(tls_files["cert"], cert_path)
    shutil.copyfile(tls_files["key"], key_path)
    config = relay_config(tmp_path, tls_files, tls_cert=cert_path, tls_key=key_path, tls_reload_interval=0)
    async with running_relay(store_path, config) as service:
        told: list[Any] = []
        service.observers.append(told.extend)  # the relay's log and metrics hear of it too
        install_pair(tls_ca, cert_path, key_path)
        await service.reload()
        client = await asyncio.to_thread(open_tls_session, service.served[0], tls_files["ca"])
        assert peer_fingerprint(client) == der_fingerprint(cert_path)
        await asyncio.to_thread(client.quit)
        await service.reload()  # nothing changed: no second event
    assert len(find_events(db, reason=str(Reason.TLS_RELOADED), limit=5)) == 1
    assert [(e.kind, e.reason) for e in told if e.reason == Reason.TLS_RELOADED] == [(EventKind.RELAY, Reason.TLS_RELOADED)]


def test_sighup_makes_the_relay_command_reread_its_pair(db: Any, cli: Any, tmp_path: Path, tls_files: dict[str, Path], tls_ca: Any) -> None:
    import signal
    import time

    from tests.relay.test_cli import RelayProcess

    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copyfile(tls_files["cert"], cert_path)
    shutil.copyfile(tls_files["key"], key_path)
    toml = tmp_path / "relay.toml"
    toml.write_text(
        f"tls_cert = {str(cert_path)!r}\ntls_key = {str(key_path)!r}\ndata_dir = {str(tmp_path / 'data')!r}\n"
        "tls_reload_interval = 0\nserver_name = 'relay.test'\n"
    )
    relay = RelayProcess(cli, tmp_path, "--ports", "0", "--config", str(toml))
    try:
        port = relay.wait_ready()["served"][0]
        install_pair(tls_ca, cert_path, key_path)
        relay.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while not find_events(db, reason=str(Reason.TLS_RELOADED), limit=5):
            assert time.monotonic() < deadline, relay.output()
            time.sleep(0.05)
        client = open_tls_session(port, tls_files["ca"])
        assert peer_fingerprint(client) == der_fingerprint(cert_path)
        client.quit()
        assert relay.proc.poll() is None  # SIGHUP reloads; it does not stop the relay
    finally:
        assert relay.stop() == 0
