"""The relay in the console's process (and attaching to another one), the demo's
seed and its burst through the real SMTP path, and the two commands."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from console.demo import (
    BURST,
    DEMO_DOMAIN,
    DEMO_LIST,
    DEMO_SERVER_NAME,
    DEMO_USER,
    PENDING_SENDER,
    PENDING_USER,
    SYSTEM_SENDER,
    DemoApp,
    code_in_mail,
    seed_demo,
)
from relay.config import RelayConfig
from relay.service import RelayService
from relay.store import campaigns, directory, open_store
from relay.store.lease import relay_status
from relay.store.views import queue_page
from tests.console.conftest import press, screen_text, wait_for
from tests.console.test_forms_and_keys import footer_fits, footer_shown


def relay_config(tmp_path: Path) -> RelayConfig:
    return RelayConfig(host="127.0.0.1", ports="0", data_dir=tmp_path / "relay-data", server_name="localhost",
                       heartbeat_interval=0.2, shutdown_grace=0.2)


async def test_console_owns_the_in_process_relay(seeded_store: Path, make_app, tmp_path: Path) -> None:
    app = make_app(seeded_store, run_relay=True, relay_config=relay_config(tmp_path), clock=time.time)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.relay_mode == "in-process", within=30)
        relay = app.relay
        port = relay.served[0]
        await wait_for(pilot, lambda: "relay alive in-process" in screen_text(app))
        for key in ("2", "3", "4", "5", "1"):  # switching screens never stops it
            await pilot.press(key)
        assert app.relay is relay and relay.running
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        banner = await asyncio.wait_for(reader.readline(), 10)
        assert banner.startswith(b"220")
        writer.close()
    db = open_store(seeded_store)
    try:
        status = relay_status(db)
        assert not status.alive and status.stopped_at is not None  # stopped with the app
    finally:
        db.close()


async def test_console_attaches_to_a_live_relay(seeded_store: Path, make_app, tmp_path: Path) -> None:
    service = RelayService(seeded_store, relay_config(tmp_path))
    await service.start()
    try:
        app = make_app(seeded_store, run_relay=True, relay_config=relay_config(tmp_path / "second"), clock=time.time)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: app.relay_mode == "attached", within=20)
            assert app.relay is None
            await wait_for(pilot, lambda: "relay alive pid" in screen_text(app))
    finally:
        await service.stop()


async def test_no_relay_shows_that_none_runs(seeded_store: Path, make_app) -> None:
    app = make_app(seeded_store, run_relay=False, clock=time.time)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: "no relay" in screen_text(app))
        assert app.relay is None and app.relay_mode == "attached"


def test_seed_demo(store_path: Path) -> None:
    db = open_store(store_path)
    try:
        seed = seed_demo(db, members=20)
        active = directory.get_user(db, DEMO_USER)
        assert active.active and active.domains == [DEMO_DOMAIN] and active.all_verified
        pending = directory.get_user(db, PENDING_USER)
        assert not pending.active and [i.state for i in pending.identities] == ["pending"]
        assert directory.get_list(db, DEMO_LIST).members == 20
        assert seed.campaign_id is not None
        campaign = campaigns.get_campaign(db, seed.campaign_id)
        assert (campaign.state, campaign.total) == ("scheduled", 20)
        again = seed_demo(db, members=20)  # an existing demo store: a fresh password, nothing doubled
        assert again.password != seed.password and again.campaign_id is None
        assert len(directory.all_users(db)) == 2
    finally:
        db.close()


async def test_demo_burst_goes_through_smtp_and_priority_one_leads(store_path: Path, tmp_path: Path) -> None:
    from relay.store import queue

    db = open_store(store_path)
    seed = seed_demo(db, members=5)
    db.close()
    app = DemoApp(store_path, seed=seed, sink_port=0, relay_config=relay_config(tmp_path), cursor_blink=False)
    app.animation_level = "none"
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.relay_mode == "in-process" and app.sink is not None, within=30)
        await wait_for(pilot, lambda: f"next hop 127.0.0.1:{app.sink.port} · sink got 0" in screen_text(app))
        db = open_store(store_path)
        try:
            queue.set_paused(db, True)  # hold delivery so the order at the sink is exact
            await pilot.press("b")
            await wait_for(pilot, lambda: app.bursts == 1 and not [w for w in app.workers if w.group == "demo"],
                           within=30)
            burst = [r for r in queue_page(db, "queued", limit=500) if r.username == DEMO_USER]
            ones = sum(count for priority, count in BURST if priority == 1)
            assert len(burst) == sum(count for _, count in BURST)
            assert ones >= 60  # several seconds of priority 1 at the demo's 20/s: the overtaking is visible
            assert sorted(r.priority for r in burst)[:ones] == [1] * ones
            assert {r.priority for r in burst} == {1, 2, 3, 4, 5}  # every lane gets some
            assert {r.header_priority for r in burst if r.priority == 1} == {1}
            queue.set_paused(db, False)
            records = await app.sink.wait_for(1, within=30)
            assert records[0].x_priority == "1"  # priority 1 overtakes everything queued
        finally:
            db.close()


async def test_demo_verification_completes_inside_the_demo(store_path: Path, tmp_path: Path) -> None:
    """Senders → s mails a code through the relay to the recording sink; the code is
    read from the sink's record (and shown by the demo); c confirms it → verified."""
    from harness.sink import read_records
    from relay.verification import CODE_SUBJECT

    db = open_store(store_path)
    seed = seed_demo(db, members=5)
    db.close()
    app = DemoApp(store_path, seed=seed, sink_port=0, relay_config=relay_config(tmp_path), cursor_blink=False)
    app.animation_level = "none"
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.relay_mode == "in-process" and app.sink is not None, within=30)
        db = open_store(store_path)
        try:
            assert relay_status(db).server_name == DEMO_SERVER_NAME  # dotted, though the config said localhost
            await pilot.press("4")
            await wait_for(pilot, lambda: type(app.screen).__name__ == "SendersScreen" and app.screen.data is not None
                           and any(v.identity.value == PENDING_SENDER for v in app.screen.data.senders))
            await wait_for(pilot, lambda: footer_shown(app))
            shown = footer_fits(app.screen)  # at 80 columns, nothing runs under ^p Commands
            assert {"s Send code", "c Confirm code", "F1/? Help", "b Burst"} <= set(shown)
            app.screen.query_one("#senders-table").select_key(PENDING_SENDER)
            await press(pilot, "s")
            await app.sink.wait_until(lambda got: any(m.subject == CODE_SUBJECT for m in got), within=30)
            [mail] = [r for r in read_records(app.sink_record) if r["subject"] == CODE_SUBJECT]
            assert (mail["mail_from"], mail["rcpt_tos"]) == (SYSTEM_SENDER, [PENDING_SENDER])
            code = code_in_mail(mail["data"].encode())
            assert code is not None and len(code.replace(" ", "")) == 8
            assert app.last_code == (PENDING_SENDER, code)
            assert any(code in n.replace("\xa0", " ") and "press c" in n for n in app.notices)  # the demo shows it
            await pilot.press("c")
            await pilot.pause()
            assert type(app.screen).__name__ == "PromptDialog"
            app.screen.query_one("#answer").value = code
            await press(pilot, "enter")
            identity = directory.get_identity(db, PENDING_SENDER)
            assert (identity.state, identity.method) == ("verified", "code")
        finally:
            db.close()


def test_console_and_demo_commands(cli, store_path: Path) -> None:
    for command in ("console", "demo"):
        proc = cli(command, "--help")
        assert proc.returncode == 0 and "--db" in proc.stdout
    refused = cli("demo", "--db", str(store_path))  # SMTPPLUS_DB: the default store
    assert refused.returncode == 1
    assert "default store" in refused.stderr and "Traceback" not in refused.stderr
    bad = cli("console", "--db", "/proc/nope/x.db", "--no-relay")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1


def test_bench_console_runs_small(cli) -> None:
    proc = cli("harness", "bench", "console", "--quick", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["bench"] == "console" and report["parameters"] == {"queued": 3000, "refreshes": 4, "store": None}
    figures = {f["name"]: f for f in report["figures"]}
    assert figures["rows_shown"]["value"] == 50 and figures["refreshes"]["value"] == 4
    assert figures["first_paint_s"]["value"] > 0 and figures["refresh_apply_ms_median"]["value"] > 0
    assert {name for name, f in figures.items() if f["target"]} == {"first_paint_s", "refresh_apply_ms_median", "rss_mb"}
    [fill] = report["runs"]
    assert fill["messages"] == 3000 and fill["seconds"] > 0
