"""Relay-user passwords: generated, shown once, stored only as argon2id hashes."""

from __future__ import annotations

import secrets

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# 24 random bytes → 192 bits, URL-safe so it survives copy/paste into any mail client.
PASSWORD_BYTES = 24

_hasher = PasswordHasher(type=Type.ID)

# A real hash of a random password: unknown users are verified against it so a
# failed AUTH costs the same whether or not the user exists.
DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(PASSWORD_BYTES))


def generate_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Full argon2id verification (~70 ms of CPU): never call it on the event loop."""
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
