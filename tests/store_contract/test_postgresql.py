"""What only the PostgreSQL backend has to show: the schema made on open (once, when
two open at once), the SQLite dialect it answers, the maintained counts in PL/pgSQL,
a password never shown, and the store's own errors when the server is busy or gone."""

from __future__ import annotations

import asyncio
import mmap
import threading
import time
from typing import Any

import psycopg
import pytest

from relay.reasons import Reason
from relay.store.backend import backend_for
from relay.store.errors import StoreBusy, StoreError, StoreTooNew, StoreUnavailable
from relay.store.postgres import schema
from relay.store.postgres.bridge import PgAsyncStore, close_pool
from relay.store.postgres.changes import NotifyFeed
from relay.store.postgres.connection import open_store, to_numbered, to_pyformat, transaction
from relay.store.postgres.location import masked, normalize
from relay.store.settings import get_setting, set_setting
from tests.pg import Cluster

SECRET = "s3cret-Pw"


def _tables(db: Any) -> set[str]:
    rows = db.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()").fetchall()
    return {row["tablename"] for row in rows}


def test_an_empty_database_gets_the_schema_on_open(pg_cluster: Cluster) -> None:
    url = pg_cluster.new_database(template=None)
    try:
        with pytest.raises(StoreError, match="no smtpplus schema"):
            open_store(url, create=False)  # a read-only command never creates one
        db = open_store(url)
        try:
            assert schema.current_version(db.raw) == schema.SCHEMA_VERSION
            assert {"lists", "users", "messages", "events", "settings", "queue_counts"} <= _tables(db)
            set_setting(db, "contract.x", [1])
            assert get_setting(db, "contract.x") == [1]
        finally:
            db.close()
    finally:
        pg_cluster.drop_database(url)


def test_two_opens_at_once_migrate_once(pg_cluster: Cluster) -> None:
    url = pg_cluster.new_database(template=None)
    start = threading.Barrier(3)
    opened: list[Any] = []
    failed: list[BaseException] = []

    def open_one() -> None:
        start.wait()
        try:
            opened.append(open_store(url))
        except BaseException as exc:  # reported below
            failed.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert failed == []
        db = opened[0]
        # A second run of any step would have failed ("already exists"); the counts
        # were seeded once, and each table has one change trigger.
        assert db.execute("SELECT count(*) FROM queue_counts").fetchone()[0] == 30
        per_table = db.execute(
            "SELECT count(*) AS n FROM pg_trigger WHERE tgname = 'smtpplus_notify' GROUP BY tgrelid"
        ).fetchall()
        assert per_table and {row["n"] for row in per_table} == {1}
    finally:
        for db in opened:
            db.close()
        pg_cluster.drop_database(url)


def test_the_schema_versions_match_sqlites() -> None:
    from relay.store.sqlite import schema as sqlite_schema

    assert len(schema.MIGRATIONS) == len(sqlite_schema.MIGRATIONS), "a SQLite migration needs its PostgreSQL twin"
    names = [name for name, value in vars(schema).items() if name.startswith("V") and value in schema.MIGRATIONS]
    sqlite_names = [name for name, value in vars(sqlite_schema).items() if name.startswith("V") and value in sqlite_schema.MIGRATIONS]
    assert names == sqlite_names


def test_a_store_from_a_newer_smtpplus_is_refused(pg_url: str) -> None:
    db = open_store(pg_url)
    db.execute("UPDATE smtpplus_schema SET version = ?", (schema.SCHEMA_VERSION + 1,))
    db.close()
    with pytest.raises(StoreTooNew, match="upgrade smtpplus"):
        open_store(pg_url)


def test_it_answers_the_sqlite_dialect(pg_url: str) -> None:
    db = open_store(pg_url)
    try:
        assert db.dialect == "postgresql"
        row = db.execute("SELECT '?' AS q, 'a%b' AS pct, ? AS v, ? AS flag -- what? 100%", (7, True)).fetchone()
        assert (row["q"], row["pct"], row["v"], row["flag"]) == ("?", "a%b", 7, 1)
        assert (row[0], row["Q"], row.keys()) == ("?", "?", ["q", "pct", "v", "flag"])
        assert to_pyformat("x = ? AND y LIKE 'a?%' AND z = '%'") == "x = %s AND y LIKE 'a?%%' AND z = '%%'"
        with transaction(db):
            new_id = db.execute(
                "INSERT INTO lists(name, created_at) VALUES (?, ?) RETURNING id", ("Friends", 1.5)
            ).fetchone()["id"]
            with transaction(db):  # nested: joins the outer one
                db.execute("INSERT INTO settings(key, value) VALUES (?, ?)", ("k", "1"))
        # Names compare as SQLite's NOCASE column does.
        assert db.execute("SELECT id FROM lists WHERE name = ?", ("FRIENDS",)).fetchone()[0] == new_id
        assert db.execute("SELECT sum(n) FROM queue_counts").fetchone()[0] == 0  # an int, not a Decimal
        assert isinstance(db.execute("SELECT created_at FROM lists").fetchone()[0], float)
        db.execute("BEGIN IMMEDIATE")  # SQLite's lock mode is a plain BEGIN here
        assert db.in_transaction
        db.execute("COMMIT")
    finally:
        db.close()


