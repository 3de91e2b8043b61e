"""``listeners:`` — where callgate accepts callers."""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import PlainValidator, StrictBool, model_validator

from callgate.config.fields import (
    ConfigModel,
    ExistingFile,
    PositiveDuration,
    describe_type,
    message_error,
    path_error,
)

ListenerProtocol = Literal["postgres", "mysql", "http", "api"]

_BIND = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d{1,5})")
_BIND_EXPECTED = 'expected "HOST:PORT" (IPv6 as "[::1]:PORT"), port 0 to 65535'


def split_bind(bind: str) -> tuple[str, int]:
    """``"127.0.0.1:5432"`` → ``("127.0.0.1", 5432)``; ``"[::1]:5432"`` → ``("::1", 5432)``."""
    match = _BIND.fullmatch(bind)
    if match is None:
        raise ValueError(f"{_BIND_EXPECTED}, got {bind!r}")
    port = int(match.group("port"))
    if port > 65535:
        raise ValueError(f"{_BIND_EXPECTED}, got {bind!r}")
    v6 = match.group("v6")
    if v6 is not None:
        try:
            ipaddress.IPv6Address(v6)
        except ValueError:
            raise ValueError(f"{_BIND_EXPECTED}; {v6!r} is not an IPv6 address") from None
        return v6, port
    return match.group("host"), port


def _to_bind(value: object) -> str:
    if not isinstance(value, str):
        raise message_error(f"{_BIND_EXPECTED}, got {describe_type(value)}")
    try:
        split_bind(value)
    except ValueError as exc:
        raise message_error(str(exc)) from None
    return value


Bind = Annotated[str, PlainValidator(_to_bind)]


class ListenerConfig(ConfigModel):
    protocol: ListenerProtocol
    #: ``HOST:PORT``; port 0 picks a free port (tests)
    bind: Bind
    #: also accept plaintext connections (loopback, development); TLS is still offered when
    #: gateway.tls is set
    allow_plaintext: StrictBool = False
    #: CA bundle to verify client certificates on this listener (overrides gateway.tls.client_ca)
    client_ca: ExistingFile | None = None
    #: http: how long a keep-alive connection may wait for its next request before callgate
    #: closes it
    idle_timeout: PositiveDuration = timedelta(seconds=60)

    @model_validator(mode="after")
    def _idle_timeout_is_for_http(self) -> ListenerConfig:
        if "idle_timeout" in self.model_fields_set and self.protocol != "http":
            raise path_error(
                "idle_timeout",
                "idle_timeout applies to http listeners only (a keep-alive connection waiting"
                f" for its next request); a {self.protocol} listener does not use it",
            )
        return self

    @property
    def host(self) -> str:
        return split_bind(self.bind)[0]

    @property
    def port(self) -> int:
        return split_bind(self.bind)[1]
