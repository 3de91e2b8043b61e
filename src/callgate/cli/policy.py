"""``callgate policy test``: what would policy decide for this caller and this SQL or HTTP request?

Loads only the config; no gateway, store or upstream is needed. Exits 0 whatever the decision
(non-zero only when the config or the arguments are wrong), so scripts read the verdict from the
output (``--json``).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from callgate.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, fail, print_json
from callgate.config import load_config
from callgate.errors import CallgateError
from callgate.model import Decision, HttpRequest, Principal, Verdict
from callgate.policy.classify import Classification, classify
from callgate.policy.engine import PolicyEngine, resolve_executes

app = typer.Typer(
    help="Check what policy decides, without a running gateway.", no_args_is_help=True
)


@app.callback()
def policy() -> None:
    """Check what policy decides, without a running gateway."""
    # A callback keeps ``test`` a sub-command (Typer collapses a one-command app otherwise).


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _classification_json(c: Classification) -> dict[str, Any]:
    return {
        "kinds": sorted(c.kinds),
        "tables_read": sorted(map(str, c.tables_read)),
        "tables_written": sorted(map(str, c.tables_written)),
        "columns": sorted(c.columns),
        "functions": sorted(c.functions),
        "where_absent": c.where_absent,
        "locks": c.locks,
        "statement_count": c.statement_count,
        "prepares": [name for name, _ in c.prepares],
        "executes": list(c.executes),
        "deallocates": list(c.deallocates),
        "sets_search_path": c.sets_search_path,
        "parse_error": c.parse_error,
    }


def _mask_plan(engine: PolicyEngine, principal: Principal, connection: str) -> list[str]:
    plan: list[str] = []
    for policy in engine.applicable(principal, connection):
        exempt = policy.mask_exempt
        if exempt is not None and exempt.matches(principal.subject, principal.groups):
            continue
        for index, rule in enumerate(policy.mask):
            what = (
                f"columns {', '.join(rule.columns)}"
                if rule.columns
                else f"detect {', '.join(rule.detect)}"
                if rule.detect
                else f"headers {', '.join(rule.headers)}"
                if rule.headers
                else f"json {', '.join(rule.json_paths or ())}"
            )
            plan.append(f"{policy.name} / mask[{index}]: {what} style={rule.style}")
    return plan


def _print_text(
    decision: Decision,
    c: Classification,
    version: str,
    mask: list[str],
) -> None:
    def line(label: str, values: object) -> None:
        if isinstance(values, (list, tuple, frozenset, set)):
            shown = ", ".join(sorted(map(str, values))) or "-"
        else:
            shown = str(values)
        typer.echo(f"{label:<16}{shown}")

    line("decision:", decision.verdict.value)
    line("reason:", decision.reason or "-")
    line("policy version:", version)
    line("kinds:", c.kinds)
    line("tables read:", c.tables_read)
    line("tables written:", c.tables_written)
    line("columns:", c.columns)
    line("functions:", c.functions)
    flags = [
        name
        for name, on in (
            ("where absent", c.where_absent),
            ("locks", c.locks),
            ("sets search_path", c.sets_search_path),
        )
        if on
    ]
    line("flags:", flags)
    line("statements:", c.statement_count)
    if c.parse_error:
        line("parse error:", c.parse_error)
    typer.echo("matched rules:")
    for rule in decision.rules or ("(none)",):
        typer.echo(f"  {rule}")
    typer.echo("mask plan:")
    for entry in mask or ["(none)"]:
        typer.echo(f"  {entry}")


def _http_request(
    method: str,
    path: str,
    query: str,
    headers: list[str],
    body: str | None,
    content_type: str | None,
) -> HttpRequest:
    pairs: list[tuple[str, str]] = []
    for entry in headers:
        name, sep, value = entry.partition(":")
        if not sep or not name.strip():
            fail(f"--header expects 'Name: value', got {entry!r}")
        pairs.append((name.strip().lower(), value.strip()))
    if content_type is None:
        content_type = next((v for n, v in pairs if n == "content-type"), None)
    if content_type is None and body is not None:
        content_type = "application/json"
    data = None if body is None else body.encode("utf-8")
    return HttpRequest(
        method=method,
        path=path if path.startswith("/") else "/" + path,
        query=query.removeprefix("?"),
        headers=tuple(pairs),
        body=data,
        body_length=0 if data is None else len(data),
        content_type=content_type,
    )


def _print_http(
    decision: Decision, request: HttpRequest, needs_body: bool, version: str, mask: list[str]
) -> None:
    def line(label: str, value: str) -> None:
        typer.echo(f"{label:<16}{value}")

    line("decision:", decision.verdict.value)
    line("reason:", decision.reason or "-")
    line("policy version:", version)
    line(
        "request:",
        f"{request.method} {request.path}" + (f"?{request.query}" if request.query else ""),
    )
    line("body read:", "yes (a rule has json conditions)" if needs_body else "no")
    typer.echo("matched rules:")
    for rule in decision.rules or ("(none)",):
        typer.echo(f"  {rule}")
    typer.echo("mask plan:")
    for entry in mask or ["(none)"]:
        typer.echo(f"  {entry}")


@app.command("test")
def test(
    subject: Annotated[str, typer.Option("--subject", help="The caller's subject.")],
    connection: Annotated[str, typer.Option("--connection", help="The connection name.")],
    sql: Annotated[
        str | None,
        typer.Argument(help="The SQL text (a statement or a batch); omit it with --method."),
    ] = None,
    groups: Annotated[str, typer.Option("--groups", help="Comma-separated groups.")] = "",
    search_path: Annotated[
        str, typer.Option("--search-path", help="The session's search path, comma-separated.")
    ] = "public",
    prepared: Annotated[
        list[str] | None,
        typer.Option(
            "--prepared",
            help="A statement prepared earlier in the session, NAME=SQL (repeatable).",
        ),
    ] = None,
    parameters: Annotated[
        bool, typer.Option("--parameters", help="The statement is sent with bind parameters.")
    ] = False,
    method: Annotated[
        str | None,
        typer.Option("--method", help="HTTP: test a request with this method instead of SQL."),
    ] = None,
    path: Annotated[
        str, typer.Option("--path", help="HTTP: the path after the connection prefix.")
    ] = "/",
    query: Annotated[
        str, typer.Option("--query", help="HTTP: the query string, e.g. 'a=1&b=2'.")
    ] = "",
    header: Annotated[
        list[str] | None,
        typer.Option("--header", help="HTTP: a request header, 'Name: value' (repeatable)."),
    ] = None,
    body: Annotated[
        str | None, typer.Option("--body", help="HTTP: the request body (e.g. JSON).")
    ] = None,
    content_type: Annotated[
        str | None,
        typer.Option(
            "--content-type", help="HTTP: the body's type (default application/json with --body)."
        ),
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Print the decision, what the SQL was found to do (or the HTTP request), the matching rules
    and the mask plan."""
    if (sql is None) == (method is None):
        fail("give either the SQL text or --method (and --path) for an HTTP request")
    try:
        cfg = load_config(config)
    except CallgateError as exc:
        fail(exc.message)
    if cfg.connection(connection) is None:
        fail(f"no connection named {connection!r} in {config}")
    if method is not None:
        _test_http(
            cfg.policies,
            cfg.approvals,
            Principal(subject=subject, groups=frozenset(_split(groups)), method="policy_test"),
            connection,
            _http_request(method, path, query, header or [], body, content_type),
            as_json,
        )
        return
    if sql is None:  # pragma: no cover - checked above; for the type checker
        return
    known: dict[str, Classification] = {}
    for entry in prepared or ():
        name, sep, body = entry.partition("=")
        if not sep or not name.strip():
            fail(f"--prepared expects NAME=SQL, got {entry!r}")
        known[name.strip()] = classify(body)

    engine = PolicyEngine(cfg.policies, cfg.approvals)
    principal = Principal(subject=subject, groups=frozenset(_split(groups)), method="policy_test")
    c = classify(sql)
    if engine.applicable(principal, connection):
        decision = engine.decide_sql(
            principal,
            connection,
            c,
            search_path=_split(search_path),
            prepared=known,
            has_parameters=parameters,
        )
    else:
        decision = Decision(
            Verdict.DENY, (), "denied: no policy lets this caller use this connection"
        )
    shown = resolve_executes(c, known)
    mask = _mask_plan(engine, principal, connection)
    if as_json:
        print_json(
            {
                "decision": decision.verdict.value,
                "reason": decision.reason,
                "rules": list(decision.rules),
                "policy_version": engine.version,
                "classification": _classification_json(shown),
                "mask_plan": mask,
            }
        )
    else:
        _print_text(decision, shown, engine.version, mask)


def _test_http(
    policies: Any,
    approvals: Any,
    principal: Principal,
    connection: str,
    request: HttpRequest,
    as_json: bool,
) -> None:
    engine = PolicyEngine(policies, approvals)
    needs_body = engine.needs_request_body(principal, connection, request.method, request.path)
    if engine.applicable(principal, connection):
        decision = engine.decide_http(principal, connection, request)
    else:
        decision = Decision(
            Verdict.DENY, (), "denied: no policy lets this caller use this connection"
        )
    mask = _mask_plan(engine, principal, connection)
    if as_json:
        print_json(
            {
                "decision": decision.verdict.value,
                "reason": decision.reason,
                "rules": list(decision.rules),
                "policy_version": engine.version,
                "request": {
                    "method": request.method,
                    "path": request.path,
                    "query": request.query,
                    "body_read": needs_body,
                },
                "mask_plan": mask,
            }
        )
    else:
        _print_http(decision, request, needs_body, engine.version, mask)
