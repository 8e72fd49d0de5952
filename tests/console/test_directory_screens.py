"""Lists, users and senders screens: every action on a seeded store, the password
shown once and never again, the comma error, approval with a reason."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Static

from relay import passwords
from relay.store import directory, open_store
from tests.console.conftest import press, row_keys, screen_text, wait_for


def fetch(path: Path, fn, *args):  # noqa: ANN001, ANN201 — a tiny test helper
    db = open_store(path)
    try:
        return fn(db, *args)
    finally:
        db.close()


async def open_screen(pilot, key: str, name: str) -> None:  # noqa: ANN001
    app = pilot.app
    await pilot.press(key)
    await wait_for(pilot, lambda: type(app.screen).__name__ == name and app.screen.snapshots_applied > 0)


# ---------------------------------------------------------------------------
# Users


async def test_add_user_shows_the_password_once_and_never_again(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_screen(pilot, "3", "UsersScreen")
        await pilot.press("a")
        await pilot.pause()
        form = app.screen
        assert type(form).__name__ == "UserForm"
        form.query_one("#username").value = "carol"
        await pilot.click("#domains")
        form.query_one("#domains").value = "a.example"
        await pilot.press("end", ",", "b")
        await pilot.pause()
        error = str(form.query_one("#domains-error", Static).render())
        assert "use semicolons" in error  # inline, while typing
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is form  # a comma never saves
        form.query_one("#domains").value = "a.example; B.example; a.example"
        await pilot.pause()
        assert str(form.query_one("#domains-error", Static).render()) == ""
        await press(pilot, "ctrl+s")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "PasswordOnce")
        box = app.screen
        shown = str(box.query_one("#password", Static).render()).strip()
        record = fetch(seeded_store, directory.auth_record, "carol")
        assert passwords.verify_password(record.password_hash, shown)
        assert shown in screen_text(app)
        user = fetch(seeded_store, directory.get_user, "carol")
        assert (user.active, user.domains) == (False, ["a.example", "b.example"])

        await pilot.press("c")
        assert app.clipboard == shown
        await pilot.press("escape")
        await pilot.pause()
        assert type(app.screen).__name__ == "UsersScreen"
        assert box._password is None
        assert app.clipboard == ""  # Textual's own paste buffer (ctrl+v) forgets it too
        assert shown not in screen_text(app)
        assert not any(shown in str(w.render()) for w in app.screen.query(Static))
        # Editing the user never shows a password again.
        app.screen.query_one("#users-table").select_key("carol")
        await pilot.press("e")
        await pilot.pause()
        assert type(app.screen).__name__ == "UserForm"
        assert shown not in screen_text(app)
        assert "a.example" in screen_text(app) and "pending" in screen_text(app)


async def test_reset_password_shows_a_new_one_once(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_screen(pilot, "3", "UsersScreen")
        app.screen.query_one("#users-table").select_key("bob")
        await pilot.press("r")
        await pilot.pause()
        await press(pilot, "y")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "PasswordOnce")
        first = str(app.screen.query_one("#password", Static).render()).strip()
        await pilot.press("enter")
        await pilot.press("r")
        await pilot.pause()
        await press(pilot, "y")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "PasswordOnce")
        second = str(app.screen.query_one("#password", Static).render()).strip()
        assert first != second
        record = fetch(seeded_store, directory.auth_record, "bob")
        assert passwords.verify_password(record.password_hash, second)
        assert not passwords.verify_password(record.password_hash, first)


async def test_activate_deactivate_delete_and_hints(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_screen(pilot, "3", "UsersScreen")
        table = app.screen.query_one("#users-table")
        table.select_key("alice")
        await wait_for(pilot, lambda: "Priority 1 puts this user's mail first" in screen_text(app))  # painted, not just applied
        await press(pilot, "t")
        assert fetch(seeded_store, directory.get_user, "alice").active is False
        await wait_for(pilot, lambda: "remember to activate" in screen_text(app))  # all verified, inactive
        assert "activate!" in screen_text(app)
        await press(pilot, "t")
        assert fetch(seeded_store, directory.get_user, "alice").active is True

        table.select_key("bob")
        await wait_for(pilot, lambda: "Awaiting verification: orders@shop.example" in screen_text(app))  # painted, not just applied
        await pilot.press("d")
        await pilot.pause()
        await press(pilot, "y")
        assert [u.username for u in fetch(seeded_store, directory.all_users)] == ["alice"]
        assert row_keys(app.screen.query_one("#users-table")) == ["alice"]


async def test_edit_user_priority_note_and_senders(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_screen(pilot, "3", "UsersScreen")
        app.screen.query_one("#users-table").select_key("bob")
        await pilot.press("e")
        await pilot.pause()
        form = app.screen
        form.query_one("#priority").value = 1
        await pilot.pause()
        assert "does not make the mail urgent" in str(form.query_one("#priority-note", Static).render())
        form.query_one("#note").value = "shop, urgent orders"
        form.query_one("#senders").value = "orders@shop.example; billing@shop.example"
        await press(pilot, "ctrl+s")
        user = fetch(seeded_store, directory.get_user, "bob")
        assert (user.priority, user.note) == (1, "shop, urgent orders")
        assert user.senders == ["billing@shop.example", "orders@shop.example"]


# ---------------------------------------------------------------------------
# Lists


async def test_lists_show_numbers_and_client_settings(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_screen(pilot, "2", "ListsScreen")
        rows = {row.name: row for row in app.screen.data.rows}
        assert (rows["Newsletter"].users, rows["Newsletter"].members, rows["Newsletter"].queued) == (1, 12, 8)
        assert (rows["Shop"].queued, rows["Shop"].refused_today) == (1, 1)
        text = screen_text(app)
        assert "STARTTLS (required for AUTH)" in text
        assert "no relay has run yet" in text
        await pilot.press("y")
        assert "SMTP_STARTTLS=true" in app.clipboard
        await pilot.press("enter")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "UsersScreen" and app.screen.snapshots_applied)
        assert app.screen.list_name == "Newsletter"
        assert row_keys(app.screen.query_one("#users-table")) == ["alice"]
        await pilot.press("escape")
        await pilot.pause()
        assert type(app.screen).__name__ == "ListsScreen"


async def test_lists_show_unsubscribed_and_suppressed_members(seeded_store: Path, make_app) -> None:
    from relay.admin.unsubscribe import add_suppression
    from relay.store import subscriptions, transaction

    db = open_store(seeded_store)
    try:
        newsletter = directory.get_list(db, "Newsletter")
        first, second = (address for address, _ in directory.list_members(db, "Newsletter", limit=2))
        with transaction(db):
            ids = subscriptions.batch_subscriptions(db, newsletter.id, [first])
        subscriptions.mark_unsubscribed(db, subscriptions.get_subscription(db, ids[first][0]), via="test")
        add_suppression(db, second)
        add_suppression(db, "nobody-on-a-list@example.org")
    finally:
        db.close()
    app = make_app(seeded_store)
    async with app.run_test(size=(120, 30)) as pilot:
        await open_screen(pilot, "2", "ListsScreen")
        rows = {row.name: row for row in app.screen.data.rows}
        assert (rows["Newsletter"].unsubscribed, rows["Newsletter"].suppressed) == (1, 1)
        assert (rows["Shop"].unsubscribed, rows["Shop"].suppressed) == (0, 0)
        text = screen_text(app)
        assert "Unsub." in text and "Suppr." in text


async def test_add_edit_import_and_delete_a_list(seeded_store: Path, make_app, tmp_path: Path) -> None:
    members = tmp_path / "members.csv"
    members.write_text("address,name\nann@example.org,Ann\nben@example.org,Ben\n", encoding="utf-8")
    app = make_app(seeded_store)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_screen(pilot, "2", "ListsScreen")
        await pilot.press("a")
        await pilot.pause()
        app.screen.query_one("#name").value = "Partners"
        await press(pilot, "ctrl+s")
        info = fetch(seeded_store, directory.get_list, "Partners")
        await wait_for(pilot, lambda: str(info.id) in row_keys(app.screen.query_one("#lists-table")))
        app.screen.query_one("#lists-table").select_key(str(info.id))

        await pilot.press("e")
        await pilot.pause()
        app.screen.query_one("#description").value = "B2B partners"
        await press(pilot, "ctrl+s")
        assert fetch(seeded_store, directory.get_list, "Partners").description == "B2B partners"

        await pilot.press("i")
        await pilot.pause()
        app.screen.query_one("#answer").value = str(members)
        await press(pilot, "enter")
        assert fetch(seeded_store, directory.get_list, "Partners").members == 2

        await pilot.press("d")
        await pilot.pause()
        await press(pilot, "y")
        assert [i.name for i in fetch(seeded_store, directory.all_lists)] == ["Newsletter", "Shop"]


# ---------------------------------------------------------------------------
# Senders


async def test_approve_a_pending_sender_with_a_reason(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_screen(pilot, "4", "SendersScreen")
        assert row_keys(app.screen.query_one("#senders-table")) == ["orders@shop.example"]
        await pilot.press("a")
        await pilot.pause()
        await pilot.press("enter")  # no reason: refused inline
        await wait_for(pilot, lambda: "needs a reason" in screen_text(app))  # painted, not just applied
        app.screen.query_one("#answer").value = "existing account"
        await press(pilot, "enter")
        identity = fetch(seeded_store, directory.get_identity, "orders@shop.example")
        assert (identity.state, identity.method, identity.reason) == ("verified", "manual", "existing account")
        await wait_for(pilot, lambda: row_keys(app.screen.query_one("#senders-table")) == [])
        await press(pilot, "f")  # all identities, with how they were verified
        assert sorted(row_keys(app.screen.query_one("#senders-table"))) == ["example.com", "orders@shop.example"]
        app.screen.query_one("#senders-table").select_key("orders@shop.example")
        await wait_for(pilot, lambda: "reason: existing account" in screen_text(app))  # painted, not just applied


async def test_send_a_code_and_confirm_it(seeded_store: Path, make_app) -> None:
    import re

    from relay.store.settings import Keys, set_setting

    app = make_app(seeded_store)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_screen(pilot, "4", "SendersScreen")
        await pilot.press("s")  # no system sender configured yet: a one-line error, nothing queued
        await app.store_idle()
        await wait_for(pilot, lambda: any("no system sender" in n for n in app.notices))
        db = open_store(seeded_store)
        try:
            set_setting(db, Keys.SYSTEM_SENDER, "postmaster@example.com")
            await press(pilot, "s")
            row = db.execute(
                "SELECT b.data FROM messages m JOIN message_bodies b ON b.message_id = m.id "
                "WHERE m.origin = 'system' AND m.mail_from = 'postmaster@example.com'"
            ).fetchone()
            code = re.search(rb"\b(\d{4}) ?(\d{4})\b", row[0])
            assert code is not None
            digits = (code.group(1) + code.group(2)).decode()
            assert digits not in screen_text(app)  # the code lives only in the mail
            await pilot.press("c")
            await pilot.pause()
            app.screen.query_one("#answer").value = digits
            await press(pilot, "enter")
            identity = directory.get_identity(db, "orders@shop.example")
            assert (identity.state, identity.method) == ("verified", "code")
        finally:
            db.close()
