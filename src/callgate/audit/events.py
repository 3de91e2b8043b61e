"""What each audit event records: payload builders (pure functions, canonical JSON out).

Event types: ``session.start``, ``query``, ``query.result``, ``session.end`` (in a session's chain),
``http.request``, ``http.response``, ``http.body`` (HTTP sessions) and ``auth.failure`` (outside
any session). Payloads never carry a credential or a secret.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii as _quote

from callgate.model import Decision, HttpRequest, SessionInfo, SqlCommand
from callgate.protocols.http.target import mask_query
from callgate.store.chain import canonical_json

SESSION_START = "session.start"
QUERY = "query"
QUERY_RESULT = "query.result"
SESSION_END = "session.end"
AUTH_FAILURE = "auth.failure"
#: the first rows of a result as the caller received them (``gateway.audit.record_rows``)
QUERY_ROWS = "query.rows"
#: which result columns of a statement were masked, why and how many values (never a value)
QUERY_MASKED = "query.masked"
#: one HTTP request a caller sent (the HTTP engine's statement): method, path, masked query
HTTP_REQUEST = "http.request"
#: how an HTTP request ended: status, bytes, duration
HTTP_RESPONSE = "http.response"
#: the first ``record_body`` bytes of a request and its response, as forwarded and delivered
HTTP_BODY = "http.body"
#: event types that count as one statement of a session (``session.end`` ``statements``)
STATEMENT_TYPES = (QUERY, HTTP_REQUEST)
#: an export sink's backlog passed its bound and its oldest undelivered events were dropped
BACKLOG_DROPPED = "export.backlog_dropped"
#: ``end_reason`` of a session closed at start because the gateway serving it had died
CRASH_REASON = "ended by crash"

JsonParam = str | dict[str, str] | None


def render_param(value: bytes | None) -> JsonParam:
    """A bind parameter as recorded: text if it is valid UTF-8, else ``{"base64": "..."}``.

    The object form is the marker: a text parameter is always a JSON string, so the two never
    collide. ``None`` is SQL NULL.
    """
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}


def session_start(info: SessionInfo) -> str:
    p = info.principal
    return canonical_json(
        {
            "subject": p.subject,
            "groups": sorted(p.groups),
            "auth_method": p.method,
            "credential_id": p.credential_id,
            "issuer": p.issuer,
            "expires_at": p.expires_at,
            "connection": info.connection,
            "protocol": info.protocol,
            "client_addr": info.client_addr,
            "client_user": info.client_user,
            "application_name": info.application_name,
            "tls": info.tls,
        }
    )


def _text(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def _texts(values: Sequence[str]) -> str:
    return "[" + ",".join([_quote(v) for v in values]) + "]"


# ``query`` and ``query.result`` are built for every statement, so their canonical JSON is
# written out by hand (keys in sorted order) instead of through the encoder: a third of the
# cost. tests/audit/test_events.py checks both against ``canonical_json`` of the same dict.


def query(
    command: SqlCommand, decision: Decision, params: Sequence[bytes | None] | None = None
) -> str:
    """``params``: the values to record (the scrubbed ones); the command's own by default."""
    values = command.params if params is None else params
    rendered = canonical_json([render_param(v) for v in values]) if values else "[]"
    formats = command.param_formats
    return (
        f'{{"op":{_quote(command.op)},'
        f'"param_formats":[{",".join([str(int(f)) for f in formats])}],'
        f'"params":{rendered},'
        f'"reason":{_text(decision.reason)},'
        f'"rules":{_texts(decision.rules)},'
        f'"sql":{_quote(command.sql)},'
        f'"statement_name":{_text(command.statement_name)},'
        f'"verdict":{_quote(decision.verdict.value)}}}'
    )