def test_the_maintained_counts_follow_every_change(pg_url: str) -> None:
    db = open_store(pg_url)
    try:
        list_id = db.execute("INSERT INTO lists(name, created_at) VALUES ('a', 0) RETURNING id").fetchone()[0]

        def add(state: str, priority: int) -> int:
            return int(db.execute(
                "INSERT INTO messages(queue_id, list_id, origin, mail_from, size, header_priority, user_priority, "
                "priority, state, next_attempt_at, created_at, updated_at) "
                "VALUES (?, ?, 'smtp', 'a@b.example', 1, 3, 3, ?, ?, 0, 0, 0) RETURNING id",
                (f"q{time.monotonic_ns()}", list_id, priority, state),
            ).fetchone()[0])

        def counts() -> tuple[dict[tuple[str, int], int], dict[int, int]]:
            states = {(r[0], r[1]): r[2] for r in db.execute(
                "SELECT state, priority, sum(n) FROM queue_counts GROUP BY state, priority HAVING sum(n) <> 0"
            )}
            lists = {r[0]: r[1] for r in db.execute(
                "SELECT list_id, sum(n) FROM list_queue_counts GROUP BY list_id HAVING sum(n) <> 0"
            )}
            return states, lists

        first, second = add("queued", 1), add("queued", 3)
        add("sent", 3)
        assert counts() == ({("queued", 1): 1, ("queued", 3): 1, ("sent", 3): 1}, {list_id: 2})
        db.execute("UPDATE messages SET state = 'sending' WHERE id = ?", (first,))  # a claim: still counted
        db.execute("UPDATE messages SET state = 'sent', priority = 2 WHERE id = ?", (second,))
        assert counts() == ({("sending", 1): 1, ("sent", 2): 1, ("sent", 3): 1}, {list_id: 1})
        db.execute("DELETE FROM lists WHERE id = ?", (list_id,))  # ON DELETE SET NULL fires the trigger
        assert counts()[1] == {}
        db.execute("DELETE FROM messages")
        assert counts() == ({}, {})
    finally:
        db.close()


def test_a_held_row_lock_is_store_busy(pg_url: str) -> None:
    holder, waiter = open_store(pg_url), open_store(pg_url)
    try:
        set_setting(holder, "contract.row", 1)
        waiter.execute("SET lock_timeout = '100ms'")  # the store's own is 10 s
        with transaction(holder):
            set_setting(holder, "contract.row", 2)
            with pytest.raises(StoreBusy, match="busy"):
                set_setting(waiter, "contract.row", 3)
    finally:
        holder.close()
        waiter.close()


def test_the_password_is_masked_wherever_the_location_is_shown(pg_cluster: Cluster) -> None:
    url = pg_cluster.url("postgres", password=SECRET)
    assert SECRET not in masked(url) and "smtpplus:***@" in masked(url)
    assert SECRET not in masked(url.replace(f":{SECRET}@", "@") + f"?password={SECRET}")
    assert normalize("postgresql:/u@h/db") == "postgresql://u@h/db"  # what pathlib.Path makes of a URL
    nowhere = f"postgresql://smtpplus:{SECRET}@127.0.0.1:{pg_cluster.port}/no_such_database"
    with pytest.raises(StoreError) as caught:
        open_store(nowhere, create=False)
    assert SECRET not in str(caught.value) and "***" in str(caught.value)
    db = open_store(pg_cluster.new_database().replace("smtpplus@", f"smtpplus:{SECRET}@"))
    try:
        assert SECRET not in repr(db)
    finally:
        db.close()


async def test_a_stopped_server_is_store_unavailable_and_stores_come_back(own_cluster: Cluster) -> None:
    url = own_cluster.url("postgres", password=SECRET)
    db = open_store(url)
    feed = NotifyFeed(db)
    assert feed.changed() is True and feed.listening
    store = await backend_for(url).async_store(url).open()
    try:
        assert await store.run(get_setting, "contract.x", 5) == 5
        await asyncio.to_thread(own_cluster.halt, "fast")

        with pytest.raises(StoreUnavailable) as caught:
            get_setting(db, "contract.x")
        assert SECRET not in str(caught.value) and "\n" not in str(caught.value)
        with pytest.raises(StoreUnavailable):
            await store.run(get_setting, "contract.x")
        # Each later call needs a connection the pool cannot make: it says so within
        # the outage bound (OUTAGE_WAIT, 3 s; a wide margin here), never after the
        # 30 s a busy pool is waited for. So does a store opened meanwhile.
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="PostgreSQL server is running"):
                await store.run(get_setting, "contract.x")
            assert time.monotonic() - started < 10
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="PostgreSQL server is running"):
            await PgAsyncStore(url).open()
        assert time.monotonic() - started < 10
        with pytest.raises(StoreUnavailable, match="PostgreSQL server is running"):
            open_store(url)
        assert feed.changed() is True  # cannot listen: the reader looks for itself
        assert not feed.listening

        with pytest.raises(StoreUnavailable), transaction(db):  # a unit of work on a dropped connection
            set_setting(db, "contract.x", 0)

        await asyncio.to_thread(own_cluster.restart)
        # The plain connection replaces its dropped one at its next statement.
        set_setting(db, "contract.x", 7)
        assert get_setting(db, "contract.x") == 7
        # The async store takes a fresh connection: nothing to do for its callers.
        await store.run(set_setting, "contract.x", 6)
        assert await store.run(get_setting, "contract.x") == 6
        # The feed listens again (within its reconnect interval) and sees commits.
        assert await asyncio.to_thread(feed.wait, 30) is True
        deadline = time.monotonic() + 30
        while not feed.listening and time.monotonic() < deadline:
            await asyncio.to_thread(feed.wait, 0.2)
        assert feed.listening
    finally:
        await store.close()
        db.close()
        close_pool(url)


def test_a_dropped_listener_falls_back_and_reconnects(pg_url: str) -> None:
    db, other = open_store(pg_url), open_store(pg_url)
    try:
        feed = NotifyFeed(db)
        assert feed.changed() is True and feed.listening
        assert feed.changed() is False
        other.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'smtpplus-listen'")
        assert feed.changed() is True  # the listener is gone: something may have been missed
        set_setting(other, "contract.poke", 1)
        assert feed.wait(30) is True
        deadline = time.monotonic() + 30
        while not feed.listening and time.monotonic() < deadline:
            feed.wait(0.2)
        assert feed.listening
        while feed.changed():  # drain what the reconnect reported
            pass
        set_setting(other, "contract.poke", 2)
        assert feed.changed() is True
        set_setting(db, "contract.mine", 1)
        assert feed.changed() is False
    finally:
        db.close()
        other.close()


