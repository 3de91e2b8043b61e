"""``callgate sessions``: the recorded sessions and their events."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from callgate.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, fail, print_json
from callgate.cli.keys import console, iso, run_with_store, short_time
from callgate.config import Config
from callgate.store import EventRecord, SessionRecord, Store, first_broken_link

app = typer.Typer(help="The recorded sessions.", no_args_is_help=True)

#: Characters of SQL (or other payload text) shown per event line; --json gives everything.
SUMMARY_CHARS = 120


def _session_json(s: SessionRecord) -> dict[str, Any]:
    return {
        "id": s.id,
        "subject": s.subject,
        "groups": list(s.groups),
        "auth_method": s.auth_method,
        "credential_id": s.credential_id,
        "issuer": s.issuer,
        "connection": s.connection,
        "protocol": s.protocol,
        "client_addr": s.client_addr,
        "client_user": s.client_user,
        "application_name": s.application_name,
        "tls": s.tls,
        "started_at": iso(s.started_at),
        "ended_at": iso(s.ended_at),
        "end_reason": s.end_reason,
        "bytes_from_client": s.bytes_from_client,
        "bytes_to_client": s.bytes_to_client,
        "statements": s.statements,
    }


def _clip(text: str, limit: int = SUMMARY_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _payload(event: EventRecord) -> object:
    """The decoded payload, or its raw text if it is not JSON (an edited store)."""
    try:
        return event.data()
    except ValueError:
        return event.payload


def summarize(event: EventRecord) -> str:
    """One line saying what an event recorded."""
    try:
        data = event.data()
    except ValueError:
        return _clip(event.payload)
    if event.type == "session.start":
        return (
            f"{data.get('subject')} ({data.get('auth_method')}) from {data.get('client_addr')}"
            f" to {data.get('connection')}"
        )
    if event.type == "query":
        rules = data.get("rules") or []
        suffix = f" [{'; '.join(map(str, rules))}]" if rules else ""
        return f"{data.get('verdict')}: {_clip(str(data.get('sql', '')))}{suffix}"
    if event.type == "query.result":
        error = data.get("error")
        outcome = (
            f"error {error.get('sqlstate')}: {_clip(str(error.get('message')), 80)}"
            if isinstance(error, dict)
            else f"{data.get('tag') or 'ok'}"
        )
        return f"#{data.get('statement_seq')} {outcome} ({data.get('duration_ms')} ms)"
    if event.type == "session.end":
        return (
            f"{data.get('reason')}; {data.get('statements')} statements,"
            f" {data.get('bytes_from_client')} B in, {data.get('bytes_to_client')} B out"
        )
    return _clip(json.dumps(data, sort_keys=True))


@app.command("list")
def list_sessions(
    config: ConfigOption = DEFAULT_CONFIG,
    json_: JsonOption = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Newest sessions to show.")] = 50,
) -> None:
    """List recorded sessions, newest first."""

    async def work(cfg: Config, store: Store) -> list[SessionRecord]:
        return await store.list_sessions(limit=limit)

    sessions = run_with_store(config, work)
    if json_:
        print_json([_session_json(s) for s in sessions])
        return
    if not sessions:
        typer.echo("no sessions recorded")
        return
    table = Table(box=None, header_style="bold")
    for column in (
        "ID",
        "SUBJECT",
        "CONNECTION",
        "PROTOCOL",
        "CLIENT",
        "STARTED",
        "ENDED",
        "END REASON",
        "STATEMENTS",
    ):
        table.add_column(column, no_wrap=True)
    for s in sessions:
        table.add_row(
            s.id,
            s.subject,
            s.connection,
            s.protocol,
            s.client_addr,
            short_time(s.started_at),
            short_time(s.ended_at),
            s.end_reason or "-",
            str(s.statements),
        )
    console().print(table)


@app.command("show")
def show(
    session_id: Annotated[str, typer.Argument(metavar="ID", help="The session id.")],
    config: ConfigOption = DEFAULT_CONFIG,
    json_: JsonOption = False,
) -> None:
    """Show one session and its events in order."""

    async def work(cfg: Config, store: Store) -> tuple[SessionRecord | None, list[EventRecord]]:
        return await store.get_session(session_id), await store.session_events(session_id)

    session, events = run_with_store(config, work)
    if session is None:
        fail(f"no session {session_id!r}")
    broken = first_broken_link(events)
    if json_:
        print_json(
            {
                "session": _session_json(session),
                "chain_ok": broken is None,
                "first_broken_seq": broken,
                "events": [
                    {
                        "seq": e.seq,
                        "ts": iso(e.ts),
                        "type": e.type,
                        "payload": _payload(e),
                        "hash": e.hash,
                    }
                    for e in events
                ],
            }
        )
        return
    out = console()
    for key, value in _session_json(session).items():
        shown = ",".join(value) if isinstance(value, list) else value
        out.print(f"{key + ':':<19}{'-' if shown in (None, '') else shown}")
    chain = "ok" if broken is None else f"BROKEN at event {broken}"
    out.print(f"{'chain:':<19}{chain}")
    out.print()
    table = Table(box=None, header_style="bold")
    table.add_column("SEQ", justify="right", no_wrap=True)
    table.add_column("TIME", no_wrap=True)
    table.add_column("TYPE", no_wrap=True)
    table.add_column("SUMMARY", overflow="fold")
    for e in events:
        table.add_row(str(e.seq), short_time(e.ts), e.type, summarize(e))
    out.print(table)
