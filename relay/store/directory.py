"""Lists, list members, relay users and sender identities."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from relay import display, policy
from relay.priority import PriorityError, validate_priority
from relay.store.connection import Connection, Row, transaction
from relay.store.errors import AlreadyExists, Conflict, InvalidInput, NotFound

# ---------------------------------------------------------------------------
# Records


@dataclass(frozen=True, slots=True)
class ListInfo:
    id: int
    name: str
    description: str
    created_at: float
    users: int = 0
    members: int = 0


@dataclass(frozen=True, slots=True)
class IdentityInfo:
    id: int
    kind: str  # 'address' | 'domain'
    value: str
    state: str  # 'pending' | 'verified'
    method: str | None  # 'code' | 'dns' | 'manual'
    reason: str | None
    verified_at: float | None
    dns_token: str
    created_at: float

    @property
    def verified(self) -> bool:
        return self.state == "verified"

    @property
    def txt_record(self) -> str:
        return f"smtpplus-verification={self.dns_token}"


@dataclass(frozen=True, slots=True)
class UserInfo:
    """A relay user as operators see it. Never carries the password hash."""

    id: int
    list_id: int
    list_name: str
    username: str
    active: bool
    priority: int
    note: str
    created_at: float
    updated_at: float
    identities: tuple[IdentityInfo, ...] = ()

    @property
    def domains(self) -> list[str]:
        return [i.value for i in self.identities if i.kind == "domain"]

    @property
    def senders(self) -> list[str]:
        return [i.value for i in self.identities if i.kind == "address"]

    @property
    def all_verified(self) -> bool:
        return bool(self.identities) and all(i.verified for i in self.identities)

    @property
    def needs_activation(self) -> bool:
        """The help page's warning: verified but still inactive."""
        return not self.active and self.all_verified


@dataclass(frozen=True, slots=True)
class AuthRecord:
    """What the relay needs to authenticate and authorize one user."""

    user_id: int
    username: str
    password_hash: str
    active: bool
    auth_version: int
    priority: int
    list_id: int
    list_name: str
    senders: dict[str, str]  # address -> state
    domains: dict[str, str]  # domain -> state


# ---------------------------------------------------------------------------
# Lists


_LIST_SELECT = (
    "SELECT l.id, l.name, l.description, l.created_at, "
    "(SELECT count(*) FROM users u WHERE u.list_id = l.id), "
    "(SELECT count(*) FROM list_members m WHERE m.list_id = l.id) FROM lists l"
)


def _list_name(name: str) -> str:
    try:
        checked = display.check_name(name, "list name", display.MAX_LIST_NAME)
    except display.BadName as exc:
        raise InvalidInput(str(exc)) from None
    if not checked:
        raise InvalidInput("list name is empty — give the list a name")
    return checked


def _description(text: str) -> str:
    try:
        return display.check_name(text, "description", display.MAX_DESCRIPTION)
    except display.BadName as exc:
        raise InvalidInput(str(exc)) from None


def create_list(db: Connection, name: str, description: str = "") -> ListInfo:
    name = _list_name(name)
    description = _description(description)
    with transaction(db):
        added = db.execute(
            "INSERT INTO lists(name, description, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
            (name, description, time.time()),
        ).fetchall()
    if not added:
        raise AlreadyExists(f"list {name!r} already exists — pick another name")
    return get_list(db, name)


def get_list(db: Connection, name: str) -> ListInfo:
    row = db.execute(f"{_LIST_SELECT} WHERE l.name = ?", (name,)).fetchone()
    if row is None:
        raise NotFound(f"no list named {name!r} — see `smtpplus lists ls`")
    return ListInfo(*row)


def all_lists(db: Connection) -> list[ListInfo]:
    return [ListInfo(*row) for row in db.execute(f"{_LIST_SELECT} ORDER BY l.name")]


