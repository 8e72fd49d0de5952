"""Relay users: create with a generated password (shown once), reset a password,
(de)activate, and the nudges that say what to do next.

A password exists in plaintext only inside the result returned to the caller, which
shows it once; the store keeps an argon2id hash. ``repr`` of a result never shows it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from relay import passwords
from relay.store import Connection, directory
from relay.store.directory import UserInfo

PRIORITY_ONE_NOTE = (
    "priority 1 puts this user's mail first in the sending queue; it does not mark the mail "
    "urgent for recipients — only the message's own priority header (X-Priority: 1) does that"
)


# ---------------------------------------------------------------------------
# Passwords


@dataclass(frozen=True, slots=True)
class Credentials:
    """A password and its argon2id hash. Hashing costs ~70 ms of CPU, so callers with
    an event loop (the harness) make these in a worker thread, all at once."""

    password: str = field(repr=False)
    password_hash: str = field(repr=False)


def new_credentials(password: str | None = None) -> Credentials:
    """A generated password (or the given one: benches log in with a fixed one) and its hash."""
    plain = passwords.generate_password() if password is None else password
    return Credentials(plain, passwords.hash_password(plain))


@dataclass(frozen=True, slots=True)
class NewUser:
    """A user just created and its password, to be shown once."""

    user: UserInfo
    password: str = field(repr=False)

    @property
    def username(self) -> str:
        return self.user.username

    def nudges(self, words: NudgeWords | None = None) -> list[Nudge]:
        return nudges(self.user, words)


@dataclass(frozen=True, slots=True)
class NewPassword:
    """A password just set for an existing user, to be shown once."""

    username: str
    password: str = field(repr=False)


def create_user(
    db: Connection,
    *,
    list_name: str,
    username: str | None = None,
    priority: int = 3,
    note: str = "",
    domains: Iterable[str] = (),
    senders: Iterable[str] = (),
    active: bool = False,
    credentials: Credentials | None = None,
) -> NewUser:
    """Create a relay user on ``list_name`` with a generated password (or the given
    ``credentials``). ``username`` None: ``<list-slug>-<n>``. New users start inactive
    unless ``active``. Domains and senders must be canonical (``relay.policy.parse_*``)."""
    made = credentials or new_credentials()
    user = directory.create_user(
        db,
        list_name=list_name,
        password_hash=made.password_hash,
        username=username,
        priority=priority,
        note=note,
        domains=list(domains),
        senders=list(senders),
        active=active,
    )
    return NewUser(user, made.password)


def reset_password(db: Connection, username: str) -> NewPassword:
    """Replace ``username``'s password with a new generated one; the old one stops
    working at once (the store bumps the user's auth version)."""
    # Hash only after the user is known to exist: argon2 costs ~70 ms of CPU.
    user = directory.get_user(db, username)
    made = new_credentials()
    directory.set_password_hash(db, user.username, made.password_hash)
    return NewPassword(user.username, made.password)


def set_active(db: Connection, username: str, active: bool) -> UserInfo:
    """Let the user log in and send (``active``), or stop it. Identities not yet
    verified still refuse mail; see :func:`activation_warnings`."""
    return directory.set_active(db, username, active)


def pending_identities(user: UserInfo) -> list[str]:
    return [i.value for i in user.identities if not i.verified]


# ---------------------------------------------------------------------------
# Nudges: which apply is decided here once; each surface brings its own words


@dataclass(frozen=True, slots=True)
class Nudge:
    """One next-step line. ``kind``: ``activate``, ``no-identities``, ``pending`` or
    ``priority-one`` (surfaces style by kind)."""

    kind: str
    text: str


@dataclass(frozen=True, slots=True)
class NudgeWords:
    """How one surface says each nudge. Placeholders: ``{user}``, ``{pending}``."""

    activate: str
    no_identities: str
    pending: str
    priority_one: str


VERIFY_HINT = "verify with `smtpplus senders send-code|check-dns|approve`"

# The command line's words (its commands as the next step).
COMMAND_WORDS = NudgeWords(
    activate="every identity of {user} is verified — remember to activate it: smtpplus users activate {user}",
    no_identities=(
        "{user} has no authorized domains or senders, so it cannot send as anyone — "
        'add some: smtpplus users edit {user} --domains "example.com" --senders "info@example.com"'
    ),
    pending="awaiting verification: {pending} — mail from these is refused until then; " + VERIFY_HINT,
    priority_one=PRIORITY_ONE_NOTE,
)


def nudges(user: UserInfo, words: NudgeWords | None = None) -> list[Nudge]:
    """The help page's warnings that apply to ``user`` now, in ``words`` (default: the
    command line's): verified but inactive, no identities, identities awaiting
    verification, and what priority 1 means."""
    say = words or COMMAND_WORDS
    pending = pending_identities(user)
    values = {"user": user.username, "pending": ", ".join(pending)}
    out: list[Nudge] = []
    if user.needs_activation:
        out.append(Nudge("activate", say.activate.format(**values)))
    if not user.identities:
        out.append(Nudge("no-identities", say.no_identities.format(**values)))
    elif pending:
        out.append(Nudge("pending", say.pending.format(**values)))
    if user.priority == 1:
        out.append(Nudge("priority-one", say.priority_one.format(**values)))
    return out


def activation_warnings(user: UserInfo) -> list[str]:
    """After activating: why mail may still be refused (pending identities, or none)."""
    pending = pending_identities(user)
    if pending:
        return [f"not verified yet: {', '.join(pending)} — mail from these is refused until they are; {VERIFY_HINT}"]
    if not user.identities:
        return [f"{user.username} has no authorized domains or senders, so it cannot send as anyone"]
    return []
