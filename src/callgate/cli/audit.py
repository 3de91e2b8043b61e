"""``callgate audit``: prove the recordings were not edited; see the export backlog.

Register in :mod:`callgate.cli.main` with ``app.add_typer(audit.app, name="audit")``.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from cryptography.hazmat.primitives.asymmetric import ed25519

from callgate.audit.signing import public_key_from_config
from callgate.audit.verify import VerifyReport, verify_store
from callgate.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, fail, print_json
from callgate.cli.keys import console, iso, run_with_store
from callgate.config import Config
from callgate.errors import CallgateError
from callgate.store import Store, load_public_key
from callgate.store.audit_records import OutboxStatus

app = typer.Typer(help="Verify the audit trail and see the export backlog.", no_args_is_help=True)

#: problems listed in text output (``--json`` lists them all)
SHOWN_PROBLEMS = 20


def _public_key(cfg: Config, given: str | None) -> ed25519.Ed25519PublicKey | None:
    if given is not None:
        try:
            return load_public_key(given)
        except ValueError as exc:
            fail(f"--public-key: {exc}")
    return public_key_from_config(cfg)


def _report_json(report: VerifyReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "chains": report.chains,
        "events": report.events,
        "checkpoints": report.checkpoints,
        "signatures_checked": report.signatures_checked,
        "public_key": report.public_key,
        "purged_sessions": report.purged,
        "first_problem": None if report.first is None else report.first.describe(),
        "problems": [
            {
                "session_id": p.session_id,
                "seq": p.seq,
                "event_id": p.event_id,
                "checkpoint_id": p.checkpoint_id,
                "reason": p.reason,
            }
            for p in report.problems
        ],
        "unanchored": [
            {"session_id": chain, "from_seq": seq} for chain, seq in report.unanchored.items()
        ],
    }


@app.command("verify")
def verify(
    config: ConfigOption = DEFAULT_CONFIG,
    json_: JsonOption = False,
    session: Annotated[
        str | None, typer.Option("--session", metavar="ID", help="Verify only this session.")
    ] = None,
    public_key: Annotated[
        str | None,
        typer.Option(
            "--public-key",
            help="Ed25519 public key (base64, as `certs audit-key` prints it, or PEM) that"
            " signed the checkpoints; default: derived from gateway.audit.signing_key.",
        ),
    ] = None,
) -> None:
    """Check every hash chain and signed checkpoint; exit 1 naming the first bad event."""

    async def work(cfg: Config, store: Store) -> tuple[VerifyReport, tuple[int, int]]:
        key = _public_key(cfg, public_key)
        checkpoints = await store.checkpoints()
        if checkpoints and key is None:
            fail(
                "the store has signed checkpoints but no public key to check them with:"
                " set gateway.audit.signing_key or pass --public-key"
            )
        missing = session is not None and await store.get_session(session) is None
        if missing and not await store.session_events(session):
            fail(f"no session {session!r}")
        report = await verify_store(
            store, key, session_id=session, only_session=session is not None
        )
        return report, await store.journal_pending()

    report, (journal_records, journal_events) = run_with_store(config, work)
    if json_:
        print_json(
            {
                **_report_json(report),
                "journal_pending": {"records": journal_records, "events": journal_events},
            }
        )
    else:
        out = console()
        signed = (
            f"{report.checkpoints} signed checkpoints"
            if report.signatures_checked
            else "no signed checkpoints (truncation cannot be detected)"
        )
        out.print(f"{report.chains} chains, {report.events} events, {signed}")
        if report.purged:
            out.print(f"{report.purged} sessions removed by retention (recorded in checkpoints)")
        if report.unanchored:
            out.print(
                f"{len(report.unanchored)} chain(s) have events after their last checkpoint"
                " (checked for links; a cut there would not show)"
            )
        if journal_records:
            out.print(
                f"{journal_records} audit journal record(s) ({journal_events} events) are not in"
                " the store yet, so not verified here: a running gateway applies them within"
                " milliseconds; after a crash, the gateway applies them at its next start"
            )
        for problem in report.problems[:SHOWN_PROBLEMS]:
            out.print(f"BAD  {problem.describe()}")
        if len(report.problems) > SHOWN_PROBLEMS:
            out.print(f"... and {len(report.problems) - SHOWN_PROBLEMS} more (see --json)")
        out.print("verified: ok" if report.ok else "verification FAILED")
    if not report.ok:
        first = report.first
        if not json_ and first is not None:
            typer.echo(f"callgate: audit verification failed: {first.describe()}", err=True)
        raise typer.Exit(1)


def _status_json(rows: list[OutboxStatus], now: float) -> list[dict[str, Any]]:
    return [
        {
            "sink": r.sink,
            "pending": r.pending,
            "oldest": iso(r.oldest_created_at),
            "oldest_age_s": None
            if r.oldest_created_at is None
            else round(now - r.oldest_created_at, 3),
            "max_attempts": r.max_attempts,
            "last_error": r.last_error,
        }
        for r in rows
    ]


@app.command("status")
def status(config: ConfigOption = DEFAULT_CONFIG, json_: JsonOption = False) -> None:
    """The export backlog per sink and the last checkpoint."""

    async def work(cfg: Config, store: Store) -> tuple[list[OutboxStatus], list[str], Any]:
        from callgate.audit.sinks import sink_name

        names = [sink_name(s) for s in cfg.gateway.audit.export]
        checkpoints = await store.checkpoints()
        return await store.outbox_status(), names, checkpoints[-1] if checkpoints else None

    try:
        rows, names, last = run_with_store(config, work)
    except CallgateError as exc:  # pragma: no cover - run_with_store already reports
        fail(exc.message)
    now = time.time()
    by_sink = {r.sink: r for r in rows}
    for name in names:
        by_sink.setdefault(name, OutboxStatus(name, 0, None, 0, None))
    ordered = [by_sink[k] for k in sorted(by_sink)]
    if json_:
        print_json(
            {
                "sinks": _status_json(ordered, now),
                "last_checkpoint": None
                if last is None
                else {"id": last.id, "time": iso(last.ts), "kind": last.kind},
            }
        )
        return
    out = console()
    if not ordered:
        out.print("no export sinks configured")
    for r in ordered:
        age = "" if r.oldest_created_at is None else f", oldest {now - r.oldest_created_at:.0f}s"
        error = f", last error: {r.last_error}" if r.last_error else ""
        out.print(f"{r.sink}: {r.pending} pending{age}{error}")
    if last is None:
        out.print("no signed checkpoint yet")
    else:
        out.print(f"last checkpoint: {last.id} ({last.kind}) at {iso(last.ts)}")