def edit_list(db: Connection, name: str, *, description: str | None = None, new_name: str | None = None) -> ListInfo:
    current = get_list(db, name)
    if description is not None:
        description = _description(description)
    if new_name is not None and new_name.strip():
        new_name = _list_name(new_name)
    taken = AlreadyExists(f"list {new_name!r} already exists — pick another name")
    try:
        with transaction(db):
            if description is not None:
                db.execute("UPDATE lists SET description = ? WHERE id = ?", (description, current.id))
            if new_name is not None and new_name.strip() and new_name.strip() != current.name:
                # Asked first, not caught: after a failed statement PostgreSQL refuses the
                # rest of the transaction, so an outer one could not go on.
                if db.execute("SELECT 1 FROM lists WHERE name = ? AND id <> ?", (new_name.strip(), current.id)).fetchone():
                    raise taken
                db.execute("UPDATE lists SET name = ? WHERE id = ?", (new_name.strip(), current.id))
    except Conflict:  # another process took the name meanwhile (translated by the outermost transaction)
        raise taken from None
    return get_list(db, new_name.strip() if new_name and new_name.strip() else current.name)


def delete_list(db: Connection, name: str) -> None:
    """Deletes the list, its users and members. Queued mail stays and is delivered."""
    current = get_list(db, name)
    with transaction(db):
        db.execute("DELETE FROM lists WHERE id = ?", (current.id,))


def import_members(db: Connection, list_name: str, members: Iterable[tuple[str, str]]) -> tuple[int, int]:
    """Add (address, name) pairs; returns (added, already there). Addresses are
    validated first, so a bad row fails the whole import with its line named."""
    current = get_list(db, list_name)
    rows: list[tuple[int, str, str, float]] = []
    now = time.time()
    for line_no, (address, name) in enumerate(members, start=1):
        try:
            canonical = policy.normalize_address(address)
            member_name = display.check_name(name, "member name", display.MAX_MEMBER_NAME)
        except (policy.PolicyError, display.BadName) as exc:
            raise InvalidInput(f"row {line_no}: {exc}") from None
        rows.append((current.id, canonical, member_name, now))
    with transaction(db):
        added = 0
        for row in rows:  # one at a time: rowcount says whether this one was new
            added += db.execute(
                "INSERT INTO list_members(list_id, address, name, added_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                row,
            ).rowcount
    return added, len(rows) - added


@dataclass(frozen=True, slots=True)
class MemberImport:
    added: int
    already: int  # on the list before
    repeated: int  # rows of the input whose address came earlier in it


_IMPORT_BATCH = 5000


def import_member_stream(db: Connection, list_name: str, members: Iterable[tuple[str, str]]) -> MemberImport:
    """Add (canonical address, name) pairs read one at a time — a million-row file in
    constant memory. The rows go to a temporary table first (its own file: the store's
    write lock is not held while the file is read), repeats ignored, the first name
    kept; then one short transaction adds them to the list. Anything ``members`` raises
    (a bad row) leaves the list as it was."""
    current = get_list(db, list_name)
    # ``n`` keeps the file's order (SQLite and PostgreSQL alike; no rowid).
    db.execute("CREATE TEMP TABLE IF NOT EXISTS member_import(address TEXT PRIMARY KEY, name TEXT NOT NULL, n INTEGER NOT NULL)")
    fill = "INSERT INTO member_import(address, name, n) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
    try:
        total = 0
        batch: list[tuple[str, str, int]] = []
        with transaction(db, immediate=False):  # writes only the temporary table
            db.execute("DELETE FROM member_import")
            for address, name in members:
                batch.append((address, name, total))
                total += 1
                if len(batch) >= _IMPORT_BATCH:
                    db.executemany(fill, batch)
                    batch.clear()
            db.executemany(fill, batch)
        distinct = int(db.execute("SELECT count(*) FROM member_import").fetchone()[0])
        with transaction(db):
            added = db.execute(
                "INSERT INTO list_members(list_id, address, name, added_at) "
                "SELECT ?, address, name, ? FROM member_import ORDER BY n ON CONFLICT DO NOTHING",
                (current.id, time.time()),
            ).rowcount
    finally:
        db.execute("DROP TABLE IF EXISTS member_import")
    return MemberImport(added, distinct - added, total - distinct)


