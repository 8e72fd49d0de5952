"""Helpers for the service tests: a relay config file and a relay subprocess."""

from __future__ import annotations

from pathlib import Path


def relay_toml(tmp_path: Path, tls_files: dict[str, Path], extra: str = "", *, paused: bool = True) -> Path:
    """Two ephemeral ports, the test CA's certificate, delivery paused (by default)."""
    path = tmp_path / "relay.toml"
    path.write_text(
        f'ports = "0*2"\nserver_name = "relay.test"\ntls_cert = "{tls_files["cert"]}"\n'
        f'tls_key = "{tls_files["key"]}"\ndata_dir = "{tmp_path / "relay-data"}"\n'
        f"shutdown_grace = 2.0\npaused = {str(paused).lower()}\n{extra}"
    )
    return path
