"""``callgate sessions``: the recorded sessions and their events."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from callgate.audit.export import render
from callgate.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, fail, print_json
from callgate.cli.keys import console, iso, run_with_store, short_time
from callgate.config import Config
from callgate.config.durations import DurationError, parse_duration
from callgate.store import EventRecord, OutboxStatus, SessionRecord, Store, first_broken_link

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
        "gateway_id": s.gateway_id,
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
    if event.type == "query.masked":
        columns = ", ".join(
            f"{c.get('column')} ({c.get('source')}): {c.get('values')}"
            for c in data.get("columns") or []
            if isinstance(c, dict)
        )
        return f"#{data.get('statement_seq')} masked {columns}"
    if event.type == "http.request":
        rules = data.get("rules") or []
        suffix = f" [{'; '.join(map(str, rules))}]" if rules else ""
        query = f"?{data.get('query')}" if data.get("query") else ""
        target = _clip(f"{data.get('method')} {data.get('path')}{query}")
        return f"{data.get('verdict')}: {target}{suffix}"
    if event.type == "http.response":
        error = f": {_clip(str(data.get('error')), 80)}" if data.get("error") else ""
        return (
            f"#{data.get('request_seq')} {data.get('status')}{error} "
            f"({data.get('duration_ms')} ms, {data.get('bytes_to_client')} B out)"
        )
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

    async def work(cfg: Config, store: Store) -> tuple[list[SessionRecord], list[OutboxStatus]]:
        return await store.list_sessions(limit=limit), await store.outbox_status()

    sessions, backlog = run_with_store(config, work)
    if json_:
        print_json([_session_json(s) for s in sessions])
        return
    for sink in backlog:
        # a sink that is down shows here too, not only in `callgate audit status`
        error = f" (last error: {sink.last_error})" if sink.last_error else ""
        typer.echo(f"export backlog: {sink.pending} event(s) waiting for {sink.sink}{error}")
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


# --- replay and export ---------------------------------------------------------------------------

#: Longest pause replay makes between two events, whatever the recording says (seconds, after
#: --speed): an idle session must not make the replay hang for hours.
MAX_REPLAY_PAUSE = 5.0
#: Events read per store round trip by ``sessions export``.
EXPORT_PAGE = 1000


def _replay_lines(event: EventRecord) -> list[str]:
    """What replay prints for one event: the summary, plus recorded rows and parameters."""
    lines = [f"{event.type:<14} {summarize(event)}"]
    try:
        data = event.data()
    except ValueError:
        return lines
    if event.type == "query" and data.get("params"):
        lines.append(f"{'':<14} params: {json.dumps(data['params'], ensure_ascii=False)}")
    if event.type == "http.body":
        for part in ("request", "response"):
            if data.get(part) is not None:
                shown = json.dumps(data[part], ensure_ascii=False)
                lines.append(f"{'':<14} {part}: {shown}")
    if event.type == "query.rows":
        columns = [str(c) for c in data.get("columns") or []]
        lines.append(f"{'':<14} {' | '.join(columns)}")
        for row in data.get("rows") or []:
            cells = [
                "NULL" if c is None else c if isinstance(c, str) else json.dumps(c) for c in row
            ]
            lines.append(f"{'':<14} {' | '.join(cells)}")
        if data.get("truncated"):
            lines.append(f"{'':<14} (more rows were returned; record_rows kept these)")
    return lines


@app.command("replay")
def replay(
    session_id: Annotated[str, typer.Argument(metavar="ID", help="The session id.")],
    config: ConfigOption = DEFAULT_CONFIG,
    speed: Annotated[
        float,
        typer.Option(
            "--speed",
            min=0.0,
            help="Playback speed: 1 as it happened, 10 ten times faster, 0 without pauses.",
        ),
    ] = 1.0,
) -> None:
    """Print a session as it happened, event by event, with its timing."""

    async def work(cfg: Config, store: Store) -> tuple[SessionRecord | None, list[EventRecord]]:
        return await store.get_session(session_id), await store.session_events(session_id)

    session, events = run_with_store(config, work)
    if session is None and not events:
        fail(f"no session {session_id!r}")
    broken = first_broken_link(events)
    if session is not None:
        typer.echo(
            f"session {session.id}: {session.subject} ({session.auth_method}) from"
            f" {session.client_addr} to {session.connection}, started {iso(session.started_at)}"
        )
    if broken is not None:
        typer.echo(f"warning: the chain is BROKEN at event {broken}; run `callgate audit verify`")
    start = events[0].ts if events else 0.0
    previous = start
    for event in events:
        pause = (event.ts - previous) / speed if speed > 0 else 0.0
        if pause > 0:
            time.sleep(min(pause, MAX_REPLAY_PAUSE))
        previous = event.ts
        offset = f"[+{event.ts - start:9.3f}s]"
        first, *more = _replay_lines(event)
        typer.echo(f"{offset} #{event.seq:<5} {first}")
        for line in more:
            typer.echo(f"{' ' * len(offset)}        {line}")


def _since(value: str | None) -> float | None:
    """``--since``: a duration ago (``1h``, ``7d``), an ISO 8601 time, or unix seconds."""
    if value is None:
        return None
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return time.time() - parse_duration(text).total_seconds()
    except DurationError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(f"--since: expected a duration (1h, 7d), an ISO 8601 time or unix seconds: {value!r}")
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


@app.command("export")
def export(
    config: ConfigOption = DEFAULT_CONFIG,
    session_id: Annotated[
        str | None, typer.Option("--session", metavar="ID", help="Only this session's events.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Only events since: 1h, 7d, 2024-05-01T00:00:00Z, unix s."),
    ] = None,
    format_: Annotated[
        str,
        typer.Option(
            "--format", help="jsonl: callgate's events; ocsf: OCSF 1.x (Datastore Activity)."
        ),
    ] = "jsonl",
    out: Annotated[
        Path | None, typer.Option("--out", help="Write to this file instead of stdout.")
    ] = None,
) -> None:
    """Write recorded events, one JSON object per line, oldest first."""
    if format_ not in ("jsonl", "ocsf"):
        fail("--format: expected jsonl or ocsf")
    after = _since(since)
    stream = out.open("w", encoding="utf-8") if out is not None else sys.stdout

    async def work(cfg: Config, store: Store) -> int:
        sessions: dict[str, SessionRecord | None] = {}
        last_id, written = 0, 0
        while True:
            page = await store.events_page(last_id, EXPORT_PAGE, session_id=session_id, since=after)
            if not page:
                return written
            for event in page:
                session: SessionRecord | None = None
                if format_ == "ocsf" and event.session_id is not None:
                    if event.session_id not in sessions:
                        sessions[event.session_id] = await store.get_session(event.session_id)
                    session = sessions[event.session_id]
                stream.write(json.dumps(render(event, session, format_), sort_keys=True))
                stream.write("\n")
                written += 1
            last_id = page[-1].id

    try:
        written = run_with_store(config, work)
    finally:
        if out is not None:
            stream.close()
    if out is not None:
        typer.echo(f"{written} events written to {out}", err=True)
