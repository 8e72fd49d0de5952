"""Port specs: ``"25,1025-5000"`` → sorted unique ports. Pure."""

from __future__ import annotations

import random

DEFAULT_SPEC = "25,587,1025-5000"  # STARTTLS on each
# Implicit TLS (RFC 8314: TLS from the first byte), served with the default spec only.
DEFAULT_TLS_SPEC = "465"


class PortSpecError(ValueError):
    pass


def parse_port_spec(spec: str) -> list[int]:
    """Parse ``25,1025-5000`` (commas separate items here, as in every port option)."""
    ports: set[int] = set()
    if not spec or not spec.strip():
        raise PortSpecError("port spec is empty — use e.g. 25,1025-5000")
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise PortSpecError(f"port spec {spec!r} has an empty item")
        if "-" in item:
            low_text, _, high_text = item.partition("-")
            low, high = _port(low_text, spec), _port(high_text, spec)
            if low > high:
                raise PortSpecError(f"port range {item!r} runs backwards — write {high}-{low}")
            ports.update(range(low, high + 1))
        else:
            ports.add(_port(item, spec))
    return sorted(ports)


def _port(text: str, spec: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise PortSpecError(f"{text.strip()!r} in port spec {spec!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise PortSpecError(f"port {value} is out of range 1-65535")
    return value


def format_port_spec(ports: list[int]) -> str:
    """The shortest spec for a set of ports: [25, 1025, 1026, 1027] → ``25,1025-1027``."""
    out: list[str] = []
    sorted_ports = sorted(set(ports))
    i = 0
    while i < len(sorted_ports):
        j = i
        while j + 1 < len(sorted_ports) and sorted_ports[j + 1] == sorted_ports[j] + 1:
            j += 1
        out.append(str(sorted_ports[i]) if i == j else f"{sorted_ports[i]}-{sorted_ports[j]}")
        i = j + 1
    return ",".join(out)


def sample_ports(ports: list[int], count: int, seed: int = 0) -> list[int]:
    """A deterministic sample (``sample:50`` in scenario files), always sorted."""
    if count >= len(ports):
        return sorted(ports)
    return sorted(random.Random(seed).sample(sorted(ports), count))
