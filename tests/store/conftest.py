from __future__ import annotations

from pathlib import Path

import pytest

from tests.store.backends import backend, open_backend, raw, store, store_url

__all__ = ["backend", "open_backend", "raw", "store", "store_url"]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "callgate.db"
