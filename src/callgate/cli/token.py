"""``callgate token``: exchange an OIDC token for a short-lived ``cgt_`` session token; list and
revoke session tokens.

    callgate token [--id-token TOKEN] [--ttl 30m] [--json]     (the OIDC token on stdin by default)
    callgate token list [--all] [--json]
    callgate token revoke ID
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.table import Table

from callgate.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, fail, print_json
from callgate.cli.keys import console, iso, run_with_store, short_time
from callgate.config import Config, load_config, parse_duration
from callgate.config.durations import DurationError, format_duration
from callgate.errors import CallgateError
from callgate.identity.claims import TokenRejected
from callgate.identity.oidc import MAX_TOKEN_BYTES, OIDCVerifier
from callgate.identity.secret_key import secret_key_from_config
from callgate.identity.session_tokens import (
    MintedToken,
    SessionTokenInfo,
    SessionTokens,
)
from callgate.store import Store, store_from_config

app = typer.Typer(
    help=(
        "Exchange an OIDC token for a short-lived cgt_ session token (no subcommand); "
        "list and revoke session tokens."
    ),
    invoke_without_command=True,
)


def session_tokens(config: Config, store: Store) -> SessionTokens:
    return SessionTokens(
        store,
        secret_key_from_config(config),
        default_ttl=config.identity.session_token_ttl,
        max_ttl=config.identity.session_token_max_ttl,
    )


def _info_json(info: SessionTokenInfo, now: float) -> dict[str, Any]:
    return {
        "id": info.id,
        "subject": info.subject,
        "groups": list(info.groups),
        "issuer": info.issuer,
        "status": info.status(now),
        "created_at": iso(info.created_at),
        "expires_at": iso(info.expires_at),
        "revoked_at": iso(info.revoked_at),
        "last_used_at": iso(info.last_used_at),
    }


def _read_oidc_token(given: str | None) -> str:
    if given is not None:
        token = given.strip()
    elif sys.stdin.isatty():
        token = typer.prompt("OIDC token", hide_input=True).strip()
    else:
        # One token, possibly followed by a newline; read a little past the limit to refuse more.
        token = sys.stdin.read(MAX_TOKEN_BYTES + 2).strip()
    if not token:
        fail("no OIDC token: pipe it on stdin or give --id-token")
    return token


async def _exchange(config: Config, oidc_token: str, ttl: timedelta | None) -> MintedToken:
    if not config.identity.oidc:
        raise CallgateError("no OIDC issuer is configured (identity.oidc)")
    verifier = OIDCVerifier(config.identity.oidc)
    try:
        try:
            principal = await verifier.verify_id_token(oidc_token)
        except TokenRejected as rejected:
            raise CallgateError(f"the OIDC token was refused: {rejected.reason.value}") from None
    finally:
        await verifier.aclose()
    # The store is opened only for a token worth storing.
    async with store_from_config(config) as store:
        return await session_tokens(config, store).mint(principal, ttl)


@app.callback()
def exchange(
    ctx: typer.Context,
    id_token: Annotated[
        str | None,
        typer.Option(
            "--id-token",
            help="The OIDC token (ID token or JWT access token). Default: read from stdin, "
            "which keeps it out of the process list.",
        ),
    ] = None,
    ttl: Annotated[
        str | None,
        typer.Option(
            "--ttl",
            help="Lifetime, e.g. 30m or 2h (default: identity.session_token_ttl; "
            "at most identity.session_token_max_ttl).",
        ),
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    json_: JsonOption = False,
) -> None:
    """Exchange a valid OIDC token for a cgt_ session token bound to the same subject and groups.

    The token is printed once (stdout); use it as the password. Only its keyed hash is stored.
    """
    if ctx.invoked_subcommand is not None:
        return
    lifetime: timedelta | None = None
    if ttl is not None:
        try:
            lifetime = parse_duration(ttl)
        except DurationError as exc:
            fail(f"--ttl: {exc}")
    oidc_token = _read_oidc_token(id_token)
    try:
        cfg = load_config(config)
        minted = asyncio.run(_exchange(cfg, oidc_token, lifetime))
    except CallgateError as exc:
        fail(exc.message)
    del oidc_token
    info = minted.info
    if minted.capped:
        typer.echo(
            "callgate: --ttl is longer than identity.session_token_max_ttl "
            f"({format_duration(cfg.identity.session_token_max_ttl)}); the token lasts that long",
            err=True,
        )
    if json_:
        print_json({"token": minted.token, **_info_json(info, info.created_at)})
        return
    typer.echo(minted.token)
    typer.echo(
        f"session token {info.id} for {info.subject!r}, valid until {iso(info.expires_at)}; "
        "it is shown only once.",
        err=True,
    )


@app.command("list")
def list_tokens(
    all_: Annotated[
        bool, typer.Option("--all", help="Also revoked and expired tokens (newest first).")
    ] = False,
    config: ConfigOption = DEFAULT_CONFIG,
    json_: JsonOption = False,
) -> None:
    """List session tokens (never the token or its hash): active ones unless --all."""

    async def work(cfg: Config, store: Store) -> list[SessionTokenInfo]:
        return await session_tokens(cfg, store).list_tokens(include_inactive=all_)

    infos = run_with_store(config, work)
    now = datetime.now(UTC).timestamp()
    if json_:
        print_json([_info_json(info, now) for info in infos])
        return
    if not infos:
        typer.echo("no session tokens" if all_ else "no active session tokens")
        return
    table = Table(box=None, header_style="bold")
    for column in ("ID", "SUBJECT", "GROUPS", "ISSUER", "STATUS", "CREATED", "EXPIRES"):
        table.add_column(column, no_wrap=True)
    for info in infos:
        table.add_row(
            info.id,
            info.subject,
            ",".join(info.groups) or "-",
            info.issuer or "-",
            info.status(now),
            short_time(info.created_at),
            short_time(info.expires_at),
        )
    console().print(table)


@app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (from `callgate token list`).")],
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Revoke a session token. Gateways refuse it within seconds and end its live sessions."""

    async def work(cfg: Config, store: Store) -> SessionTokenInfo:
        return await session_tokens(cfg, store).revoke(token_id)

    info = run_with_store(config, work)
    typer.echo(f"revoked session token {info.id} of {info.subject!r}")