async def test_the_engines_feed_falls_back_when_its_listener_drops_and_listens_again(pg_url: str) -> None:
    # The delivery engine's feed (async, on the event loop): the twin of the test above.
    from relay.store.postgres.changes import AsyncNotifyFeed

    other = open_store(pg_url)
    store = await PgAsyncStore(pg_url).open()
    try:
        feed = AsyncNotifyFeed(store)
        assert await feed.changed() is True and feed.listening
        assert await feed.changed() is False
        other.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'smtpplus-listen'")
        assert await feed.changed() is True  # the listener is gone: something may have been missed
        await asyncio.to_thread(set_setting, other, "contract.poke", 1)
        assert await feed.wait(30) is True
        deadline = time.monotonic() + 30
        while not feed.listening and time.monotonic() < deadline:
            await feed.wait(0.2)
        assert feed.listening
        while await feed.changed():  # drain what the reconnect reported
            pass
        await asyncio.to_thread(set_setting, other, "contract.poke", 2)
        assert await feed.changed() is True
        await store.run(set_setting, "contract.mine", 1)
        assert await feed.changed() is False
        await feed.close()
    finally:
        await store.close()
        other.close()


def test_the_cli_takes_a_postgresql_url_and_never_shows_its_password(pg_url: str, cli: Any) -> None:
    url = pg_url.replace("smtpplus@", f"smtpplus:{SECRET}@")
    cli.env["SMTPPLUS_DB"] = url
    created = cli("lists", "add", "friends", check=True)
    assert "Created list 'friends'" in created.stdout
    # --db keeps a URL as text (never through pathlib, which would drop a slash).
    cli.env["SMTPPLUS_DB"] = "/nonexistent/dir/smtpplus.db"
    rate = cli("queue", "rate", "--db", url, check=True)
    assert rate.stdout.strip() == "rate: unlimited"
    backup = cli("store", "backup", "/tmp/never-written.db", "--db", url)
    assert backup.returncode == 1
    assert backup.stderr.count("\n") == 1 and "use pg_dump" in backup.stderr and "PGPASSWORD" in backup.stderr
    # A command to paste: the URL without its password (pg_dump would take *** for it).
    assert f"pg_dump -Fc -f /tmp/never-written.db {pg_url}\n" in backup.stderr and "***" not in backup.stderr
    recount = cli("store", "recount", "--db", url, check=True)
    assert "smtpplus:***@" in recount.stdout and "nothing to fix" in recount.stdout
    db = open_store(pg_url)
    try:
        assert db.execute("SELECT name FROM lists").fetchall() == [("friends",)]
    finally:
        db.close()
    for proc in (created, rate, backup, recount):
        assert SECRET not in proc.stdout + proc.stderr