def list_members(db: Connection, list_name: str, *, after: str = "", limit: int = 1000) -> list[tuple[str, str]]:
    """One page of members in address order (``after`` is the last address seen)."""
    # The list's id only: get_list also counts every member, which a pager must not
    # pay per page (a million members: a thousand pages).
    found = db.execute("SELECT id FROM lists WHERE name = ?", (list_name,)).fetchone()
    if found is None:
        raise NotFound(f"no list named {list_name!r} — see `smtpplus lists ls`")
    rows = db.execute(
        "SELECT address, name FROM list_members WHERE list_id = ? AND address > ? ORDER BY address LIMIT ?",
        (found[0], after, limit),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


# ---------------------------------------------------------------------------
# Identities


_IDENTITY_COLUMNS = "id, kind, value, state, method, reason, verified_at, dns_token, created_at"


def _identity_kind(value: str) -> str:
    return "address" if "@" in value else "domain"


def ensure_identity(db: Connection, value: str) -> int:
    """The id of an identity (canonical address or domain), created pending if new."""
    db.execute(
        "INSERT INTO identities(kind, value, dns_token, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (_identity_kind(value), value, secrets.token_hex(16), time.time()),
    )
    row = db.execute("SELECT id FROM identities WHERE value = ?", (value,)).fetchone()
    return int(row[0])


def get_identity(db: Connection, value: str) -> IdentityInfo:
    canonical = canonical_identity(value)
    row = db.execute(f"SELECT {_IDENTITY_COLUMNS} FROM identities WHERE value = ?", (canonical,)).fetchone()
    if row is None:
        raise NotFound(f"no sender identity {value!r} — add it to a user's domains or senders first")
    return IdentityInfo(*row)


def canonical_identity(value: str) -> str:
    value = value.strip()
    try:
        return policy.normalize_address(value) if "@" in value else policy.normalize_domain(value)
    except policy.PolicyError as exc:
        raise InvalidInput(str(exc)) from None


def all_identities(db: Connection, *, state: str | None = None) -> list[IdentityInfo]:
    if state is None:
        rows = db.execute(f"SELECT {_IDENTITY_COLUMNS} FROM identities ORDER BY value").fetchall()
    else:
        rows = db.execute(
            f"SELECT {_IDENTITY_COLUMNS} FROM identities WHERE state = ? ORDER BY value", (state,)
        ).fetchall()
    return [IdentityInfo(*r) for r in rows]


def identity_states(db: Connection, values: Iterable[str]) -> dict[str, str]:
    """value -> state ('pending' | 'verified') of those of ``values`` that are identities."""
    wanted = list(values)
    if not wanted:
        return {}
    marks = ", ".join("?" * len(wanted))
    rows = db.execute(f"SELECT value, state FROM identities WHERE value IN ({marks})", wanted).fetchall()
    return {r[0]: r[1] for r in rows}


def identity_users(db: Connection, identity_id: int) -> list[str]:
    rows = db.execute(
        "SELECT u.username FROM user_identities ui JOIN users u ON u.id = ui.user_id "
        "WHERE ui.identity_id = ? ORDER BY u.username",
        (identity_id,),
    ).fetchall()
    return [r[0] for r in rows]


def mark_verified(db: Connection, identity_id: int, method: str, reason: str | None = None) -> bool:
    """Verify one identity. Only the three methods (code, dns, manual) exist; returns
    False when it was already verified (left as it was)."""
    if method not in {"code", "dns", "manual"}:
        raise InvalidInput(f"unknown verification method {method!r}")
    with transaction(db):
        cur = db.execute(
            "UPDATE identities SET state = 'verified', method = ?, reason = ?, verified_at = ? "
            "WHERE id = ? AND state = 'pending'",
            (method, reason, time.time(), identity_id),
        )
        if cur.rowcount:
            # Users listing it may now send: invalidate their cached authorizations.
            db.execute(
                "UPDATE users SET auth_version = auth_version + 1 "
                "WHERE id IN (SELECT user_id FROM user_identities WHERE identity_id = ?)",
                (identity_id,),
            )
    return bool(cur.rowcount)


def approve_identities(db: Connection, values: Iterable[str], reason: str) -> list[tuple[IdentityInfo, bool]]:
    """An operator's manual approval of one or many identities, with a reason.
    All names are checked before anything changes. Returns (identity, changed)."""
    reason = reason.strip()
    if not reason:
        raise InvalidInput('approval needs a reason — add --reason "…" (e.g. "existing account")')
    found = [get_identity(db, v) for v in values]
    out: list[tuple[IdentityInfo, bool]] = []
    with transaction(db):
        for identity in found:
            changed = mark_verified(db, identity.id, "manual", reason)
            out.append((get_identity(db, identity.value), changed))
    return out


# ---------------------------------------------------------------------------
# Users


_USER_SELECT = (
    "SELECT u.id, u.list_id, l.name, u.username, u.active, u.priority, u.note, u.created_at, u.updated_at "
    "FROM users u JOIN lists l ON l.id = u.list_id"
)


def _user_identities(db: Connection, user_id: int) -> tuple[IdentityInfo, ...]:
    rows = db.execute(
        f"SELECT {', '.join('i.' + c.strip() for c in _IDENTITY_COLUMNS.split(','))} "
        "FROM user_identities ui JOIN identities i ON i.id = ui.identity_id "
        "WHERE ui.user_id = ? ORDER BY i.kind DESC, i.value",
        (user_id,),
    ).fetchall()
    return tuple(IdentityInfo(*r) for r in rows)


def _user_from_row(db: Connection, row: Row) -> UserInfo:
    return UserInfo(
        id=row[0],
        list_id=row[1],
        list_name=row[2],
        username=row[3],
        active=bool(row[4]),
        priority=row[5],
        note=row[6],
        created_at=row[7],
        updated_at=row[8],
        identities=_user_identities(db, row[0]),
    )


def get_user(db: Connection, username: str) -> UserInfo:
    row = db.execute(f"{_USER_SELECT} WHERE u.username = ?", (username,)).fetchone()
    if row is None:
        raise NotFound(f"no relay user {username!r} — see `smtpplus users ls`")
    return _user_from_row(db, row)


def all_users(db: Connection, list_name: str | None = None) -> list[UserInfo]:
    if list_name is None:
        rows = db.execute(f"{_USER_SELECT} ORDER BY u.username").fetchall()
    else:
        current = get_list(db, list_name)
        rows = db.execute(f"{_USER_SELECT} WHERE u.list_id = ? ORDER BY u.username", (current.id,)).fetchall()
    return [_user_from_row(db, r) for r in rows]


def _set_identities(db: Connection, user_id: int, kind: str, values: list[str]) -> None:
    db.execute(
        "DELETE FROM user_identities WHERE user_id = ? AND identity_id IN "
        "(SELECT id FROM identities WHERE kind = ?)",
        (user_id, kind),
    )
    for value in values:
        identity_id = ensure_identity(db, value)
        db.execute(
            "INSERT INTO user_identities(user_id, identity_id) VALUES (?, ?) ON CONFLICT DO NOTHING", (user_id, identity_id)
        )


def _checked_fields(
    priority: int | None, note: str | None, domains: list[str] | None, senders: list[str] | None
) -> tuple[int | None, str | None, list[str] | None, list[str] | None]:
    """Validate user fields before they reach the table's CHECK constraints, so a bad
    value is reported as such (not as a duplicate user) and identities are canonical."""
    try:
        return (
            None if priority is None else validate_priority(priority),
            None if note is None else policy.validate_note(note),
            None if domains is None else list(dict.fromkeys(policy.normalize_domain(d) for d in domains)),
            None if senders is None else list(dict.fromkeys(policy.normalize_address(a) for a in senders)),
        )
    except (policy.PolicyError, PriorityError) as exc:
        raise InvalidInput(str(exc)) from None


def create_user(
    db: Connection,
    *,
    list_name: str,
    password_hash: str,
    username: str | None = None,
    priority: int = 3,
    note: str = "",
    domains: list[str] | None = None,
    senders: list[str] | None = None,
    active: bool = False,
) -> UserInfo:
    """Create a relay user. ``domains`` and ``senders`` must already be canonical
    (see :func:`relay.policy.parse_domains` / ``parse_senders``)."""
    if not password_hash.startswith("$argon2id$"):
        raise InvalidInput("refusing to store a password that is not an argon2id hash")
    checked_priority, checked_note, domains, senders = _checked_fields(priority, note, domains, senders)
    priority, note = checked_priority or 3, checked_note or ""
    with transaction(db):
        current = get_list(db, list_name)
        if username is None:
            taken = [r[0] for r in db.execute("SELECT username FROM users WHERE username LIKE ?", (policy.list_slug(current.name) + "-%",))]
            username = policy.generated_username(current.name, taken)
        else:
            try:
                username = policy.validate_username(username)
            except policy.PolicyError as exc:
                raise InvalidInput(str(exc)) from None
        now = time.time()
        added = db.execute(
            "INSERT INTO users(list_id, username, password_hash, active, priority, note, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
            (current.id, username, password_hash, int(active), priority, note, now, now),
        ).fetchall()
        if not added:
            raise AlreadyExists(f"user {username!r} already exists — pick another username")
        user_id = int(added[0][0])
        _set_identities(db, user_id, "domain", domains or [])
        _set_identities(db, user_id, "address", senders or [])
    return get_user(db, username)


def edit_user(
    db: Connection,
    username: str,
    *,
    priority: int | None = None,
    note: str | None = None,
    domains: list[str] | None = None,
    senders: list[str] | None = None,
) -> UserInfo:
    priority, note, domains, senders = _checked_fields(priority, note, domains, senders)
    with transaction(db):
        user = get_user(db, username)
        if priority is not None:
            db.execute("UPDATE users SET priority = ? WHERE id = ?", (priority, user.id))
        if note is not None:
            db.execute("UPDATE users SET note = ? WHERE id = ?", (note, user.id))
        if domains is not None:
            _set_identities(db, user.id, "domain", domains)
        if senders is not None:
            _set_identities(db, user.id, "address", senders)
        _touch(db, user.id)
    return get_user(db, username)


def set_active(db: Connection, username: str, active: bool) -> UserInfo:
    with transaction(db):
        user = get_user(db, username)
        db.execute("UPDATE users SET active = ? WHERE id = ?", (int(active), user.id))
        _touch(db, user.id)
    return get_user(db, username)


def set_password_hash(db: Connection, username: str, password_hash: str) -> None:
    if not password_hash.startswith("$argon2id$"):
        raise InvalidInput("refusing to store a password that is not an argon2id hash")
    with transaction(db):
        user = get_user(db, username)
        db.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user.id))
        _touch(db, user.id)


