"""PostgreSQL store locations: ``postgresql://user:password@host:port/dbname``.

Which ``--db`` values name a PostgreSQL store, and how one is shown: the password is
never printed (status, logs, errors show ``***`` in its place). This module imports
no driver, so the CLI can tell the backends apart without loading psycopg.
"""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

SCHEMES = ("postgresql://", "postgres://")
MASK = "***"

# A password given as a query parameter (``?password=…``) or in a key=value DSN.
_PARAM_PASSWORD = re.compile(r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)")


# What ``Path("postgresql://u@h/db")`` makes of a URL: one slash gone.
_FLATTENED = re.compile(r"(?i)^(postgres(?:ql)?):/(?!/)")


def normalize(location: str | os.PathLike[str]) -> str:
    """``location`` as text, with a URL that went through ``pathlib.Path`` (which
    turns ``//`` into ``/``) made whole again."""
    return _FLATTENED.sub(r"\1://", os.fspath(location), count=1)


def is_postgres(location: object) -> bool:
    """Whether a ``--db`` value names a PostgreSQL store (anything else is a file)."""
    if not isinstance(location, str | os.PathLike):
        return False
    return normalize(location).lower().startswith(SCHEMES)


def masked(location: str | os.PathLike[str]) -> str:
    """``location`` fit to print: its password, if any, replaced by ``***``."""
    text = normalize(location)
    if not is_postgres(text):
        return os.fspath(location)
    try:
        parts = urlsplit(text)
    except ValueError:
        return _PARAM_PASSWORD.sub(lambda m: m.group(1) + MASK, text)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{MASK}@{hostport}"
    query = parts.query
    if query:
        pairs = [(k, MASK if k.lower() == "password" else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def password_of(location: str) -> str | None:
    """The password written in ``location`` (to scrub it from a driver's message)."""
    try:
        parts = urlsplit(location)
    except ValueError:
        return None
    if parts.password:
        return unquote(parts.password)
    for key, value in parse_qsl(parts.query):
        if key.lower() == "password" and value:
            return value
    return None


def scrub(text: str, location: str) -> str:
    """``text`` (say, a driver's error message) with the location's password masked,
    raw or URL-encoded, wherever it appears."""
    secret = password_of(location)
    if secret:
        for form in {secret, quote(secret, safe="")}:
            text = text.replace(form, MASK)
    return text


def database_name(location: str) -> str:
    """The database a location names (``""`` when it names none: the user's default)."""
    try:
        return unquote(urlsplit(location).path.lstrip("/"))
    except ValueError:
        return ""
