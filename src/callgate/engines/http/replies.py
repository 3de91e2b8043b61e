"""callgate's own answers to an HTTP caller: JSON errors (SPEC §4), 100 Continue.

Every refusal is ``{"error": {"code": …, "message": …}}`` with the status of SPEC §4; a review
adds ``review_id``. Messages come from :class:`~callgate.errors.CallgateError` and never carry a
secret.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Final

from callgate.approvals import ApprovalPending, ReviewRefused
from callgate.errors import (
    AuditUnavailable,
    AuthenticationFailed,
    CallgateError,
    ConnectRefused,
    InternalError,
    PlaintextRefused,
    SessionTerminated,
    StatementDenied,
    TooManyFailures,
    UnknownConnection,
    UpstreamAuthFailed,
    UpstreamError,
)
from callgate.protocols.http import encode_response_head

#: RFC 9110 §15.2.1, sent before reading a body the caller held back (``Expect: 100-continue``).
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

_BY_TYPE: Final[tuple[tuple[type[CallgateError], str], ...]] = (
    (ApprovalPending, "review_pending"),
    (ReviewRefused, "review_refused"),
    (StatementDenied, "denied"),
    (TooManyFailures, "too_many_failures"),
    (AuthenticationFailed, "unauthorized"),
    (UnknownConnection, "not_found"),
    (ConnectRefused, "forbidden"),
    (PlaintextRefused, "tls_required"),
    (AuditUnavailable, "audit_unavailable"),
    (SessionTerminated, "unavailable"),
    (UpstreamAuthFailed, "upstream_credential"),
    (UpstreamError, "bad_gateway"),
    (InternalError, "internal_error"),
)


class MethodRefused(CallgateError):
    """A method callgate never relays: TRACE echoes the request, injected credential included
    (RFC 9110 §9.3.8 warns of exactly that)."""

    http_status = 405
    code = "method_not_allowed"


class BodyTooLarge(CallgateError):
    """A body that must be inspected is over ``gateway.limits.http_max_inspected_body``."""

    http_status = 413
    code = "payload_too_large"


def error_code(exc: CallgateError) -> str:
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return code
    for cls, name in _BY_TYPE:
        if isinstance(exc, cls):
            return name
    return "error"


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def error_response(
    exc: CallgateError,
    *,
    close: bool,
    review_id: str | None = None,
    head_only: bool = False,
) -> tuple[int, bytes]:
    """The status and whole response (head and JSON body) for ``exc``."""
    status = exc.http_status
    error: dict[str, object] = {"code": error_code(exc), "message": exc.message}
    if review_id is not None:
        error["review_id"] = review_id
    if exc.hint:
        error["hint"] = exc.hint
    body = json.dumps({"error": error}, separators=(",", ":")).encode()
    fields: list[tuple[str, str]] = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
    ]
    if isinstance(exc, AuthenticationFailed):
        # RFC 9110 §11.6.1: a 401 MUST say how to authenticate (RFC 6750 §3 for Bearer).
        fields.append(("WWW-Authenticate", 'Bearer realm="callgate"'))
    if isinstance(exc, MethodRefused):
        fields.append(("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"))
    if close:
        fields.append(("Connection", "close"))
    head = encode_response_head(status, reason_phrase(status), tuple(fields))
    return status, head if head_only else head + body