def delete_user(db: Connection, username: str) -> None:
    """Delete a user. Its queued mail stays (messages keep the name) and is delivered."""
    with transaction(db):
        user = get_user(db, username)
        db.execute("DELETE FROM users WHERE id = ?", (user.id,))


def _touch(db: Connection, user_id: int) -> None:
    # auth_version invalidates cached password checks in every process.
    db.execute(
        "UPDATE users SET updated_at = ?, auth_version = auth_version + 1 WHERE id = ?", (time.time(), user_id)
    )


def auth_record(db: Connection, username: str) -> AuthRecord | None:
    row = db.execute(
        "SELECT u.id, u.username, u.password_hash, u.active, u.auth_version, u.priority, u.list_id, l.name "
        "FROM users u JOIN lists l ON l.id = u.list_id WHERE u.username = ?",
        (username,),
    ).fetchone()
    if row is None:
        return None
    senders: dict[str, str] = {}
    domains: dict[str, str] = {}
    for kind, value, state in db.execute(
        "SELECT i.kind, i.value, i.state FROM user_identities ui JOIN identities i ON i.id = ui.identity_id "
        "WHERE ui.user_id = ?",
        (row[0],),
    ):
        (senders if kind == "address" else domains)[value] = state
    return AuthRecord(
        user_id=row[0],
        username=row[1],
        password_hash=row[2],
        active=bool(row[3]),
        auth_version=row[4],
        priority=row[5],
        list_id=row[6],
        list_name=row[7],
        senders=senders,
        domains=domains,
    )


def auth_version(db: Connection, username: str) -> int | None:
    """Cheap check used to validate a cached password verification."""
    row = db.execute("SELECT auth_version FROM users WHERE username = ?", (username,)).fetchone()
    return None if row is None else int(row[0])
