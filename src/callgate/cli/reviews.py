"""``callgate reviews``: list pending approvals; approve or deny them as yourself.

Deciding needs the approver's own credential (an API key, an OIDC token or a ``cgt_`` session
token), given with ``--credential``/``--as`` or the ``CALLGATE_CREDENTIAL`` environment variable
(preferred: a command-line argument is visible to other local users), or ``-`` to read it from
stdin. It is verified exactly as the gateway verifies callers. The decision is written to the
store; the gateway sharing that store wakes the held statement and records the audit event.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.table import Table

from callgate.approvals import ApprovalService, ReviewState
from callgate.approvals.models import Review, review_json
from callgate.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, fail, print_json
from callgate.cli.keys import console, run_with_store, short_time
from callgate.config import Config
from callgate.identity import IdentityService
from callgate.model import Principal
from callgate.store import Store

app = typer.Typer(help="Statements and access requests waiting for approval.", no_args_is_help=True)

T = TypeVar("T")

CredentialOption = Annotated[
    str | None,
    typer.Option(
        "--credential",
        "--as",
        envvar="CALLGATE_CREDENTIAL",
        show_envvar=True,
        help="Your own credential (API key, OIDC token or session token; '-' reads stdin).",
    ),
]

#: Characters of SQL shown in the table; ``show`` and ``--json`` give all of it.
STATEMENT_CHARS = 80


async def authenticate(config: Config, store: Store, credential: str) -> Principal:
    """Verify ``credential`` as the gateway would. No audit service: a CLI process never
    appends to the audit chain (the gateway holds its head); refusals go to the log."""
    if credential == "-":
        credential = sys.stdin.readline().strip()
    identity = IdentityService.from_config(config, store, audit=None)
    await identity.start()
    try:
        return await identity.authenticate(credential, source="cli", protocol="cli")
    finally:
        await identity.aclose()


def with_approvals(
    config_path: Path,
    work: Callable[[ApprovalService, Config, Store], Awaitable[T]],
) -> T:
    async def run(config: Config, store: Store) -> T:
        service = ApprovalService.from_config(config, store, None)
        try:
            return await work(service, config, store)
        finally:
            await service.close()

    return run_with_store(config_path, run)


def need(credential: str | None, what: str) -> str:
    if not credential:
        fail(f"{what} needs your credential: --credential/--as or CALLGATE_CREDENTIAL")
    return credential


def _clip(text: str | None, limit: int = STATEMENT_CHARS) -> str:
    if text is None:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _what(review: Review) -> str:
    if review.statement is not None:
        return _clip(review.statement)
    minutes = (review.duration or 0.0) / 60
    return f"access for {minutes:g} min: {_clip(review.reason, 60)}"


@app.command("list")
def list_reviews(
    state: Annotated[
        str, typer.Option("--state", help="pending, approved, denied, expired, … or all.")
    ] = "pending",
    limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 100,
    credential: CredentialOption = None,
    config: ConfigOption = DEFAULT_CONFIG,
    json_: JsonOption = False,
) -> None:
    """List reviews, newest first (with a credential: those you requested or may approve)."""
    try:
        states = None if state == "all" else tuple(ReviewState(s) for s in state.split(","))
    except ValueError:
        fail(f"--state: unknown state {state!r}")

    async def work(service: ApprovalService, cfg: Config, store: Store) -> list[Review]:
        viewer = await authenticate(cfg, store, credential) if credential else None
        return await service.list_reviews(viewer, states=states, limit=limit)

    found = with_approvals(config, work)
    if json_:
        print_json([review_json(r) for r in found])
        return
    if not found:
        typer.echo("no reviews")
        return
    table = Table(box=None, header_style="bold")
    for column in ("ID", "STATE", "REQUESTER", "CONNECTION", "APPROVALS", "CREATED", "WHAT"):
        table.add_column(column, no_wrap=column != "WHAT")
    for r in found:
        table.add_row(
            r.id,
            r.state.value,
            r.requester,
            r.connection,
            f"{len(r.votes)}/{r.min_approvals}",
            short_time(r.created_at),
            _what(r),
        )
    console().print(table)


@app.command("show")
def show(
    review_id: Annotated[str, typer.Argument(help="The review id (rv_…).")],
    credential: CredentialOption = None,
    config: ConfigOption = DEFAULT_CONFIG,
    json_: JsonOption = False,
) -> None:
    """Show one review in full (statement, parameters, rules, approvals)."""

    async def work(service: ApprovalService, cfg: Config, store: Store) -> Review:
        viewer = await authenticate(cfg, store, credential) if credential else None
        return await service.get_review(review_id, viewer)

    review = with_approvals(config, work)
    data = review_json(review)
    if json_:
        print_json(data)
        return
    for key, value in data.items():
        typer.echo(f"{key}: {value}")


def _decided_line(review: Review, verb: str) -> str:
    if review.state is ReviewState.PENDING:
        more = review.min_approvals - len(review.votes)
        return (
            f"recorded your approval of review {review.id} ({len(review.votes)}/"
            f"{review.min_approvals}; {more} more needed)"
        )
    return f"{verb} review {review.id}"


@app.command("approve")
def approve(
    review_id: Annotated[str, typer.Argument(help="The review id (rv_…).")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why (recorded).")] = None,
    credential: CredentialOption = None,
    config: ConfigOption = DEFAULT_CONFIG,
    json_: JsonOption = False,
) -> None:
    """Approve a pending review as yourself."""
    secret = need(credential, "approving")

    async def work(service: ApprovalService, cfg: Config, store: Store) -> Review:
        who = await authenticate(cfg, store, secret)
        return await service.approve(review_id, who, reason)

    review = with_approvals(config, work)
    if json_:
        print_json(review_json(review))
    else:
        typer.echo(_decided_line(review, "approved"))


@app.command("deny")
def deny(
    review_id: Annotated[str, typer.Argument(help="The review id (rv_…).")],
    reason: Annotated[str, typer.Option("--reason", help="Why (shown to the requester).")],
    credential: CredentialOption = None,
    config: ConfigOption = DEFAULT_CONFIG,
    json_: JsonOption = False,
) -> None:
    """Deny a pending review as yourself; the requester sees the reason."""
    secret = need(credential, "denying")

    async def work(service: ApprovalService, cfg: Config, store: Store) -> Review:
        who = await authenticate(cfg, store, secret)
        return await service.deny(review_id, who, reason)

    review = with_approvals(config, work)
    if json_:
        print_json(review_json(review))
    else:
        typer.echo(_decided_line(review, "denied"))
