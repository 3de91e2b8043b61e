"""``callgate access``: ask for a time-boxed access window; list and revoke grants.

An approved request gives its requester the connection's ``access.grant_policy`` for the duration
asked (at most ``access.max_duration``). The credential is given as for ``callgate reviews``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.table import Table

from callgate.approvals import ApprovalService, ReviewState
from callgate.approvals.models import Grant, Review, grant_json, review_json
from callgate.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, fail, print_json
from callgate.cli.keys import console, short_time
from callgate.cli.reviews import CredentialOption, authenticate, need, with_approvals
from callgate.config import Config, parse_duration
from callgate.config.durations import DurationError
from callgate.store import Store

app = typer.Typer(help="Time-boxed access windows, granted on approval.", no_args_is_help=True)

#: Seconds between two looks at the request with ``--wait``.
WAIT_POLL = 0.5


@app.command("request")
def request(
    connection: Annotated[str, typer.Argument(help="The connection to get access to.")],
    duration: Annotated[str, typer.Option("--duration", help="How long, e.g. 30m, 2h.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (shown to approvers).")],
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the decision (until the request expires).")
    ] = False,
    credential: CredentialOption = None,
    config: ConfigOption = DEFAULT_CONFIG,
    json_: JsonOption = False,
) -> None:
    """Ask approvers for access to CONNECTION for --duration."""
    secret = need(credential, "requesting access")
    try:
        length = parse_duration(duration)
    except DurationError as exc:
        fail(f"--duration: {exc}")

    async def work(service: ApprovalService, cfg: Config, store: Store) -> Review:
        who = await authenticate(cfg, store, secret)
        review = await service.request_access(who, connection, length, reason)
        while wait:
            current = await service.get_review(review.id)
            if current.state is not ReviewState.PENDING:
                return current
            if service.now() >= current.expires_at:
                await service.list_reviews()  # expires it
                continue
            await asyncio.sleep(WAIT_POLL)
        return review

    review = with_approvals(config, work)
    if json_:
        print_json(review_json(review))
    elif review.state is ReviewState.PENDING:
        typer.echo(f"requested access to {connection}: review {review.id} is waiting for approval")
    elif review.state is ReviewState.APPROVED:
        typer.echo(f"access to {connection} granted: grant {review.grant_id}")
    else:
        reason_text = f": {review.decision_reason}" if review.decision_reason else ""
        fail(f"access request {review.id} {review.state.value}{reason_text}")


@app.command("list")
def list_grants(
    all_: Annotated[bool, typer.Option("--all", help="Also expired and revoked grants.")] = False,
    credential: CredentialOption = None,
    config: ConfigOption = DEFAULT_CONFIG,
    json_: JsonOption = False,
) -> None:
    """List access grants (with a credential: yours and those you approve for)."""

    async def work(
        service: ApprovalService, cfg: Config, store: Store
    ) -> tuple[list[Grant], float]:
        viewer = await authenticate(cfg, store, credential) if credential else None
        return await service.list_grants(viewer, active=not all_), service.now()

    grants, now = with_approvals(config, work)
    if json_:
        print_json([grant_json(g, now) for g in grants])
        return
    if not grants:
        typer.echo("no grants")
        return
    table = Table(box=None, header_style="bold")
    for column in ("ID", "SUBJECT", "CONNECTION", "POLICY", "STATUS", "STARTS", "EXPIRES"):
        table.add_column(column, no_wrap=True)
    for g in grants:
        table.add_row(
            g.id,
            g.subject,
            g.connection,
            g.policy,
            g.status(now),
            short_time(g.starts_at),
            short_time(g.expires_at),
        )
    console().print(table)


@app.command("revoke")
def revoke(
    grant_id: Annotated[str, typer.Argument(help="The grant id (gr_…).")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why (recorded).")] = None,
    credential: CredentialOption = None,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """End an access window now (its holder, or an approver of its connection)."""
    secret = need(credential, "revoking a grant")

    async def work(service: ApprovalService, cfg: Config, store: Store) -> Grant:
        who = await authenticate(cfg, store, secret)
        return await service.revoke_grant(grant_id, who, reason)

    grant = with_approvals(config, work)
    typer.echo(f"revoked grant {grant.id} ({grant.subject} on {grant.connection})")
