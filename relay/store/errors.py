"""Store errors callers map to one-line messages."""

from __future__ import annotations

from relay.store.db import StoreError


class NotFound(StoreError):
    """A named list, user, identity or message does not exist."""


class AlreadyExists(StoreError):
    """A unique name is taken."""


class InvalidInput(StoreError):
    """Input a rule refused (the message says which and how to fix it)."""
