"""``callgate keys``: create, list and revoke API keys (kept as keyed hashes in the store)."""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from callgate.cli.common import (
    DEFAULT_CONFIG,
    ConfigOption,
    JsonOption,
    fail,
    fail_from,
    print_json,
)
from callgate.config import Config, load_config, parse_duration
from callgate.config.durations import DurationError
from callgate.errors import CallgateError
from callgate.identity.api_keys import ApiKeyInfo, ApiKeys
from callgate.identity.secret_key import secret_key_from_config
from callgate.store import Store, store_from_config

app = typer.Typer(
    help="Create, list and revoke API keys (cgk_…); the store keeps only their keyed hashes.",
    no_args_is_help=True,
)

T = TypeVar("T")


def iso(ts: float | None) -> str | None:
    """A unix time as ISO 8601 UTC (for JSON), or ``None``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def short_time(ts: float | None) -> str:
    """A unix time for a table column (UTC)."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def console() -> Console:
    # Not a terminal (a pipe, a test): do not cut long ids and statements at 80 columns.
    # Markup off: SQL and rule names contain brackets that are data, not styling.
    return Console(width=None if sys.stdout.isatty() else 240, highlight=False, markup=False)


def run_with_store(config_path: Path, work: Callable[[Config, Store], Awaitable[T]]) -> T:
    """Load the config, open its store, run ``work``, close the store; one-line errors."""
    try:
        config = load_config(config_path)

        async def main() -> T:
            async with store_from_config(config) as store:
                return await work(config, store)

        return asyncio.run(main())
    except CallgateError as exc:
        fail_from(exc)


def _key_json(info: ApiKeyInfo, now: float) -> dict[str, Any]:
    return {
        "name": info.name,
        "prefix": info.prefix,
        "groups": list(info.groups),
        "status": info.status(now),
        "created_at": iso(info.created_at),
        "expires_at": iso(info.expires_at),
        "revoked_at": iso(info.revoked_at),
        "last_used_at": iso(info.last_used_at),
        "created_by": info.created_by,
    }


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Unique name; it becomes the caller's subject.")],
    groups: Annotated[str, typer.Option("--groups", help="Comma-separated groups, e.g. g1,g2.")],
    expires: Annotated[
        str | None, typer.Option("--expires", help="Lifetime, e.g. 30d, 12h, 90m (default: none).")
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    json_: JsonOption = False,
) -> None:
    """Create an API key and print it. It is shown this once and cannot be recovered."""
    expires_in: timedelta | None = None
    if expires is not None:
        try:
            expires_in = parse_duration(expires)
        except DurationError as exc:
            fail(f"--expires: {exc}")
        if expires_in <= timedelta(0):
            fail("--expires: must be longer than zero")
    group_list = [g for g in (part.strip() for part in groups.split(",")) if g]

    async def work(cfg: Config, store: Store) -> tuple[str, ApiKeyInfo | None]:
        keys = ApiKeys(store, secret_key_from_config(cfg))
        key = await keys.create_key(name, group_list, expires_in, created_by=_who())
        record = await store.api_key_by_name(name)
        return key, ApiKeyInfo.of(record) if record is not None else None

    key, info = run_with_store(config, work)
    if json_:
        print_json(
            {
                "name": name,
                "key": key,
                "groups": list(info.groups) if info else sorted(set(group_list)),
                "expires_at": iso(info.expires_at) if info else None,
            }
        )
        return
    typer.echo(key)
    typer.echo(
        f"API key {name!r} created. Store it now: it is shown only once.",
        err=True,
    )


def _who() -> str | None:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (containers)
        return None


@app.command("list")
def list_keys(config: ConfigOption = DEFAULT_CONFIG, json_: JsonOption = False) -> None:
    """List API keys with their status (never the key or its hash)."""

    async def work(cfg: Config, store: Store) -> list[ApiKeyInfo]:
        return [ApiKeyInfo.of(r) for r in await store.list_api_keys()]

    infos = run_with_store(config, work)
    now = datetime.now(UTC).timestamp()
    if json_:
        print_json([_key_json(info, now) for info in infos])
        return
    if not infos:
        typer.echo("no API keys")
        return
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "PREFIX", "GROUPS", "STATUS", "CREATED", "EXPIRES", "LAST USED"):
        table.add_column(column, no_wrap=True)
    for info in infos:
        table.add_row(
            info.name,
            info.prefix + "…",
            ",".join(info.groups) or "-",
            info.status(now),
            short_time(info.created_at),
            short_time(info.expires_at),
            short_time(info.last_used_at),
        )
    console().print(table)


@app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="The key's name.")],
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Revoke an API key. Gateways refuse it within seconds."""

    async def work(cfg: Config, store: Store) -> None:
        await ApiKeys(store, secret_key_from_config(cfg)).revoke_key(name)

    run_with_store(config, work)
    typer.echo(f"revoked API key {name!r}")
