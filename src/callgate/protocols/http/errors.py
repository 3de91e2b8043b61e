"""HTTP/1.1 protocol errors, each with the status callgate answers with.

Caller-side errors (:class:`HttpRequestError` and its subclasses) are 4xx/5xx answers to a request
callgate refuses to forward; after any of them the connection is closed, because once framing is
in doubt nothing after the bad message can be trusted (RFC 9112 §11.2, request smuggling).
Upstream-side errors (:class:`HttpResponseError`) become a 502 for the caller.
"""

from __future__ import annotations

from callgate.errors import FeatureNotSupported, ProtocolViolation, UpstreamProtocolViolation


class HttpRequestError(ProtocolViolation):
    """A malformed or ambiguous request (400). ``code`` is the stable name in the JSON error."""

    http_status = 400
    code = "bad_request"


class HeadTooLarge(HttpRequestError):
    """The request head (or one of its fields) is over a limit (RFC 6585 §5)."""

    http_status = 431
    code = "header_too_large"


class TargetTooLong(HttpRequestError):
    """The request line is over the limit (RFC 9112 §3: 414 URI Too Long)."""

    http_status = 414
    code = "uri_too_long"


class VersionNotSupported(HttpRequestError):
    """An HTTP major version other than 1 (RFC 9110 §15.6.6)."""

    http_status = 505
    code = "http_version_not_supported"


class ExpectationFailed(HttpRequestError):
    """An ``Expect`` other than ``100-continue`` (RFC 9110 §10.1.1)."""

    http_status = 417
    code = "expectation_failed"


class UnsupportedRequest(FeatureNotSupported):
    """A well-formed request callgate does not relay (CONNECT, ``OPTIONS *``, a transfer coding
    other than chunked): 501 (RFC 9110 §15.6.2)."""

    http_status = 501
    code = "not_implemented"


class HttpResponseError(UpstreamProtocolViolation):
    """The upstream sent a response callgate cannot frame or trust (502)."""

    http_status = 502
    code = "bad_gateway"
