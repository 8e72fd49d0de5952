"""The SQLite schema: the DDL of each version of :data:`relay.store.migrations.VERSIONS`.
The version lives in ``PRAGMA user_version``.

Each entry of ``MIGRATIONS`` upgrades the store from version ``i`` to ``i + 1``.
Append new steps (and their :class:`relay.store.migrations.Version`); never edit a
step that has shipped. Times are UTC unix seconds (REAL).

Mail is never deleted by deleting a user or a list: ``messages`` keeps the list and
user names as text, and its foreign keys are ``ON DELETE SET NULL``.
"""

from __future__ import annotations

import sqlite3

from relay.store.connection import Connection
from relay.store.migrations import VERSIONS

V1_DIRECTORY = """
CREATE TABLE lists (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE COLLATE NOCASE,
    description TEXT NOT NULL DEFAULT '',
    created_at  REAL NOT NULL
);

CREATE TABLE list_members (
    list_id  INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    address  TEXT NOT NULL,
    name     TEXT NOT NULL DEFAULT '',
    added_at REAL NOT NULL,
    PRIMARY KEY (list_id, address)
) WITHOUT ROWID;

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    list_id       INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    active        INTEGER NOT NULL DEFAULT 0 CHECK (active IN (0, 1)),
    priority      INTEGER NOT NULL DEFAULT 3 CHECK (priority BETWEEN 1 AND 5),
    note          TEXT NOT NULL DEFAULT '',
    -- Bumped on every change that must invalidate cached password checks
    -- (reset, edit, activation, deactivation), in any process.
    auth_version  INTEGER NOT NULL DEFAULT 1,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE INDEX users_list ON users(list_id);

-- A sender identity: an address or a domain. Verification belongs to the identity
-- and is shared by every user that lists it.
CREATE TABLE identities (
    id          INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('address', 'domain')),
    value       TEXT NOT NULL UNIQUE,
    state       TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'verified')),
    method      TEXT CHECK (method IN ('code', 'dns', 'manual')),
    reason      TEXT,
    verified_at REAL,
    dns_token   TEXT NOT NULL,
    created_at  REAL NOT NULL,
    CHECK ((state = 'verified') = (method IS NOT NULL AND verified_at IS NOT NULL))
);

CREATE TABLE user_identities (
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE RESTRICT,
    PRIMARY KEY (user_id, identity_id)
) WITHOUT ROWID;
CREATE INDEX user_identities_identity ON user_identities(identity_id);

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Every decision: auth, refusals, queued, delivery attempts, campaign changes.
-- Names are kept as text so events outlive deleted users and lists.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY,
    at         REAL NOT NULL,
    kind       TEXT NOT NULL,
    reason     TEXT NOT NULL,
    username   TEXT,
    list_id    INTEGER,
    client     TEXT,
    port       INTEGER,
    message_id INTEGER,
    queue_id   TEXT,
    detail     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_at ON events(at);
CREATE INDEX events_message ON events(message_id) WHERE message_id IS NOT NULL;
CREATE INDEX events_list_at ON events(list_id, at) WHERE list_id IS NOT NULL;
"""

