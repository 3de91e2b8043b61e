"""Open a store from its URL: ``sqlite:///relative.db``, ``sqlite:////abs/path.db``,
``postgresql://user@host:5432/database``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from callgate.store.base import Store
from callgate.store.errors import StoreError
from callgate.store.sqlite import DEFAULT_BUSY_TIMEOUT, SqliteStore

if TYPE_CHECKING:
    from callgate.config import Config

_SQLITE = "sqlite:///"


def sqlite_path(url: str, *, base_dir: Path | None = None) -> Path | None:
    """The database path of a ``sqlite:`` URL, or ``None`` for any other scheme.

    ``sqlite:///callgate.db`` and ``sqlite:///./callgate.db`` are relative (to ``base_dir`` if
    given, else the working directory); ``sqlite:////var/lib/callgate.db`` is absolute.
    """
    if not url.startswith(_SQLITE):
        return None
    rest = url[len(_SQLITE) :]
    if not rest or rest in {".", "/"} or "?" in rest:
        raise StoreError(f"invalid SQLite store URL {url!r}: expected sqlite:///path/to/file.db")
    path = Path(rest)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def open_store(
    url: str, *, base_dir: Path | None = None, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
) -> Store:
    """Open (and migrate) the store named by ``url``."""
    path = sqlite_path(url, base_dir=base_dir)
    if path is not None:
        return SqliteStore(path, busy_timeout=busy_timeout)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in {"postgresql", "postgres"}:
        # imported here: asyncpg is needed only by gateways that use a PostgreSQL store
        from callgate.store.postgres import PostgresStore

        return PostgresStore(url)
    raise StoreError(
        f"unsupported store URL scheme {scheme or url!r}: expected sqlite:///path/to/file.db"
        " or postgresql://USER@HOST/DATABASE"
    )


def open_store_from_config(config: Config, *, serving: bool = False) -> Store:
    """Open ``gateway.store``; a SQLite path already resolved by the config wins over the URL.

    ``serving``: for the gateway itself, whose SQLite store keeps the audit journal (and replays
    what a crashed run left in it); CLI commands never touch the journal."""
    gateway = config.gateway
    if gateway.store_path is not None:
        return SqliteStore(gateway.store_path, journal=serving)
    path = sqlite_path(gateway.store)
    if path is not None:
        return SqliteStore(path, journal=serving)
    return open_store(gateway.store)


@asynccontextmanager
async def store_from_config(config: Config) -> AsyncIterator[Store]:
    """``async with store_from_config(config) as store:`` opens the store and closes it after."""
    store = open_store_from_config(config)
    try:
        yield store
    finally:
        await store.close()
