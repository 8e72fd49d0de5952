"""Unsubscribe tokens and the ``List-Unsubscribe`` headers of campaign messages
(RFC 2369, RFC 8058 one-click).

A token is ``<subscription id>.<MAC>``: the id of the member's subscription row
(:mod:`relay.store.subscriptions`) and the first 16 bytes of HMAC-SHA256 over the list
id and the member address under the store's secret, base64url without padding. It is
URL-safe and short (about 30 characters), carries no address in clear, and cannot be
made for another member without the secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import urllib.parse
from dataclasses import dataclass

MAC_BYTES = 16
TOKEN_PLACEHOLDER = "{token}"
ONE_CLICK = "List-Unsubscribe=One-Click"
_TOKEN = re.compile(r"^([1-9][0-9]{0,18})\.([A-Za-z0-9_-]{22})$")


class BadToken(ValueError):
    """Not a token this store issued (malformed, unknown or forged)."""


def mac(secret: bytes, list_id: int, address: str) -> bytes:
    message = f"{int(list_id)}\n{address}".encode()
    return hmac.new(secret, message, hashlib.sha256).digest()[:MAC_BYTES]


def make_token(secret: bytes, subscription_id: int, list_id: int, address: str) -> str:
    code = base64.urlsafe_b64encode(mac(secret, list_id, address)).rstrip(b"=").decode("ascii")
    return f"{int(subscription_id)}.{code}"


def parse_token(token: str) -> tuple[int, bytes]:
    """(subscription id, MAC) of a well-formed token; :class:`BadToken` otherwise."""
    match = _TOKEN.match(token.strip())
    if match is None:
        raise BadToken("not an unsubscribe token (expected NUMBER.CODE from a List-Unsubscribe header)")
    code = match.group(2)
    token_mac = base64.urlsafe_b64decode(code + "==")
    # 22 characters carry 132 bits for the MAC's 128: the last one's low 4 bits are
    # padding the decoder ignores, so 16 spellings would decode to one MAC. Only the
    # one make_token writes is a token.
    if base64.urlsafe_b64encode(token_mac).rstrip(b"=").decode("ascii") != code:
        raise BadToken("not an unsubscribe token this relay issued (its code is not in canonical base64url)")
    return int(match.group(1)), token_mac


def token_matches(secret: bytes, token_mac: bytes, list_id: int, address: str) -> bool:
    return hmac.compare_digest(token_mac, mac(secret, list_id, address))


@dataclass(frozen=True, slots=True)
class UnsubscribeSettings:
    """A list's List-Unsubscribe targets (either may be None: then the list has none)."""

    url_template: str | None = None  # https://…{token}…
    mailto: str | None = None  # an address

    @property
    def configured(self) -> bool:
        return bool(self.url_template or self.mailto)


def check_url_template(template: str) -> str:
    """An https URL with ``{token}`` in it (RFC 8058 one-click needs HTTPS)."""
    text = template.strip()
    parts = urllib.parse.urlsplit(text.replace(TOKEN_PLACEHOLDER, "TOKEN"))
    if parts.scheme.lower() != "https" or not parts.netloc:
        raise ValueError(f"--url-template {template!r}: give an https:// URL (RFC 8058 one-click needs HTTPS)")
    if text.count(TOKEN_PLACEHOLDER) != 1:
        raise ValueError(f"--url-template {template!r}: put {TOKEN_PLACEHOLDER} exactly once where the token goes")
    if any(c in text for c in " <>,\"\r\n\t") or any(ord(c) < 33 or ord(c) > 126 for c in text):
        raise ValueError(f"--url-template {template!r}: only printable ASCII without spaces, commas or <>")
    return text


def header_lines(settings: UnsubscribeSettings, token: str) -> bytes:
    """The ``List-Unsubscribe`` (and, with an https URL, ``List-Unsubscribe-Post``)
    header fields for one member, CRLF-terminated; empty when the list has none."""
    targets: list[str] = []
    if settings.mailto:
        subject = urllib.parse.quote(f"unsubscribe {token}")
        targets.append(f"<mailto:{settings.mailto}?subject={subject}>")
    if settings.url_template:
        targets.append(f"<{settings.url_template.replace(TOKEN_PLACEHOLDER, token)}>")
    if not targets:
        return b""
    # One target per line (folded): short lines whatever the URL, the same after DKIM's relaxed form.
    lines = "List-Unsubscribe: " + ",\r\n ".join(targets) + "\r\n"
    if settings.url_template:
        lines += f"List-Unsubscribe-Post: {ONE_CLICK}\r\n"
    return lines.encode("ascii")
