"""The shared SQLite store: pragmas, migrations, directory rules, several processes."""

from __future__ import annotations

import importlib.util
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from relay import passwords
from relay.store import StoreError, StoreTooNew, backup, open_store, transaction
from relay.store import directory as d
from relay.store.intake import NewMessage, insert_messages
from relay.store.sqlite.schema import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[2]
# One real argon2id hash shared by the tests (hashing costs ~70 ms each).
HASH = passwords.hash_password("correct horse battery staple")


def _tables(db: sqlite3.Connection) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_pragmas_are_set(db: sqlite3.Connection) -> None:
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert {"lists", "list_members", "users", "identities", "user_identities", "messages"} <= _tables(db)


def test_an_older_store_is_upgraded_with_its_data_intact(store_path: Path) -> None:
    old = open_store(store_path, migrate_to=1)
    assert old.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "messages" not in _tables(old)
    d.create_list(old, "Shop", "the web shop")
    d.create_user(old, list_name="Shop", password_hash=HASH, priority=2, note="from v1", domains=["shop.example"], senders=["info@shop.example"])
    d.approve_identities(old, ["shop.example"], "existing account")
    old.close()

    db = open_store(store_path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert "messages" in _tables(db)
        user = d.get_user(db, "shop-1")
        assert (user.list_name, user.priority, user.note, user.active) == ("Shop", 2, "from v1", False)
        assert {(i.value, i.state) for i in user.identities} == {("shop.example", "verified"), ("info@shop.example", "pending")}
        assert d.auth_record(db, "shop-1").password_hash == HASH  # type: ignore[union-attr]
        assert d.get_list(db, "shop").description == "the web shop"
        # The upgraded store takes the new tables' data.
        insert_messages(db, [NewMessage(mail_from="info@shop.example", recipients=["a@b.example"], data=b"x")])
    finally:
        db.close()


def test_a_store_from_a_newer_version_is_refused(store_path: Path) -> None:
    open_store(store_path).close()
    raw = sqlite3.connect(store_path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreTooNew, match="upgrade smtpplus"):
        open_store(store_path)


def test_an_unreadable_file_is_a_store_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database, just some text" * 200)
    with pytest.raises(StoreError, match="not usable"):
        open_store(garbage)
    with pytest.raises(StoreError, match="no store at .*missing.db — check --db / \\$SMTPPLUS_DB"):
        open_store(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_only_an_explicit_request_creates_the_store_directory(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "store.db"
    with pytest.raises(StoreError, match=f"directory {deep.parent} does not exist"):
        open_store(deep)
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is not a directory"):
        open_store(tmp_path / "file" / "store.db")
    open_store(deep, create_parent=True).close()
    assert deep.is_file()


# ---------------------------------------------------------------------------
# Several processes at once


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


WRITER = """
    import sys, time
    from relay.store import open_store
    from relay.store import directory as d
    path, tag, other, count, hash_ = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
    db = open_store(path)
    for i in range(count):
        if i == count // 2:
            # Halfway, wait for the other writer's first row: their runs must overlap.
            while not db.execute("SELECT 1 FROM lists WHERE name = ?", (f"{other}-0",)).fetchone():
                time.sleep(0.002)
        d.create_list(db, f"{tag}-{i}")
        d.create_user(db, list_name="shared", password_hash=hash_)  # generated name: contended
        d.create_user(db, list_name=f"{tag}-{i}", password_hash=hash_, username=f"{tag}-user-{i}")
    print("done")
"""


def test_two_processes_writing_at_once_lose_nothing(store_path: Path) -> None:
    db = open_store(store_path)
    d.create_list(db, "shared")
    count = 60
    writers = [_spawn(WRITER, str(store_path), tag, other, str(count), HASH) for tag, other in (("p1", "p2"), ("p2", "p1"))]
    for w in writers:
        out, err = w.communicate(timeout=60)
        assert w.returncode == 0 and out.strip() == "done", err
    assert len(d.all_lists(db)) == 1 + 2 * count
    names = [u.username for u in d.all_users(db)]
    assert len(names) == len(set(names)) == 4 * count
    # The two writers really overlapped in time...
    spans = [
        db.execute("SELECT min(created_at), max(created_at) FROM lists WHERE name LIKE ?", (f"{tag}-%",)).fetchone()
        for tag in ("p1", "p2")
    ]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1]
    # ...and generated names stayed unique and gap-free under contention.
    assert sorted(u.username for u in d.all_users(db, "shared")) == sorted(f"shared-{n}" for n in range(1, 2 * count + 1))
    db.close()


BUSY_WRITER = """
    import sys
    from pathlib import Path
    from relay.store import open_store, transaction
    from relay.store import directory as d
    path, stop, hash_ = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    db = open_store(path)
    i = 0
    while not stop.exists():
        with transaction(db):  # a list and its user in one transaction
            d.create_list(db, f"busy-{i}", "x" * 500)
            d.create_user(db, list_name=f"busy-{i}", password_hash=hash_)
        i += 1
    print(i)
"""


def test_backup_while_another_process_writes_is_consistent(store_path: Path, tmp_path: Path) -> None:
    db = open_store(store_path)
    with transaction(db):
        # Over 1024 pages (~5 MB): a chunked copy restarts on every commit of the
        # writer and never finished; the copy must be taken from one snapshot.
        for i in range(2500):
            d.create_list(db, f"seed-{i}", "y" * 2000)
    assert db.execute("PRAGMA page_count").fetchone()[0] > 1024
    stop = tmp_path / "stop"
    writer = _spawn(BUSY_WRITER, str(store_path), str(stop), HASH)
    try:
        while db.execute("SELECT count(*) FROM lists WHERE name LIKE 'busy-%'").fetchone()[0] < 20:
            assert writer.poll() is None, writer.stderr.read() if writer.stderr else ""
            time.sleep(0.02)
        copies = [tmp_path / f"copy-{n}.db" for n in range(3)]
        for copy in copies:
            copier = threading.Thread(target=backup, args=(db, copy), daemon=True)
            copier.start()
            copier.join(timeout=20)
            assert not copier.is_alive(), "backup did not finish while another process was writing"
    finally:
        stop.touch()
        out, err = writer.communicate(timeout=30)
    assert writer.returncode == 0, err
    total_written = int(out)
    for copy in copies:
        raw = sqlite3.connect(copy)
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        busy = raw.execute("SELECT count(*) FROM lists WHERE name LIKE 'busy-%'").fetchone()[0]
        # Each busy list was written with its user in one transaction: never one without the other.
        assert busy == raw.execute("SELECT count(*) FROM users").fetchone()[0]
        assert 20 <= busy <= total_written
        assert raw.execute("SELECT count(*) FROM lists WHERE name LIKE 'seed-%'").fetchone()[0] == 2500
        raw.close()
        reopened = open_store(copy, create=False)
        assert len(d.all_users(reopened)) == busy
        reopened.close()
    db.close()


def test_a_postgresql_location_without_its_backend_is_one_line_naming_it() -> None:
    from relay.store import StoreUnavailable
    from relay.store.backend import backend_for

    if importlib.util.find_spec("relay.store.postgres") is not None:
        assert backend_for("postgresql://smtpplus@db.example/smtpplus").name == "postgresql"
        return
    with pytest.raises(StoreUnavailable) as refused:
        open_store("postgresql://smtpplus:s3cret@db.example/smtpplus")
    message = str(refused.value)
    assert "PostgreSQL backend is not available" in message and "\n" not in message
    assert "s3cret" not in message and "postgresql://smtpplus:***@db.example/smtpplus" in message
    with pytest.raises(StoreUnavailable, match="mysql:// is no kind of store"):
        open_store("mysql://db.example/smtpplus")
    assert backend_for("relative/path.db").name == "sqlite"


def test_a_failed_commit_leaves_no_open_transaction_behind(store_path: Path) -> None:
    # A deferred constraint fails at COMMIT, and SQLite keeps the transaction open: the
    # next transaction must not join it (its writes would never be committed).
    db = open_store(store_path)
    other = open_store(store_path, create=False)
    try:
        db.execute("CREATE TABLE scratch_parent(id INTEGER PRIMARY KEY)")
        db.execute("CREATE TABLE scratch_child(n INTEGER REFERENCES scratch_parent(id) DEFERRABLE INITIALLY DEFERRED)")
        with pytest.raises(StoreError), transaction(db):
            db.execute("INSERT INTO scratch_child(n) VALUES (42)")
        assert not db.in_transaction
        with transaction(db):
            db.execute("INSERT INTO scratch_parent(id) VALUES (7)")
        assert [r[0] for r in other.execute("SELECT id FROM scratch_parent")] == [7]
    finally:
        db.close()
        other.close()