V2_QUEUE = """
CREATE TABLE messages (
    id              INTEGER PRIMARY KEY,
    queue_id        TEXT NOT NULL UNIQUE,
    list_id         INTEGER REFERENCES lists(id) ON DELETE SET NULL,
    list_name       TEXT,
    user_id         INTEGER REFERENCES users(id) ON DELETE SET NULL,
    username        TEXT,
    origin          TEXT NOT NULL CHECK (origin IN ('smtp', 'campaign', 'system')),
    campaign_id     INTEGER,
    mail_from       TEXT NOT NULL,
    header_from     TEXT NOT NULL DEFAULT '',
    subject         TEXT NOT NULL DEFAULT '',
    size            INTEGER NOT NULL,
    header_priority INTEGER NOT NULL CHECK (header_priority BETWEEN 1 AND 5),
    user_priority   INTEGER NOT NULL CHECK (user_priority BETWEEN 1 AND 5),
    priority        INTEGER NOT NULL CHECK (priority BETWEEN 1 AND 5),
    state           TEXT NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'sending', 'deferred', 'sent', 'failed', 'held')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    lease_owner     TEXT,
    lease_until     REAL,
    last_reply      TEXT,
    client          TEXT,
    port            INTEGER,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    finished_at     REAL
);
-- The dispatch index: the next message is one seek.
CREATE INDEX messages_dispatch ON messages(state, priority, id);
CREATE INDEX messages_list_created ON messages(list_id, created_at);
CREATE INDEX messages_campaign ON messages(campaign_id) WHERE campaign_id IS NOT NULL;
CREATE INDEX messages_finished ON messages(finished_at) WHERE finished_at IS NOT NULL;
-- Deferred messages become ready when next_attempt_at passes: one range scan finds them.
CREATE INDEX messages_deferred_due ON messages(next_attempt_at) WHERE state = 'deferred';
-- Campaign progress and "anything left?" without walking the campaign's sent mail.
CREATE INDEX messages_campaign_state ON messages(campaign_id, state) WHERE campaign_id IS NOT NULL;

-- Bodies apart, so queue scans stay small.
CREATE TABLE message_bodies (
    message_id INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    data       BLOB NOT NULL
);

CREATE TABLE recipients (
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    address    TEXT NOT NULL,
    state      TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'sent', 'deferred', 'failed')),
    last_reply TEXT,
    PRIMARY KEY (message_id, address)
) WITHOUT ROWID;

CREATE TABLE campaigns (
    id            INTEGER PRIMARY KEY,
    list_id       INTEGER REFERENCES lists(id) ON DELETE SET NULL,
    list_name     TEXT NOT NULL,
    subject       TEXT NOT NULL DEFAULT '',
    mail_from     TEXT NOT NULL,
    body          BLOB NOT NULL,
    priority      INTEGER NOT NULL DEFAULT 3 CHECK (priority BETWEEN 1 AND 5),
    state         TEXT NOT NULL DEFAULT 'scheduled'
                  CHECK (state IN ('scheduled', 'sending', 'paused', 'done', 'cancelled')),
    paused_reason TEXT,
    scheduled_at  REAL NOT NULL,
    expand_cursor TEXT,
    expanded      INTEGER NOT NULL DEFAULT 0,
    expand_done   INTEGER NOT NULL DEFAULT 0 CHECK (expand_done IN (0, 1)),
    total         INTEGER,
    created_at    REAL NOT NULL,
    finished_at   REAL
);

-- Single-use codes mailed to an address identity; only the hash is kept.
CREATE TABLE verification_codes (
    identity_id INTEGER PRIMARY KEY REFERENCES identities(id) ON DELETE CASCADE,
    code_hash   TEXT NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    used_at     REAL
);

-- Per-list daily counts of events already pruned by retention, so list statistics
-- keep their totals (kind is an EventKind value; day is the local date YYYY-MM-DD).
CREATE TABLE list_stats_archive (
    list_id INTEGER NOT NULL,
    day     TEXT NOT NULL,
    kind    TEXT NOT NULL,
    count   INTEGER NOT NULL,
    PRIMARY KEY (list_id, day, kind)
) WITHOUT ROWID;

-- Ports the live relay serves or could not serve, with the reason.
CREATE TABLE relay_ports (
    port   INTEGER PRIMARY KEY,
    served INTEGER NOT NULL CHECK (served IN (0, 1)),
    reason TEXT
);
"""

# What a submitting client declared about its message (RFC 4954 AUTH=, RFC 1870 SIZE=,
# RFC 6152 BODY=, RFC 6531 SMTPUTF8, RFC 3461 DSN parameters), kept so delivery can
# pass them on and bounces can honour them. NULL = not declared (today's behaviour).
V3_ENVELOPE_PARAMETERS = """
ALTER TABLE messages ADD COLUMN mail_auth TEXT;
ALTER TABLE messages ADD COLUMN body_type TEXT CHECK (body_type IN ('7BIT', '8BITMIME'));
ALTER TABLE messages ADD COLUMN smtputf8 INTEGER NOT NULL DEFAULT 0 CHECK (smtputf8 IN (0, 1));
ALTER TABLE messages ADD COLUMN size_declared INTEGER;
ALTER TABLE messages ADD COLUMN dsn_ret TEXT CHECK (dsn_ret IN ('FULL', 'HDRS'));
ALTER TABLE messages ADD COLUMN dsn_envid TEXT;
ALTER TABLE recipients ADD COLUMN dsn_notify TEXT;
ALTER TABLE recipients ADD COLUMN dsn_orcpt TEXT;
"""

