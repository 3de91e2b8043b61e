from __future__ import annotations

from tests.store.backends import backend, open_backend, raw, store, store_url

__all__ = ["backend", "open_backend", "raw", "store", "store_url"]