async def test_the_pool_caps_a_process_connections(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from relay.store.postgres import bridge

    monkeypatch.setattr(bridge, "_pool_size", 2)
    monkeypatch.setattr(bridge, "POOL_WAIT", 0.5)
    from pathlib import Path

    from relay.store import AsyncStore

    # Whoever makes AsyncStore(location) of a PostgreSQL store gets the pooled bridge,
    # also from a URL that went through pathlib.Path (click.Path does that to --db).
    first, second = AsyncStore(pg_url), AsyncStore(Path(pg_url))
    assert isinstance(first, PgAsyncStore) and isinstance(second, PgAsyncStore) and second.url == pg_url
    await first.open()
    await second.open()
    try:
        with pytest.raises(StoreUnavailable, match="raise store_pool_size"):
            await PgAsyncStore(pg_url).open()
        await second.close()
        third = await PgAsyncStore(pg_url).open()  # the connection given back is taken again
        assert await third.run(get_setting, "contract.none", 1) == 1
        await third.close()
    finally:
        await first.close()
        await second.close()


async def test_a_busy_pool_is_waited_for_beyond_the_outage_bound(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connection in use, the server up: a store waits for one to come back
    (up to POOL_WAIT) — longer than an outage is given (OUTAGE_WAIT) — and gets it."""
    from relay.store.postgres import bridge

    monkeypatch.setattr(bridge, "_pool_size", 1)
    holder = await PgAsyncStore(pg_url).open()
    waiting = asyncio.ensure_future(PgAsyncStore(pg_url).open())
    try:
        await asyncio.sleep(bridge.OUTAGE_WAIT + 1.5)  # past the outage bound, well inside POOL_WAIT
        assert not waiting.done(), waiting.exception()  # still waiting: no "unavailable"
        await holder.close()
        second = await asyncio.wait_for(waiting, 20)
        assert await second.run(get_setting, "contract.none", 1) == 1
        await second.close()
    finally:
        await holder.close()
        if not waiting.done():
            waiting.cancel()
        close_pool(pg_url)


def test_a_bulk_load_with_its_own_ids_leaves_the_next_ids_free(pg_url: str) -> None:
    from relay.store.postgres import dialect

    db = open_store(pg_url)
    try:
        with dialect.bulk_load(db), transaction(db):
            db.executemany("INSERT INTO events(id, at, kind, reason) VALUES (?, 0, 'k', 'r')", [(i,) for i in range(1, 6)])
        new_id = db.execute("INSERT INTO events(at, kind, reason) VALUES (0, 'k', 'r') RETURNING id").fetchone()[0]
        assert new_id == 6
        assert dialect.skip_locked() == " FOR UPDATE SKIP LOCKED"
        db.execute(
            "INSERT INTO messages(id, queue_id, origin, mail_from, size, header_priority, user_priority, priority, "
            "next_attempt_at, created_at, updated_at) VALUES (1, 'q', 'smtp', 'a@b', 4, 3, 3, 3, 0, 0, 0)"
        )
        with mmap.mmap(-1, 4) as body:  # a spooled message body, as intake hands it over
            body.write(b"body")
            dialect.write_body(db, 1, body)
        assert db.execute("SELECT data FROM message_bodies").fetchone()[0] == b"body"
    finally:
        db.close()


def test_each_relay_holds_an_advisory_lock_on_its_own_id(pg_url: str) -> None:
    from relay.store.backend import backend_of
    from relay.store.postgres.relays import PgMemberLock
    from relay.store.relays import beat

    db = open_store(pg_url)
    first, again, second = PgMemberLock(pg_url), PgMemberLock(pg_url), PgMemberLock(pg_url)
    backend = backend_of(db)
    try:
        assert backend.lock_state(db).held is False
        first.acquire({"owner": "a" * 32})
        beat(db, "a" * 32, {"pid": 4242, "host": "a.example", "listen_host": "0.0.0.0"})
        state = backend.lock_state(db)
        assert first.held and state.held is True
        assert (state.facts["pid"], state.facts["host"], state.facts["owner"]) == (4242, "a.example", "a" * 32)
        with pytest.raises(StoreError, match="relay id a{32} is in use by another live relay"):
            again.acquire({"owner": "a" * 32})  # the same id twice: never a fresh relay
        assert not again.held
        second.acquire({"owner": "b" * 32})  # another relay on the same store: welcome
        beat(db, "b" * 32, {"pid": 4343, "host": "b.example"})
        assert backend.lock_state(db).facts["relays"] == 2
        # The server lets go the instant the holder's connection ends (its process died).
        assert first._conn is not None
        db.execute("SELECT pg_terminate_backend(?)", (first._conn.info.backend_pid,))
        deadline = time.monotonic() + 30
        while backend.lock_state(db).facts.get("relays") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert backend.lock_state(db).facts["pid"] == 4343
        again.acquire({"owner": "a" * 32})  # its id is free again
        assert again.held
    finally:
        first.release()
        again.release()
        second.release()
        db.close()


def test_data_version_changes_when_another_connection_commits(pg_url: str) -> None:
    from relay.store.postgres import dialect

    db, other = open_store(pg_url), open_store(pg_url)
    try:
        first = dialect.data_version(db)
        assert dialect.data_version(db) == first
        set_setting(db, "contract.mine", 1)  # its own commit is no change
        assert dialect.data_version(db) == first
        set_setting(other, "contract.theirs", 1)
        second = dialect.data_version(db)
        assert second != first and dialect.data_version(db) == second
    finally:
        db.close()
        other.close()


def test_a_recipients_domain_is_computed_as_on_sqlite(pg_url: str) -> None:
    db = open_store(pg_url)
    try:
        db.execute(
            "INSERT INTO messages(id, queue_id, origin, mail_from, size, header_priority, user_priority, priority, "
            "next_attempt_at, created_at, updated_at) VALUES (1, 'q', 'smtp', 'a@b', 1, 3, 3, 3, 0, 0, 0)"
        )
        addresses = [("Ann@Example.COM",), ('"x@y"@Dest.example',), ("postmaster",), ("b@Ünï.example",)]
        db.executemany("INSERT INTO recipients(message_id, address) VALUES (1, ?)", addresses)
        domains = {row["address"]: row["domain"] for row in db.execute("SELECT address, domain FROM recipients")}
        # After the LAST '@', ASCII lower case (as SQLite's column and the engine say), '' without one.
        assert domains == {"Ann@Example.COM": "example.com", '"x@y"@Dest.example': "dest.example", "postmaster": "", "b@Ünï.example": "Ünï.example"}
    finally:
        db.close()


def _message_row(db: Any, list_id: int | None = None, state: str = "queued") -> int:
    return int(db.execute(
        "INSERT INTO messages(queue_id, list_id, origin, mail_from, size, header_priority, user_priority, "
        "priority, state, next_attempt_at, created_at, updated_at) "
        "VALUES (?, ?, 'smtp', 'a@b.example', 1, 3, 3, 3, ?, 0, 0, 0) RETURNING id",
        (f"q{time.monotonic_ns()}", list_id, state),
    ).fetchone()[0])


def test_two_connections_count_without_waiting_for_each_other(pg_url: str) -> None:
    # Each writing connection counts in its own shard: a transaction that has queued a
    # message (and so changed the counts) does not hold up another connection's.
    from relay.store import counts

    first, second = open_store(pg_url), open_store(pg_url)
    try:
        list_id = first.execute("INSERT INTO lists(name, created_at) VALUES ('a', 0) RETURNING id").fetchone()[0]
        second.execute("SET lock_timeout = '3s'")  # waiting on the first's rows would be StoreBusy
        with transaction(first):
            _message_row(first, list_id)
            with transaction(second):
                _message_row(second, list_id)
                second.execute("UPDATE messages SET state = 'sending' WHERE list_id = ? AND state = 'queued'", (list_id,))
        shards = first.execute("SELECT count(DISTINCT shard) FROM queue_counts WHERE n <> 0").fetchone()[0]
        assert shards == 2
        assert counts.state_counts(first)[("queued", 3)] == 1 and counts.state_counts(first)[("sending", 3)] == 1
        assert counts.list_queued(first) == {list_id: 2}
        assert counts.differences(first) == []
    finally:
        first.close()
        second.close()


def test_counts_stay_right_with_writes_from_several_connections_at_once(pg_url: str) -> None:
    from relay.store import counts

    setup = open_store(pg_url)
    list_id = setup.execute("INSERT INTO lists(name, created_at) VALUES ('a', 0) RETURNING id").fetchone()[0]
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        db = open_store(pg_url)
        try:
            for i in range(40):
                with transaction(db):
                    ids = [_message_row(db, list_id if i % 2 else None) for _ in range(3)]
                    db.execute("UPDATE messages SET state = 'sending' WHERE id = ?", (ids[0],))
                    db.execute("UPDATE messages SET state = 'sent' WHERE id = ?", (ids[1],))
                    if n % 2:
                        db.execute("DELETE FROM messages WHERE id = ?", (ids[2],))
        except BaseException as exc:  # reported below: a thread's failure must fail the test
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert counts.differences(setup) == []
        total = sum(counts.state_counts(setup).values())
        assert total == setup.execute("SELECT count(*) FROM messages").fetchone()[0] == 4 * 40 * 3 - 2 * 40
        assert setup.execute("SELECT count(DISTINCT shard) FROM queue_counts WHERE n <> 0").fetchone()[0] >= 2
        assert counts.recount(setup) == []
    finally:
        setup.close()


def _listener(pg_url: str) -> Any:
    import psycopg

    conn = psycopg.connect(normalize(pg_url), autocommit=True)
    conn.execute(f"LISTEN {schema.NOTIFY_CHANNEL}")
    return conn


def _heard(listener: Any) -> list[int]:
    listener.execute("SELECT 1")  # what was sent before this has arrived
    return [n.pid for n in listener.notifies(timeout=0)]


def test_a_writing_commit_is_announced_once_after_it(pg_url: str) -> None:
    # The adapter announces its own commits (outside the writing transaction, whose
    # COMMIT then takes no notify lock); a write by any other client (psql) is
    # announced by the tables' trigger as before.
    import psycopg

    listener = _listener(pg_url)
    db = open_store(pg_url)
    try:
        with transaction(db):
            db.execute("INSERT INTO settings(key, value) VALUES ('a', '1')")
            db.execute("INSERT INTO settings(key, value) VALUES ('b', '1')")
            assert _heard(listener) == []  # nothing before the COMMIT
        assert _heard(listener) == [db.backend_pid]
        db.execute("UPDATE settings SET value = '2' WHERE key = 'a'")  # a write outside a transaction
        assert _heard(listener) == [db.backend_pid]
        with transaction(db):
            db.execute("SELECT * FROM settings").fetchall()
            db.execute("UPDATE settings SET value = '3' WHERE key = 'nothing-here'")
        db.execute("DELETE FROM settings WHERE key = 'nothing-here'")
        assert _heard(listener) == []  # nothing changed: nothing to tell
        with pytest.raises(RuntimeError), transaction(db):
            db.execute("INSERT INTO settings(key, value) VALUES ('c', '1')")
            raise RuntimeError("rolled back")
        assert _heard(listener) == []
        assert db.notified == 2
        with psycopg.connect(normalize(pg_url), autocommit=True) as other:  # not our adapter: the trigger tells
            other.execute("INSERT INTO settings(key, value) VALUES ('d', '1')")
            assert _heard(listener) == [other.info.backend_pid]
    finally:
        db.close()
        listener.close()


def _round_trips(db: Any, action: Any) -> tuple[Any, list[str]]:
    """``action()``'s result and the queries it sent, from libpq's own trace of the
    protocol: a simple query (Query) or an extended one (its Sync) is one round trip."""
    import tempfile

    from psycopg import pq

    with tempfile.TemporaryFile("w+") as trace:
        db.raw.pgconn.trace(trace.fileno())
        db.raw.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            result = action()
        finally:
            db.raw.pgconn.untrace()
        trace.seek(0)
        sent = [line.split("\t") for line in trace.read().splitlines()]
    return result, [f[3].strip() if f[2].startswith("Query") else "Sync" for f in sent if f[0] == "F" and f[2].split()[0] in ("Query", "Sync")]


def test_a_claim_round_is_two_round_trips_and_its_commit_does_not_wait_for_the_wal_flush(pg_url: str) -> None:
    # The engine's claim round (one message, expired leases reclaimed, due retries
    # promoted, its attempt event, COMMIT): the first batch reads the controls and
    # claims (with the body and recipients), the second records the event and
    # commits — announced inside the transaction, whose COMMIT skips the flush.
    from relay.store import queue as q
    from relay.store.bulk import queue_bulk

    listener = _listener(pg_url)
    db = open_store(pg_url)
    try:
        queue_bulk(db, 50)
        q.set_next_hop(db, "127.0.0.1:9")
        request = q.RoundRequest(owner="o", lease_seconds=60, budget=1, hop="127.0.0.1:9", reclaim_expired=True,
                                 promote_due=True, force=True, versioned=False)
        _heard(listener)
        for _ in range(3):  # the statements are prepared on first use: the same round trips after
            result, queries = _round_trips(db, lambda: q.dispatch_round(db, request))
            assert len(result.claimed) == 1 and result.claimed[0].data
            assert len(queries) == 2, queries
            assert queries[0].startswith('"BEGIN; SET LOCAL synchronous_commit = off; ')
            assert queries[-1].endswith('; COMMIT"') and "pg_notify" in queries[-1]
            assert _heard(listener) == [db.backend_pid]
        with transaction(db):  # every other transaction keeps the durable commit
            assert db.execute("SELECT current_setting('synchronous_commit')").fetchone()[0] == "on"
    finally:
        db.close()
        listener.close()


def test_a_batch_binds_values_as_the_driver_does_and_a_failed_one_rolls_back(pg_url: str) -> None:
    from relay.store.errors import Conflict
    from relay.store.postgres.connection import lease_transaction
    from relay.store.postgres.dialect import batch

    db = open_store(pg_url)
    try:
        odd = "it's 100% \\ ? $1 %s \u00e9\u4e2d \x01"
        values = [odd, None, 1.0000000000000002, -7, 2**40, 1732999999.123456]
        for _ in range(2):  # PREPAREd the first time, EXECUTEd the second
            [echo, count] = batch(db, [
                ("SELECT ?::text, ?::text, ?::float8, ?::int, ?::bigint, ?::float8, 'a ? b %'", values),
                ("SELECT count(*) FROM unnest(?::text[])", [["x", None, "y'z"]]),
            ])
            assert list(echo.rows[0]) == [*values, "a ? b %"] and count.rows[0][0] == 3
        with lease_transaction(db):
            [sync] = batch(db, [("SELECT current_setting('synchronous_commit')", [])])
            assert sync.rows[0][0] == "off"
        assert db.execute("SELECT current_setting('synchronous_commit')").fetchone()[0] == "on"
        insert = "INSERT INTO settings(key, value) VALUES (?, ?)"
        with pytest.raises(Conflict), lease_transaction(db):
            assert batch(db, [(insert, ["k1", "1"])])[0].rowcount == 1
            batch(db, [(insert, ["k2", "1"]), (insert, ["k1", "2"])], commit=True)  # a duplicate key
        assert not db.in_transaction
        assert db.execute("SELECT count(*) FROM settings WHERE key IN ('k1', 'k2')").fetchone()[0] == 0
        with lease_transaction(db):
            batch(db, [(insert, ["k1", "1"]), (insert, ["k2", "2"])], commit=True)
        assert not db.in_transaction
        assert db.execute("SELECT count(*) FROM settings WHERE key IN ('k1', 'k2')").fetchone()[0] == 2
    finally:
        db.close()


def test_batches_survive_psycopg_deallocating_every_prepared_statement(pg_url: str) -> None:
    # psycopg prepares a statement run five times, and after a ROLLBACK (or a DROP,
    # an ALTER) sends DEALLOCATE ALL: the batches' own prepared statements go too, and
    # the next batch must prepare them again rather than EXECUTE what is gone.
    from relay.store.postgres.dialect import batch

    db = open_store(pg_url)
    try:
        statement = ("SELECT count(*) FROM settings WHERE key = ?", ["x"])
        for _ in range(2):
            for _ in range(6):  # psycopg's prepare_threshold is 5
                db.execute("SELECT value FROM settings WHERE key = ?", ("x",)).fetchall()
            assert batch(db, [statement])[0].rows[0][0] == 0
            with pytest.raises(RuntimeError), transaction(db):
                db.execute("INSERT INTO settings(key, value) VALUES ('y', '1')")
                raise RuntimeError("rolled back: psycopg deallocates all")
            assert batch(db, [statement])[0].rows[0][0] == 0
    finally:
        db.close()


def _queued(db: Any, count: int, *, analyze: bool = False) -> str:
    """``count`` messages queued in bulk (statistics taken right after, with
    ``analyze``) and a next hop to claim them for: the hop."""
    from relay.store import queue as q
    from relay.store.bulk import queue_bulk

    queue_bulk(db, count)
    if analyze:
        db.execute("ANALYZE messages")
    hop = "127.0.0.1:9"
    q.set_next_hop(db, hop)
    return hop


def _claim_and_deliver(db: Any, hop: str, budget: int, *, floors: Any = None, in_flight: int = 0) -> None:
    """A round that claims ``budget`` messages, then one that records all but the last
    ``in_flight`` of them as delivered: their index entries are left behind, dead."""
    from relay.store import queue as q

    claimed = q.dispatch_round(db, q.RoundRequest(owner="o", lease_seconds=60, budget=budget, hop=hop, floors=floors)).claimed
    sent = [q.Outcome(m, "sent", Reason.DELIVERED, "250 ok") for m in claimed[: len(claimed) - in_flight]]
    q.dispatch_round(db, q.RoundRequest(owner="o", lease_seconds=60, budget=0, hop=hop, outcomes=sent))


def test_the_reclaim_of_expired_leases_reads_the_leases_index_not_every_claim_since_the_last_vacuum(pg_url: str) -> None:
    # Every claimed message leaves a dead 'sending' entry in messages_dispatch until a
    # vacuum; the reclaim (each relay's round, every few seconds) reads the leases'
    # own index (V11), from the oldest lease to now: live claims end later, so with
    # none expired it reads next to nothing, however much was delivered.
    from relay.store import queue as q

    db = open_store(pg_url)
    try:
        hop = _queued(db, 300)
        _claim_and_deliver(db, hop, 200, in_flight=10)
        db.execute("ANALYZE messages")
        now = time.time()
        sql, args = q._reclaim_statement(q._EXPIRED, (now,), now)
        with db.raw.transaction(force_rollback=True):  # EXPLAIN ANALYZE runs the update: undone
            plan = db.raw.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {to_pyformat(sql)}", args).fetchone()[0][0]
        text = str(plan)
        assert "messages_leases" in text and "messages_dispatch" not in text, plan
        assert plan["Plan"]["Actual Rows"] == 0
        assert q.reclaim_expired(db, now=now + 61) == 10  # the 10 still in flight, once their leases are over
    finally:
        db.close()


async def _eventually(check: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "not within 30 s"
        await asyncio.sleep(0.02)


async def test_a_following_feed_says_what_arrived_and_whether_it_was_new_mail_only(pg_url: str) -> None:
    # The engine's feed reads notifications as they arrive (follow): a look is no round
    # trip. A relay's group commit is announced as new mail only (intake_only): a
    # paused engine skips its look at the controls for it; any other commit is not.
    from relay.store.intake import NewMessage
    from relay.store.postgres.changes import AsyncNotifyFeed
    from relay.writer import commit_batch

    other = open_store(pg_url)
    store = await PgAsyncStore(pg_url).open()
    try:
        feed = AsyncNotifyFeed(store)
        feed.follow()
        assert await feed.changed() is True  # nothing seen yet
        await _eventually(lambda: _settled(feed))
        assert feed.listening

        mail = [NewMessage(mail_from="a@example.com", recipients=["b@example.org"], data=b"x")]
        counted = feed.other_news
        await asyncio.to_thread(commit_batch, other, mail, [])
        await _eventually(feed.changed)
        assert feed.intake_only is True
        assert feed.other_news == counted  # new mail only: the engine keeps its claim floors

        from relay.store.changes import announced_as_beat
        from relay.store.relays import beat

        def heartbeat() -> None:
            with announced_as_beat(other):
                beat(other, "relay-x", {})

        await asyncio.to_thread(heartbeat)  # a relay's heartbeat, every second: no news for the floors
        await _eventually(feed.changed)
        assert feed.intake_only is True and feed.other_news == counted

        await asyncio.to_thread(set_setting, other, "contract.poke", 1)  # not new mail
        await _eventually(feed.changed)
        assert feed.intake_only is False
        assert feed.other_news > counted  # counted as it arrived: the engine forgets its floors

        await store.run(set_setting, "contract.mine", 1)  # its own store's commits are not news
        await asyncio.sleep(0.2)
        assert await feed.changed() is False
        assert await feed.wait(0.05) is False
        await feed.close()
    finally:
        await store.close()
        other.close()


async def _settled(feed: Any) -> bool:
    """The feed listens and what its start reported is drained."""
    await asyncio.sleep(0.05)
    return bool(feed.listening) and not await feed.changed()


async def test_a_following_feed_falls_back_when_its_listener_drops_and_listens_again(pg_url: str) -> None:
    from relay.store.postgres.changes import AsyncNotifyFeed

    other = open_store(pg_url)
    store = await PgAsyncStore(pg_url).open()
    try:
        feed = AsyncNotifyFeed(store)
        feed.follow()
        await feed.changed()
        await _eventually(lambda: _settled(feed))
        other.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'smtpplus-listen'")
        await _eventually(feed.changed)  # the listener is gone: something may have been missed
        assert feed.intake_only is False
        await _eventually(lambda: _settled(feed))  # listening again (within its reconnect interval)
        await asyncio.to_thread(set_setting, other, "contract.poke", 1)
        assert await feed.wait(30) is True
        await feed.close()
    finally:
        await store.close()
        other.close()


async def test_an_idle_engine_claims_at_once_when_delivery_is_resumed(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # An idle engine on PostgreSQL sleeps until news or its next periodic duty. A
    # resume is news: the round that reads it must be followed by the claim at once —
    # not by the next duty (a full round made a minute apart here, and the look for
    # expired leases 5 s apart, so waiting for them would show as seconds).
    from pathlib import Path

    from harness.sink import CaptureSink
    from relay.delivery import engine as engine_module
    from relay.store import queue as q
    from relay.store.intake import insert_messages
    from tests.delivery.conftest import fast_config, message, point_at, running_engine

    monkeypatch.setattr(engine_module, "FULL_ROUND_EVERY", 60.0)
    db = open_store(pg_url)
    sink = CaptureSink(port=0)
    await sink.start()
    try:
        point_at(db, sink, paused=True)
        async with running_engine(Path(pg_url), fast_config(message_lease=120.0)) as engine:
            for n in (1, 2):  # the second time on an engine long idle and listening
                insert_messages(db, [message(n)])
                await asyncio.sleep(1.5)  # idle: a quiet sleep begins
                assert engine._changes.listening and len(sink.messages) == n - 1
                began = time.monotonic()
                await asyncio.to_thread(q.set_paused, db, False)
                await sink.wait_for(n, within=30)
                took = time.monotonic() - began
                assert took < 4.0, f"resume {n}: delivered {took:.1f} s later (waited for a periodic duty)"
                await asyncio.to_thread(q.set_paused, db, True)
    finally:
        await sink.stop()
        db.close()


def test_the_reclaim_reads_the_leases_index_even_when_statistics_know_only_queued_mail(pg_url: str) -> None:
    # Statistics taken while everything was queued price the dispatch index's
    # 'sending' range as empty; it holds a dead entry of every claim since the last
    # vacuum. V12 leaves in-flight mail out of that index: the reclaim has one way.
    from relay.store import queue as q

    db = open_store(pg_url)
    try:
        hop = _queued(db, 300, analyze=True)  # statistics: every message queued
        _claim_and_deliver(db, hop, 200)
        now = time.time()
        sql, args = q._reclaim_statement(q._EXPIRED, (now,), now)
        with db.raw.transaction(force_rollback=True):
            plan = db.raw.execute(f"EXPLAIN (FORMAT JSON) {to_pyformat(sql)}", args).fetchone()[0][0]
        assert "messages_leases" in str(plan) and "messages_dispatch" not in str(plan), plan
    finally:
        db.close()


def test_a_claim_from_floors_steps_over_none_of_the_dead_entries_claims_left(pg_url: str) -> None:
    # Each claimed message leaves its 'queued' entry in the dispatch index, dead,
    # until a vacuum; a claim from the front reads past all of them, a claim from the
    # engine's floors starts after them (relay.store.claim_floors). Pages read, not time.
    from relay.store import queue as q
    from relay.store.claim_floors import ClaimFloors

    db = open_store(pg_url)
    try:
        hop = _queued(db, 6000)
        floors = ClaimFloors(lag=0.0, step=0.0, check=3600.0)
        for _ in range(5):  # 1,000 of the 1,200 of priority 1 claimed and delivered, their entries left behind
            _claim_and_deliver(db, hop, 200, floors=floors)
        # One more claim: it confirms the floors past the last big one (a floor is an id
        # a later claim went past again: relay.store.claim_floors).
        q.dispatch_round(db, q.RoundRequest(owner="o", lease_seconds=60, budget=1, hop=hop, floors=floors))
        request = q.RoundRequest(owner="o", lease_seconds=60, budget=1, hop=hop)
        now = time.time()
        start = floors.floors(time.monotonic())
        assert start, "the floors are set"

        def pages(floor: dict[int, int] | None) -> int:
            # The plan the engine's prepared statement runs (a generic plan, planned
            # once: PgConnection.batch), not one planned for these values.
            sql, args = q._claim_statement(db, request, 1, now, floors=floor)
            with db.raw.transaction(force_rollback=True):
                db.raw.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                db.raw.execute(f"PREPARE measured AS {to_numbered(sql)}")
                marks = ", ".join(["%s"] * len(args))
                literal = psycopg.ClientCursor(db.raw)  # values as literals: EXECUTE's arguments need types
                plan = literal.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE measured({marks})", args).fetchone()[0][0]
                db.raw.execute("DEALLOCATE measured")
            return _index_pages(plan["Plan"], "messages_dispatch")

        from_front, from_floors = pages(None), pages(start)
        # Measured 3 against 11–35 (the claims before marked the dead entries they
        # passed, which a walk then skips inside each page).
        assert from_floors <= 6 and from_front >= 2 * from_floors + 4, (from_floors, from_front)
    finally:
        db.close()


def _index_pages(node: dict[str, Any], index: str) -> int:
    """Pages read by the plan's scans of ``index`` (an EXPLAIN (ANALYZE, BUFFERS) tree)."""
    own = int(node.get("Shared Hit Blocks", 0)) + int(node.get("Shared Read Blocks", 0)) if node.get("Index Name") == index else 0
    return own + sum(_index_pages(child, index) for child in node.get("Plans", []))


def test_a_claim_from_floors_takes_mail_committed_out_of_id_order_however_late_it_comes(pg_url: str) -> None:
    # Two writers: x takes its id first, y commits first and is claimed; x commits just
    # after. However long until the next claim (a busy engine), the floor past y is not
    # used before a later claim has looked again from the floor before it — and that
    # look finds x (relay.store.claim_floors).
    from relay.store import queue as q
    from relay.store.claim_floors import ClaimFloors
    from relay.store.intake import insert_messages
    from tests.delivery.conftest import message

    db, other = open_store(pg_url), open_store(pg_url)
    try:
        hop = "127.0.0.1:9"
        q.set_next_hop(db, hop)
        floors = ClaimFloors(lag=0.2, step=0.0, check=3600.0)

        def claim() -> list[int]:
            request = q.RoundRequest(owner="o", lease_seconds=60, budget=1, hop=hop, force=True, floors=floors)
            return [c.id for c in q.dispatch_round(db, request).claimed]

        with transaction(other):
            [x] = insert_messages(other, [message(0, priority=3)])
            y, z = insert_messages(db, [message(1, priority=3), message(2, priority=4)])
            assert claim() == [y.message_id]
        time.sleep(0.3)  # longer than the lag, no claim in between
        assert claim() == [x.message_id]
        assert claim() == [z.message_id]
    finally:
        db.close()
        other.close()


async def test_a_delivering_engine_claims_from_floors_while_relays_beat(pg_url: str) -> None:
    # The engine forgets its claim floors on news that is not only new mail; a relay's
    # heartbeat, every second, is announced as a beat and is not such news — before
    # it was, every engine forgot its floors each second and never claimed from one.
    import threading
    from pathlib import Path

    from harness.sink import CaptureSink
    from relay.store import queue as q
    from relay.store.changes import announced_as_beat
    from relay.store.intake import insert_messages
    from relay.store.relays import beat
    from tests.delivery.conftest import fast_config, message, point_at, running_engine

    db, beating = open_store(pg_url), open_store(pg_url)
    sink = CaptureSink(port=0)
    await sink.start()
    stop = threading.Event()

    def heartbeats() -> None:
        while not stop.wait(0.2):
            with announced_as_beat(beating):
                beat(beating, "relay-beating", {})

    beats = threading.Thread(target=heartbeats, daemon=True)
    try:
        point_at(db, sink, parallel=2, paused=True)
        # At most 200 a second: the deliveries take 3 s whatever the machine's speed
        # (unthrottled, 0.9 s on an idle one: less than the floors' second of lag).
        q.set_rate(db, 200)
        insert_messages(db, [message(n) for n in range(600)])
        beats.start()
        async with running_engine(Path(pg_url), fast_config()) as engine:
            await asyncio.to_thread(q.set_paused, db, False)
            await sink.wait_for(600, within=120)
            floors = engine._floors
        # The resume itself is news (an operator's change): one forget may come of it,
        # before or between claims; a beat every 0.2 s would make it one per beat.
        assert floors.confirmed > 0 and floors.forgotten <= 3, (floors.confirmed, floors.forgotten)
    finally:
        stop.set()
        if beats.is_alive():
            await asyncio.to_thread(beats.join, 10)  # a beat under way must end before its connection closes
        await sink.stop()
        db.close()
        beating.close()


@pytest.mark.parametrize("state", ["active", "all"])
def test_the_queue_listing_of_several_states_never_reads_every_message(pg_url: str, state: str) -> None:
    # `queue ls` (active by default, or all) and the console's queue screen: one
    # query over several states cannot walk the dispatch index in (priority, id)
    # order, and PostgreSQL read and sorted every message (127 ms with 300,000
    # queued). A page of each state, merged, reads a page of each.
    from relay.store import queue as q
    from relay.store.bulk import queue_bulk

    db = open_store(pg_url)
    try:
        queue_bulk(db, 20_000)
        q.hold(db, [r.queue_id for r in q.list_messages(db, state="queued", limit=3)])
        db.execute("ANALYZE messages")
        read = "SELECT seq_scan, coalesce(idx_tup_fetch, 0) FROM pg_stat_xact_user_tables WHERE relname = 'messages'"
        with transaction(db):
            # (The view also holds counts not yet reported from earlier work: a difference.)
            before = db.execute(read).fetchone()
            first = q.list_messages(db, state=state, limit=50)
            second = q.list_messages(db, state=state, after=first[-1].dispatch_key, limit=50)
            after = db.execute(read).fetchone()
        scans, fetched = after[0] - before[0], after[1] - before[1]
        assert scans == 0 and fetched <= 200, (scans, fetched)  # the rows shown, not the queue
        rows = first + second
        assert [r.dispatch_key for r in rows] == sorted(r.dispatch_key for r in rows) and len(rows) == 100
        assert sum(r.state == "held" for r in rows) == 3  # the held ones, in their place
    finally:
        db.close()