# Counts kept in the transaction of every change to ``messages`` (intake, claims,
# outcomes, queue operations, campaigns, pruning), so the console, ``queue status``
# and metrics read a few rows instead of counting an index of a million entries.
# Triggers cover every writer without touching it; ``smtpplus store recount``
# recomputes them (relay/store/counts.py). Every (state, priority) pair has a row,
# so the triggers only ever UPDATE. The active states are spelled out with OR, not
# ``state IN (…4 values…)``: in a trigger that IN list builds an ephemeral table on
# every firing (measured: 110 µs per accepted message, against 3 µs with OR).
V4_COUNTS = """
CREATE TABLE queue_counts (
    state    TEXT NOT NULL,
    priority INTEGER NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (state, priority)
) WITHOUT ROWID;
INSERT INTO queue_counts(state, priority, n)
SELECT s.column1, p.column1,
       (SELECT count(*) FROM messages m WHERE m.state = s.column1 AND m.priority = p.column1)
FROM (VALUES ('queued'), ('sending'), ('deferred'), ('sent'), ('failed'), ('held')) AS s,
     (VALUES (1), (2), (3), (4), (5)) AS p;

-- Messages still the relay's business (queued, deferred, sending, held) per list.
CREATE TABLE list_queue_counts (
    list_id INTEGER PRIMARY KEY,
    n       INTEGER NOT NULL
);
INSERT INTO list_queue_counts(list_id, n)
SELECT list_id, count(*) FROM messages
WHERE list_id IS NOT NULL AND state IN ('queued', 'deferred', 'sending', 'held')
GROUP BY list_id;

CREATE TRIGGER queue_counts_insert AFTER INSERT ON messages BEGIN
    UPDATE queue_counts SET n = n + 1 WHERE state = NEW.state AND priority = NEW.priority;
END;
CREATE TRIGGER queue_counts_delete AFTER DELETE ON messages BEGIN
    UPDATE queue_counts SET n = n - 1 WHERE state = OLD.state AND priority = OLD.priority;
END;
CREATE TRIGGER queue_counts_update AFTER UPDATE OF state, priority ON messages
WHEN OLD.state IS NOT NEW.state OR OLD.priority IS NOT NEW.priority BEGIN
    UPDATE queue_counts SET n = n - 1 WHERE state = OLD.state AND priority = OLD.priority;
    UPDATE queue_counts SET n = n + 1 WHERE state = NEW.state AND priority = NEW.priority;
END;

CREATE TRIGGER list_queue_counts_insert AFTER INSERT ON messages
WHEN NEW.list_id IS NOT NULL
 AND (NEW.state = 'queued' OR NEW.state = 'deferred' OR NEW.state = 'sending' OR NEW.state = 'held') BEGIN
    INSERT INTO list_queue_counts(list_id, n) VALUES (NEW.list_id, 1)
    ON CONFLICT(list_id) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER list_queue_counts_delete AFTER DELETE ON messages
WHEN OLD.list_id IS NOT NULL
 AND (OLD.state = 'queued' OR OLD.state = 'deferred' OR OLD.state = 'sending' OR OLD.state = 'held') BEGIN
    UPDATE list_queue_counts SET n = n - 1 WHERE list_id = OLD.list_id;
END;
-- Claims (queued -> sending) and retries stay inside the counted states: no work.
-- A deleted list sets list_id to NULL through its foreign key, which fires this too.
CREATE TRIGGER list_queue_counts_update AFTER UPDATE OF state, list_id ON messages
WHEN OLD.list_id IS NOT NEW.list_id
  OR (OLD.state = 'queued' OR OLD.state = 'deferred' OR OLD.state = 'sending' OR OLD.state = 'held')
     IS NOT (NEW.state = 'queued' OR NEW.state = 'deferred' OR NEW.state = 'sending' OR NEW.state = 'held')
BEGIN
    UPDATE list_queue_counts SET n = n - 1
    WHERE list_id = OLD.list_id
      AND (OLD.state = 'queued' OR OLD.state = 'deferred' OR OLD.state = 'sending' OR OLD.state = 'held');
    INSERT INTO list_queue_counts(list_id, n)
    SELECT NEW.list_id, 1
    WHERE NEW.list_id IS NOT NULL
      AND (NEW.state = 'queued' OR NEW.state = 'deferred' OR NEW.state = 'sending' OR NEW.state = 'held')
    ON CONFLICT(list_id) DO UPDATE SET n = n + 1;
END;
"""

