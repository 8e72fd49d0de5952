"""A store file with one list, for the admin operations."""

from __future__ import annotations

from typing import Any

import pytest

from relay.store import directory


@pytest.fixture
def listed(db: Any) -> Any:
    directory.create_list(db, "News")
    return db