def query_result(
    seq: int,
    *,
    tag: str | None,
    rows: int | None,
    error_sqlstate: str | None,
    error_message: str | None,
    duration_ms: float,
) -> str:
    if error_sqlstate is None and error_message is None:
        error = "null"
    else:
        error = f'{{"message":{_text(error_message)},"sqlstate":{_text(error_sqlstate)}}}'
    duration = float(duration_ms)
    # canonical JSON has no NaN or infinity; a broken timer must not lose the event
    took = repr(round(duration, 3)) if math.isfinite(duration) else "null"
    return (
        f'{{"duration_ms":{took},"error":{error},'
        f'"rows":{"null" if rows is None else int(rows)},'
        f'"statement_seq":{int(seq)},"tag":{_text(tag)}}}'
    )


def session_end(
    reason: str, *, bytes_from_client: int, bytes_to_client: int, statements: int
) -> str:
    return canonical_json(
        {
            "reason": reason,
            "bytes_from_client": bytes_from_client,
            "bytes_to_client": bytes_to_client,
            "statements": statements,
        }
    )


def auth_failure(*, protocol: str, source: str, reason: str, issuer: str | None) -> str:
    return canonical_json(
        {"protocol": protocol, "source": source, "reason": reason, "issuer": issuer}
    )


def render_cell(value: bytes | str | None) -> JsonParam:
    """A result cell as recorded: like a parameter (text, ``{"base64": …}`` or ``null``)."""
    if isinstance(value, str):
        return value
    return render_param(value)


def query_rows(
    seq: int,
    columns: Sequence[str],
    rows: Sequence[Sequence[bytes | str | None]],
    *,
    truncated: bool,
) -> str:
    return canonical_json(
        {
            "statement_seq": seq,
            "columns": list(columns),
            "rows": [[render_cell(c) for c in row] for row in rows],
            "truncated": truncated,
        }
    )


def query_masked(seq: int, columns: Sequence[tuple[str, str, int]]) -> str:
    return canonical_json(
        {
            "statement_seq": seq,
            "columns": [
                {"column": name, "source": why, "values": count} for name, why, count in columns
            ],
        }
    )


def backlog_dropped(
    *, sink: str, dropped: int, first_event_id: int | None, last_event_id: int | None, bound: int
) -> str:
    return canonical_json(
        {
            "sink": sink,
            "dropped": dropped,
            "first_event_id": first_event_id,
            "last_event_id": last_event_id,
            "max_backlog": bound,
        }
    )


def _duration(duration_ms: float) -> float | None:
    duration = float(duration_ms)
    return round(duration, 3) if math.isfinite(duration) else None


def http_request(request: HttpRequest, decision: Decision) -> str:
    """An HTTP request as recorded: the query with secret-looking parameters masked (their
    names are kept), never a header value (the caller's credential was one). Canonical JSON
    written by hand, like :func:`query`."""
    length = request.body_length
    return (
        f'{{"body_length":{"null" if length is None else int(length)},'
        f'"content_type":{_text(request.content_type)},'
        f'"method":{_quote(request.method)},'
        f'"path":{_quote(request.path)},'
        f'"query":{_quote(mask_query(request.query))},'
        f'"reason":{_text(decision.reason)},'
        f'"rules":{_texts(decision.rules)},'
        f'"verdict":{_quote(decision.verdict.value)}}}'
    )


def http_response(
    seq: int,
    *,
    status: int,
    bytes_from_client: int,
    bytes_to_client: int,
    duration_ms: float,
    error: str | None,
) -> str:
    took = _duration(duration_ms)
    return (
        f'{{"bytes_from_client":{int(bytes_from_client)},'
        f'"bytes_to_client":{int(bytes_to_client)},'
        f'"duration_ms":{"null" if took is None else repr(took)},'
        f'"error":{_text(error)},'
        f'"request_seq":{int(seq)},'
        f'"status":{int(status)}}}'
    )


def http_body(
    seq: int,
    *,
    request: bytes | None,
    response: bytes | None,
    request_truncated: bool,
    response_truncated: bool,
) -> str:
    return canonical_json(
        {
            "request_seq": seq,
            "request": render_param(request),
            "request_truncated": request_truncated,
            "response": render_param(response),
            "response_truncated": response_truncated,
        }
    )