# Bulk-sender rules (RFC 8058 one-click unsubscribe, a suppression list). Per list: the
# List-Unsubscribe https URL template (with ``{token}``) and mailto address. A
# subscription row exists for every member a campaign message was made for (its id is
# in the unsubscribe token, so the token carries no address) or who unsubscribed.
# Suppressed addresses are canonical (relay.policy.check_address); campaigns skip them.
V5_BULK_SENDER = """
ALTER TABLE lists ADD COLUMN unsubscribe_url TEXT;
ALTER TABLE lists ADD COLUMN unsubscribe_mailto TEXT;
ALTER TABLE campaigns ADD COLUMN skipped INTEGER NOT NULL DEFAULT 0;
CREATE TABLE subscriptions (
    id              INTEGER PRIMARY KEY,
    list_id         INTEGER NOT NULL REFERENCES lists(id) ON DELETE CASCADE,
    address         TEXT NOT NULL,
    unsubscribed_at REAL,
    UNIQUE (list_id, address)
);
CREATE INDEX subscriptions_unsubscribed ON subscriptions(list_id) WHERE unsubscribed_at IS NOT NULL;
CREATE TABLE suppressions (
    address    TEXT PRIMARY KEY,
    reason     TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);
"""

# DKIM signing keys (relay/dkim.py): the private key is PKCS#8 PEM text, so the store
# is a secret (it is created with mode 0600). At most one active key per domain; a
# rotated key stays (active = 0, retired_at set) until an operator removes it.
V6_DKIM_KEYS = """
CREATE TABLE dkim_keys (
    domain      TEXT NOT NULL,
    selector    TEXT NOT NULL,
    algorithm   TEXT NOT NULL CHECK (algorithm IN ('rsa-2048', 'ed25519')),
    private_key TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    active      INTEGER NOT NULL CHECK (active IN (0, 1)),
    created_at  REAL NOT NULL,
    retired_at  REAL,
    PRIMARY KEY (domain, selector),
    CHECK ((active = 1) = (retired_at IS NULL))
);
CREATE UNIQUE INDEX dkim_keys_one_active ON dkim_keys(domain) WHERE active = 1;
"""

# Delivery to the internet (issue 14): each recipient's domain (its destination; a
# generated column, so no writer changes and nothing is stored: the claim can pass over
# messages whose destinations cannot take mail now; PostgreSQL: split_part, STORED),
# the operator's transport map (``routes``) and the engine's per-destination state
# (``destinations``: in flight, last reply, backing off until) for ``queue destinations``.
V7_DESTINATIONS = """
ALTER TABLE recipients ADD COLUMN domain TEXT GENERATED ALWAYS AS (lower(substr(address, instr(address, '@') + 1))) VIRTUAL;
CREATE TABLE routes (
    domain     TEXT PRIMARY KEY,
    host       TEXT NOT NULL,
    port       INTEGER NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE destinations (
    domain        TEXT PRIMARY KEY,
    in_flight     INTEGER NOT NULL DEFAULT 0,
    last_reply    TEXT,
    last_at       REAL,
    backoff_until REAL,
    failures      INTEGER NOT NULL DEFAULT 0,
    updated_at    REAL NOT NULL
);
"""

# recipients.domain is the text after the LAST "@" (a quoted local part may hold one:
# "a@b"@c.test goes to c.test), ASCII lower case, "" without an "@" — what the engine's
# relay.delivery.destinations.recipient_domain says. SQLite has no "last position of",
# so: rtrim(address, <every character but "@">) is the address up to its last "@".
# PostgreSQL (STORED): CASE WHEN strpos(address, '@') = 0 THEN '' ELSE
# translate(regexp_replace(address, '^.*@', ''), 'ABCDEFGHIJKLMNOPQRSTUVWXYZ',
# 'abcdefghijklmnopqrstuvwxyz') END.
V8_RECIPIENT_DOMAIN = """
ALTER TABLE recipients DROP COLUMN domain;
ALTER TABLE recipients ADD COLUMN domain TEXT GENERATED ALWAYS AS (CASE WHEN instr(address, '@') = 0 THEN '' ELSE lower(substr(address, length(rtrim(address, replace(address, '@', ''))) + 1)) END) VIRTUAL;
"""

# Counts in shards (PostgreSQL, where several relays write at once: each writing
# connection its own rows). SQLite has one writer at a time: its counts keep one row
# per key — readers sum per key on both backends, so the same reads work on either —
# and this step only keeps the version numbers one list.
V9_COUNT_SHARDS = """
SELECT 1;
"""

