"""PostgreSQL store locations: ``postgresql://user:password@host:port/dbname``.

Which ``--db`` values name a PostgreSQL store, and how one is shown: the password is
never printed (status, logs, errors show ``***`` in its place). This module imports
no driver, so the CLI can tell the backends apart without loading psycopg.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

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


def store_location(location: str | os.PathLike[str]) -> str | Path:
    """A ``--db`` / ``SMTPPLUS_DB`` value as the store takes it: a PostgreSQL URL stays
    text, exactly as given, anything else is a file ``Path``.

    Never put a URL through ``pathlib.Path``: it turns ``postgresql:///mailstore?host=h``
    into ``postgresql:/mailstore?host=h``, which :func:`normalize` can only read back as
    ``postgresql://mailstore?host=h`` — host ``mailstore``, the user's default database,
    a store created in the wrong place. A URL that already went through ``Path`` is
    mended as well as it can be (right for ``//host/db``, not for ``///db``)."""
    if isinstance(location, str) and location.lower().startswith(SCHEMES):
        return location
    if is_postgres(location):
        return normalize(location)
    return Path(location)


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
    return _unsplit(parts.scheme, netloc, parts.path, query, parts.fragment)


def without_password(location: str | os.PathLike[str]) -> str:
    """``location`` with no password at all (not even ``***``): a URL an operator can
    paste into ``pg_dump`` or ``psql``, which then take the password from
    ``PGPASSWORD`` or ``~/.pgpass``."""
    text = normalize(location)
    if not is_postgres(text):
        return os.fspath(location)
    try:
        parts = urlsplit(text)
    except ValueError:
        return _PARAM_PASSWORD.sub("", text)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}@{hostport}"
    pairs = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() != "password"]
    return _unsplit(parts.scheme, netloc, parts.path, urlencode(pairs), parts.fragment)


def _unsplit(scheme: str, netloc: str, path: str, query: str, fragment: str) -> str:
    # Not urlunsplit: it drops the ``//`` of a URL with no host (``postgresql:///db``),
    # as postgresql is none of the schemes it knows to have one.
    text = f"{scheme}://{netloc}{path}"
    return text + (f"?{query}" if query else "") + (f"#{fragment}" if fragment else "")


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
