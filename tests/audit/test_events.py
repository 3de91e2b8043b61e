"""The hand-written canonical JSON of the per-statement payloads equals ``canonical_json``."""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from callgate.audit import events
from callgate.model import Decision, HttpRequest, SqlCommand, Verdict
from callgate.protocols.http.target import mask_query
from callgate.store.chain import canonical_json

texts = st.text(max_size=40)
maybe_texts = st.none() | texts


@given(
    sql=texts,
    params=st.lists(st.none() | st.binary(max_size=12), max_size=4),
    formats=st.lists(st.sampled_from([0, 1]), max_size=4),
    name=maybe_texts,
    op=st.sampled_from(["query", "execute", "function_call"]),
    verdict=st.sampled_from(list(Verdict)),
    rules=st.lists(texts, max_size=3),
    reason=texts,
    scrubbed=st.none() | st.lists(st.none() | st.binary(max_size=6), max_size=3),
)
def test_query_payload_is_canonical(
    sql: str,
    params: list[bytes | None],
    formats: list[int],
    name: str | None,
    op: str,
    verdict: Verdict,
    rules: list[str],
    reason: str,
    scrubbed: list[bytes | None] | None,
) -> None:
    command = SqlCommand(sql, tuple(params), tuple(formats), name, op)
    decision = Decision(verdict, tuple(rules), reason)
    recorded = command.params if scrubbed is None else scrubbed
    expected = canonical_json(
        {
            "sql": sql,
            "params": [events.render_param(v) for v in recorded],
            "param_formats": formats,
            "statement_name": name,
            "op": op,
            "verdict": verdict.value,
            "rules": rules,
            "reason": reason,
        }
    )
    assert events.query(command, decision, scrubbed) == expected


@given(
    seq=st.integers(min_value=1, max_value=2**40),
    tag=maybe_texts,
    rows=st.none() | st.integers(min_value=0, max_value=2**40),
    sqlstate=maybe_texts,
    message=maybe_texts,
    duration=st.floats(allow_nan=True, allow_infinity=True),
)
def test_query_result_payload_is_canonical(
    seq: int,
    tag: str | None,
    rows: int | None,
    sqlstate: str | None,
    message: str | None,
    duration: float,
) -> None:
    error = (
        None if sqlstate is None and message is None else {"sqlstate": sqlstate, "message": message}
    )
    expected = canonical_json(
        {
            "statement_seq": seq,
            "tag": tag,
            "rows": rows,
            "error": error,
            "duration_ms": round(duration, 3) if math.isfinite(duration) else None,
        }
    )
    got = events.query_result(
        seq,
        tag=tag,
        rows=rows,
        error_sqlstate=sqlstate,
        error_message=message,
        duration_ms=duration,
    )
    assert got == expected
    json.loads(got)  # and it is JSON


@given(
    method=st.sampled_from(["GET", "POST", "DELETE"]),
    path=texts,
    query=texts,
    length=st.none() | st.integers(min_value=0, max_value=2**40),
    content_type=maybe_texts,
    verdict=st.sampled_from(list(Verdict)),
    rules=st.lists(texts, max_size=3),
    reason=texts,
)
def test_http_request_payload_is_canonical(
    method: str,
    path: str,
    query: str,
    length: int | None,
    content_type: str | None,
    verdict: Verdict,
    rules: list[str],
    reason: str,
) -> None:
    request = HttpRequest(method, path, query, body_length=length, content_type=content_type)
    decision = Decision(verdict, tuple(rules), reason)
    expected = canonical_json(
        {
            "method": method,
            "path": path,
            "query": mask_query(query),
            "content_type": content_type,
            "body_length": length,
            "verdict": verdict.value,
            "rules": rules,
            "reason": reason,
        }
    )
    assert events.http_request(request, decision) == expected


@given(
    seq=st.integers(min_value=1, max_value=2**40),
    status=st.integers(min_value=100, max_value=599),
    sent=st.integers(min_value=0, max_value=2**40),
    received=st.integers(min_value=0, max_value=2**40),
    duration=st.floats(allow_nan=True, allow_infinity=True),
    error=maybe_texts,
)
def test_http_response_payload_is_canonical(
    seq: int, status: int, sent: int, received: int, duration: float, error: str | None
) -> None:
    expected = canonical_json(
        {
            "request_seq": seq,
            "status": status,
            "bytes_from_client": sent,
            "bytes_to_client": received,
            "duration_ms": round(duration, 3) if math.isfinite(duration) else None,
            "error": error,
        }
    )
    got = events.http_response(
        seq,
        status=status,
        bytes_from_client=sent,
        bytes_to_client=received,
        duration_ms=duration,
        error=error,
    )
    assert got == expected