# PostgreSQL's step tunes its autovacuum for the messages table. SQLite has nothing to
# tune: a changed row's index entries are replaced in place, none is left for a claim
# to step over.
V10_VACUUM_MESSAGES = """
-- Nothing to do on SQLite (PostgreSQL: autovacuum settings of messages).
"""

# PostgreSQL's step makes its round cheaper (an index of the leases, the list count's
# trigger). SQLite needs none of it: its reclaim reads only live index entries (a
# changed row's entries are replaced in place), and its count triggers are its own (V4).
V11_CHEAPER_ROUND = """
-- Nothing to do on SQLite (PostgreSQL: an index of the leases, the list count's trigger).
"""

# PostgreSQL's step leaves in-flight messages out of its dispatch index (its planner
# walked their dead entries for the reclaim). SQLite's planner picks its index by the
# query's terms, and SQLite removes a changed row's old entry at once: nothing to do.
V12_DISPATCH_WITHOUT_LEASES = """
-- Nothing to do on SQLite (PostgreSQL: in-flight messages out of the dispatch index).
"""

# A rotation stages its new key (relay/store/dkim.py): inactive and never retired until
# it is activated, once its DNS record is published. The old CHECK tied "inactive" to
# "retired": SQLite changes a CHECK only by building the table anew.
V13_PENDING_DKIM_KEYS = """
CREATE TABLE dkim_keys_v13 (
    domain      TEXT NOT NULL,
    selector    TEXT NOT NULL,
    algorithm   TEXT NOT NULL CHECK (algorithm IN ('rsa-2048', 'ed25519')),
    private_key TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    active      INTEGER NOT NULL CHECK (active IN (0, 1)),
    created_at  REAL NOT NULL,
    retired_at  REAL,
    PRIMARY KEY (domain, selector),
    CHECK (active = 0 OR retired_at IS NULL)
);
INSERT INTO dkim_keys_v13 SELECT domain, selector, algorithm, private_key, public_key, active, created_at, retired_at
    FROM dkim_keys;
DROP TABLE dkim_keys;
ALTER TABLE dkim_keys_v13 RENAME TO dkim_keys;
CREATE UNIQUE INDEX dkim_keys_one_active ON dkim_keys(domain) WHERE active = 1;
CREATE UNIQUE INDEX dkim_keys_one_pending ON dkim_keys(domain) WHERE active = 0 AND retired_at IS NULL;
"""

MIGRATIONS: list[str] = [
    V1_DIRECTORY, V2_QUEUE, V3_ENVELOPE_PARAMETERS, V4_COUNTS, V5_BULK_SENDER, V6_DKIM_KEYS, V7_DESTINATIONS,
    V8_RECIPIENT_DOMAIN, V9_COUNT_SHARDS, V10_VACUUM_MESSAGES, V11_CHEAPER_ROUND, V12_DISPATCH_WITHOUT_LEASES,
    V13_PENDING_DKIM_KEYS,
]
SCHEMA_VERSION = len(MIGRATIONS)


def current_version(db: Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: Connection, target: int | None = None) -> int:
    """Bring the store to ``target`` (default: this code's version); returns it."""
    from relay.store.errors import StoreTooNew

    goal = SCHEMA_VERSION if target is None else target
    version = current_version(db)
    if version > SCHEMA_VERSION:
        raise StoreTooNew(
            f"store was written by a newer smtpplus (schema {version}, this one knows up to "
            f"{SCHEMA_VERSION}) — upgrade smtpplus to use it"
        )
    if version >= goal:
        return version
    db.execute("BEGIN IMMEDIATE")
    try:
        # Re-read under the write lock: another process may have migrated meanwhile.
        version = current_version(db)
        for step in range(version, goal):
            for statement in _statements(MIGRATIONS[step]):
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {step + 1}")
        db.execute("COMMIT")
    except BaseException:
        # SQLite rolls back by itself on some errors (SQLITE_FULL, IOERR): a second
        # ROLLBACK would fail with "no transaction is active" and hide the real error.
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return max(version, goal)


def _statements(script: str) -> list[str]:
    # executescript() would COMMIT our transaction; split on complete statements instead.
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


assert len(MIGRATIONS) == len(VERSIONS), "relay/store/migrations.py lists a version this schema lacks"
