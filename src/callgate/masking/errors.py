"""Errors of the masking layer."""

from __future__ import annotations

from callgate.errors import UpstreamError


class MaskingFailed(UpstreamError):
    """A value that must be masked could not be (a malformed row, bytes that are not UTF-8, a
    format callgate cannot rewrite). The engine sends nothing more of that result and fails the
    statement: callgate never lets a value through because masking it failed (SPEC §5)."""

    sqlstate = "XX000"
    #: rows of the result may already be with the caller: the PostgreSQL engine ends the session
    #: (the only way to stop the result and keep client and server in step)
    fatal = True
    mysql_code = 1105
    http_status = 502

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"callgate could not mask the result ({reason}); the rows were not sent",
            hint="nothing of the result after this point was delivered; ask an administrator",
        )
        self.reason = reason


class NotJson(MaskingFailed):
    """A body callgate could read is not JSON. Fails a body labelled JSON; a body that only
    looked like JSON is then treated as what it is (text, or data callgate does not read)."""
