"""The queue on a SQLite store (the contract tests in tests/store_contract/ cover what
every backend does): the dispatch index, and the starvation share a relay seeds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from relay.store import queue as q


def test_the_next_message_is_one_index_seek(db: Any) -> None:
    plan = db.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM messages WHERE state = 'queued' AND next_attempt_at <= ? "
        "ORDER BY priority, id LIMIT 1",
        (time.time(),),
    ).fetchall()
    text = " ".join(str(row[-1]) for row in plan)
    assert "messages_dispatch" in text and "TEMP B-TREE" not in text


async def test_the_starvation_share_is_seeded_like_rate_only_while_unset(
    db: Any, store_path: Path, tmp_path: Path, tls_files: dict[str, Path]
) -> None:
    from relay.config import ConfigError, load_config
    from relay.service import RelayService

    assert load_config(environ={"SMTPPLUS_STARVATION_SHARE": "0.05"}).starvation_share == 0.05
    with pytest.raises(ConfigError, match="starvation_share 0.7 is out of range: 0 \\(off\\) to 0.5"):
        load_config(overrides={"starvation_share": 0.7}, environ={})
    config = load_config(overrides={
        "host": "127.0.0.1", "ports": "0", "data_dir": tmp_path / "data", "tls_cert": tls_files["cert"],
        "tls_key": tls_files["key"], "paused": True, "starvation_share": 0.1, "rate": 5,
    }, environ={})

    async def run_relay_once() -> None:
        service = RelayService(store_path, config)
        await service.start()
        await service.stop(grace=1.0)

    assert q.delivery_settings(db).starvation_share == 0.0  # off by default
    await run_relay_once()
    assert (q.delivery_settings(db).starvation_share, q.delivery_settings(db).rate) == (0.1, 5.0)
    q.set_starvation_share(db, "0.2")  # the operator's value wins over the seed from now on
    await run_relay_once()
    assert q.delivery_settings(db).starvation_share == 0.2
