"""The one error tree of callgate.

Every error a caller can see is a :class:`CallgateError`. Each engine renders it in its own
protocol: PostgreSQL uses :attr:`sqlstate`, MySQL :attr:`mysql_code`, HTTP :attr:`http_status`
(SPEC §4). Messages are written for the caller and must never contain a secret.
"""

from __future__ import annotations


class CallgateError(Exception):
    """Root of every error callgate raises on purpose."""

    sqlstate: str = "XX000"
    mysql_code: int = 1105
    http_status: int = 500
    #: PostgreSQL severity used when an engine renders the error; FATAL ends the session.
    fatal: bool = False

    def __init__(self, message: str, *, detail: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint


class CallerError(CallgateError):
    """The caller did something callgate refuses (bad credential, bad bytes, a denied statement)."""


class UpstreamError(CallgateError):
    """The upstream (database or API) failed or misbehaved."""


class ConfigError(CallgateError):
    """The configuration is invalid. ``path`` is the key path, e.g. ``connections[0].upstream``."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


class SecretError(ConfigError):
    """A secret reference could not be resolved. The message names the reference, never a value."""


# --- caller side -------------------------------------------------------------------------------


class ProtocolViolation(CallerError):
    """Malformed or oversized input from the caller; ends that session."""

    sqlstate = "08P01"
    mysql_code = 1047
    http_status = 400
    fatal = True


class FeatureNotSupported(CallerError):
    sqlstate = "0A000"
    mysql_code = 1235
    http_status = 501
    fatal = True


class AuthenticationFailed(CallerError):
    """Bad, expired or revoked credential (or none where one is required)."""

    sqlstate = "28P01"
    mysql_code = 1045
    http_status = 401
    fatal = True


class TooManyFailures(AuthenticationFailed):
    """Too many failed attempts from one source; refused for a while."""


class PlaintextRefused(CallerError):
    sqlstate = "28000"
    mysql_code = 1045
    http_status = 403
    fatal = True


class UnknownConnection(CallerError):
    sqlstate = "3D000"
    mysql_code = 1049
    http_status = 404
    fatal = True


class ConnectRefused(CallerError):
    """The principal may not use this connection at all."""

    sqlstate = "42501"
    mysql_code = 1044
    http_status = 403
    fatal = True


class StatementDenied(CallerError):
    """A statement or request denied by policy. The message names the policy and rule."""

    sqlstate = "42501"
    mysql_code = 1142
    http_status = 403


class SessionTerminated(CallerError):
    """The gateway ends the session (credential expired or revoked, shutdown)."""

    sqlstate = "57P01"
    mysql_code = 1927
    http_status = 503
    fatal = True


# --- gateway / upstream side ---------------------------------------------------------------------


class UpstreamUnavailable(UpstreamError):
    sqlstate = "08006"
    mysql_code = 2003
    http_status = 502
    fatal = True


class UpstreamProtocolViolation(UpstreamError):
    """The upstream sent bytes we cannot make sense of; the session ends."""

    sqlstate = "08P01"
    mysql_code = 2027
    http_status = 502
    fatal = True


class UpstreamAuthFailed(UpstreamError):
    """callgate's own credential was refused by the upstream (said plainly, never the secret)."""

    sqlstate = "08006"
    mysql_code = 2003
    http_status = 502
    fatal = True


class InternalError(CallgateError):
    """A bug in callgate. The session ends; the details are in the gateway's log only."""

    fatal = True


class AuditUnavailable(CallgateError):
    """The audit store cannot take the event and ``on_store_failure: deny`` is set."""

    sqlstate = "58000"
    mysql_code = 1105
    http_status = 503
