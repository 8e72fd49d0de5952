"""Fast bulk queueing for benchmarks and load demos: many messages in one transaction.

Real intake goes through :mod:`relay.store.intake` (one ``queued`` event per message);
this path skips the events so 100,000 messages go in within a couple of seconds.
"""

from __future__ import annotations

import sqlite3
import time

from relay.store.db import transaction
from relay.store.intake import new_queue_id

_BODY = b"From: bench@example.com\r\nTo: {to}\r\nSubject: bench {n}\r\n\r\nbench message\r\n"


def queue_bulk(
    db: sqlite3.Connection,
    count: int,
    *,
    priorities: tuple[int, ...] = (1, 2, 3, 4, 5),
    mail_from: str = "bench@example.com",
    recipient_domain: str = "example.net",
    now: float | None = None,
) -> int:
    """Queue ``count`` small messages (state ``queued``), cycling through ``priorities``.
    Returns the number inserted. One transaction, ``executemany`` per table."""
    stamp = time.time() if now is None else now
    with transaction(db):
        first = int(db.execute("SELECT coalesce(max(id), 0) + 1 FROM messages").fetchone()[0])
        ids = range(first, first + count)
        messages = []
        bodies = []
        recipients = []
        for n, message_id in enumerate(ids):
            priority = priorities[n % len(priorities)]
            to = f"user{n}@{recipient_domain}"
            data = _BODY.replace(b"{to}", to.encode()).replace(b"{n}", str(n).encode())
            messages.append(
                (message_id, new_queue_id(), "smtp", mail_from, mail_from, f"bench {n}", len(data),
                 priority, 3, priority, stamp + n * 1e-6, stamp, stamp)
            )
            bodies.append((message_id, data))
            recipients.append((message_id, to))
        db.executemany(
            "INSERT INTO messages(id, queue_id, origin, mail_from, header_from, subject, size, "
            "header_priority, user_priority, priority, next_attempt_at, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            messages,
        )
        db.executemany("INSERT INTO message_bodies(message_id, data) VALUES (?, ?)", bodies)
        db.executemany("INSERT INTO recipients(message_id, address) VALUES (?, ?)", recipients)
    return count
