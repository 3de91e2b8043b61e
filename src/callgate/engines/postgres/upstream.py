"""Opening an authenticated connection to the upstream PostgreSQL with callgate's credential."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass

import scramp

from callgate.engines.postgres.wire import buffered, read_message
from callgate.errors import (
    CallgateError,
    UpstreamAuthFailed,
    UpstreamError,
    UpstreamProtocolViolation,
    UpstreamUnavailable,
)
from callgate.protocols.postgres import messages as m
from callgate.protocols.postgres.auth import md5_response, sasl_mechanisms

log = logging.getLogger("callgate.postgres.upstream")

#: Startup parameters a caller may pass on to the upstream. Everything else (``options``,
#: ``user``, ``database``, ``role``, ``session_authorization``, replication...) could change whose
#: privileges the session runs with or bypass callgate, so it is dropped.
FORWARDED_STARTUP_PARAMETERS = frozenset(
    {
        "application_name",
        "client_encoding",
        "datestyle",
        "intervalstyle",
        "timezone",
        "extra_float_digits",
        "search_path",
        "bytea_output",
        "lc_monetary",
        "lc_numeric",
        "lc_time",
        "standard_conforming_strings",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "geqo",
        "jit",
    }
)

# Upstream messages during startup are small; a larger one means something is wrong.
MAX_STARTUP_MESSAGE = 1 << 20


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    host: str
    port: int
    database: str
    user: str
    password: str | None
    tls_mode: str  # disable | prefer | require | verify-full
    ssl_context: ssl.SSLContext | None
    connect_timeout: float


@dataclass(slots=True)
class UpstreamConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    parameters: list[tuple[str, str]]
    process_id: int
    secret_key: int
    transaction_status: str
    tls: bool
    #: ``parameters`` as ParameterStatus messages, made once for every caller the connection
    #: serves; ``None`` after ``parameters`` changed (see :meth:`status_messages`).
    _status_block: bytes | None = None

    def status_messages(self) -> bytes:
        """The ParameterStatus messages a caller's startup replays, built once per change."""
        block = self._status_block
        if block is None:
            block = b"".join(m.encode_parameter_status(k, v) for k, v in self.parameters)
            self._status_block = block
        return block

    def set_parameter(self, name: str, value: str) -> None:
        """Record a ParameterStatus the server sent (it replaces an earlier value)."""
        self.parameters = [(k, v) for k, v in self.parameters if k != name]
        self.parameters.append((name, value))
        self._status_block = None


def filter_startup_parameters(params: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return tuple((k, v) for k, v in params if k.lower() in FORWARDED_STARTUP_PARAMETERS)


async def open_transport(
    target: UpstreamTarget,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
    """TCP connect and negotiate TLS according to the connection's mode."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port), target.connect_timeout
        )
    except (OSError, TimeoutError) as exc:
        raise UpstreamUnavailable(
            f"could not reach the upstream database at {target.host}:{target.port}"
        ) from exc
    if target.tls_mode == "disable" or target.ssl_context is None:
        return reader, writer, False
    try:
        writer.write(m.encode_ssl_request())
        answer = await asyncio.wait_for(reader.readexactly(1), target.connect_timeout)
        if answer == b"S":
            if buffered(reader):
                raise UpstreamProtocolViolation("upstream sent data before the TLS handshake")
            await asyncio.wait_for(
                writer.start_tls(target.ssl_context, server_hostname=target.host),
                target.connect_timeout,
            )
            return reader, writer, True
        if answer != b"N":
            raise UpstreamProtocolViolation("upstream answered SSLRequest with garbage")
        if target.tls_mode in ("require", "verify-full"):
            raise UpstreamUnavailable(
                f"the upstream at {target.host}:{target.port} does not offer TLS, "
                f"which the connection requires (tls: {target.tls_mode})"
            )
        return reader, writer, False
    except ssl.SSLError as exc:
        writer.close()
        raise UpstreamUnavailable(
            f"TLS with the upstream at {target.host}:{target.port} failed: {exc.reason}"
        ) from exc
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        writer.close()
        raise UpstreamUnavailable(
            f"the upstream at {target.host}:{target.port} closed the connection during TLS setup"
        ) from exc
    except CallgateError:
        writer.close()
        raise


async def connect(
    target: UpstreamTarget, client_parameters: tuple[tuple[str, str], ...]
) -> UpstreamConnection:
    reader, writer, tls = await open_transport(target)
    try:
        return await asyncio.wait_for(
            _handshake(reader, writer, tls, target, client_parameters), target.connect_timeout
        )
    except TimeoutError as exc:
        writer.close()
        raise UpstreamUnavailable("the upstream did not finish the startup in time") from exc
    except asyncio.IncompleteReadError as exc:
        writer.close()
        raise UpstreamUnavailable("the upstream closed the connection during startup") from exc
    except OSError as exc:
        writer.close()
        raise UpstreamUnavailable("the upstream connection failed during startup") from exc
    except BaseException:
        writer.close()
        raise


async def _handshake(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    tls: bool,
    target: UpstreamTarget,
    client_parameters: tuple[tuple[str, str], ...],
) -> UpstreamConnection:
    params = (("user", target.user), ("database", target.database)) + filter_startup_parameters(
        client_parameters
    )
    writer.write(m.encode_startup(params))
    await _authenticate(reader, writer, target)
    server_params: list[tuple[str, str]] = []
    pid, key = 0, 0
    while True:
        f = await read_message(reader, max_size=MAX_STARTUP_MESSAGE, upstream=True)
        if f.type == m.BackendType.PARAMETER_STATUS:
            server_params.append(m.decode_parameter_status(f.body))
        elif f.type == m.BackendType.BACKEND_KEY_DATA:
            pid, key = m.decode_backend_key_data(f.body)
        elif f.type == m.BackendType.READY_FOR_QUERY:
            status = m.decode_ready_for_query(f.body)
            return UpstreamConnection(reader, writer, server_params, pid, key, status, tls)
        elif f.type == m.BackendType.ERROR_RESPONSE:
            raise _startup_error(m.decode_error_fields(f.body))
        elif f.type == m.BackendType.NOTICE_RESPONSE:
            continue
        elif f.type == m.BackendType.NEGOTIATE_PROTOCOL_VERSION:
            continue  # the server ignores parameters it does not know; fine for us
        else:
            raise UpstreamProtocolViolation(
                f"unexpected upstream message {chr(f.type)!r} at startup"
            )


def _startup_error(fields: m.ErrorFields) -> UpstreamError:
    code = fields.sqlstate or ""
    # The upstream's message may name the role or database; it never holds our password.
    if code.startswith("28"):
        return UpstreamAuthFailed(
            "the upstream database refused callgate's credential for this connection",
            detail=f"upstream SQLSTATE {code}",
        )
    return UpstreamUnavailable(
        f"the upstream refused the session: {fields.message or 'no message'}",
        detail=f"upstream SQLSTATE {code}",
    )


async def _authenticate(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: UpstreamTarget
) -> None:
    scram: scramp.ScramClient | None = None
    while True:
        f = await read_message(reader, max_size=MAX_STARTUP_MESSAGE, upstream=True)
        if f.type == m.BackendType.ERROR_RESPONSE:
            raise _startup_error(m.decode_error_fields(f.body))
        if f.type == m.BackendType.NEGOTIATE_PROTOCOL_VERSION:
            continue
        if f.type != m.BackendType.AUTHENTICATION:
            raise UpstreamProtocolViolation(
                f"unexpected upstream message {chr(f.type)!r} during authentication"
            )
        code, data = m.decode_authentication(f.body)
        if code == m.AuthCode.OK:
            return
        password = target.password
        if (
            code in (m.AuthCode.CLEARTEXT_PASSWORD, m.AuthCode.MD5_PASSWORD, m.AuthCode.SASL)
            and password is None
        ):
            raise UpstreamAuthFailed(
                "the upstream database asks for a password and the connection has none"
            )
        if code == m.AuthCode.CLEARTEXT_PASSWORD:
            if not _transport_is_tls(writer):
                log.warning("upstream asked for a cleartext password over a connection without TLS")
            writer.write(m.encode_password((password or "").encode()))
        elif code == m.AuthCode.MD5_PASSWORD:
            writer.write(m.encode_password(md5_response(target.user, password or "", data)))
        elif code == m.AuthCode.SASL:
            mechs = sasl_mechanisms(data)
            if "SCRAM-SHA-256" not in mechs:
                raise UpstreamAuthFailed(
                    f"the upstream offers no supported SASL mechanism ({', '.join(mechs)})"
                )
            scram = scramp.ScramClient(["SCRAM-SHA-256"], target.user, password or "")
            first = scram.get_client_first().encode()
            writer.write(m.encode_sasl_initial("SCRAM-SHA-256", first))
        elif code == m.AuthCode.SASL_CONTINUE:
            if scram is None:
                raise UpstreamProtocolViolation("upstream sent SASLContinue without SASL")
            try:
                scram.set_server_first(data.decode())
                final = scram.get_client_final().encode()
            except Exception as exc:
                raise UpstreamAuthFailed("SCRAM exchange with the upstream failed") from exc
            writer.write(m.encode_sasl_response(final))
        elif code == m.AuthCode.SASL_FINAL:
            if scram is None:
                raise UpstreamProtocolViolation("upstream sent SASLFinal without SASL")
            try:
                scram.set_server_final(data.decode())
            except Exception as exc:
                # The server could not prove it knows the password: do not trust it.
                raise UpstreamAuthFailed("the upstream failed SCRAM server verification") from exc
        else:
            raise UpstreamAuthFailed(
                f"the upstream asks for an authentication method callgate does not support ({code})"
            )
        await writer.drain()


def _transport_is_tls(writer: asyncio.StreamWriter) -> bool:
    return writer.get_extra_info("sslcontext") is not None


async def send_cancel(target: UpstreamTarget, process_id: int, secret_key: int) -> None:
    """Forward a cancel request for a session's upstream backend (§55.2.7)."""
    reader, writer, _ = await open_transport(target)
    try:
        writer.write(m.encode_cancel_request(process_id, secret_key))
        await writer.drain()
        # The server closes the connection without answering; wait briefly for that.
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(reader.read(1), 2.0)
    finally:
        writer.close()


async def learn_search_path(conn: UpstreamConnection) -> tuple[str, ...] | None:
    """The upstream session's effective search path; None if unknown.

    ``current_schemas(false)`` is the path as the server resolves names: ``$user`` expanded and
    schemas that do not exist left out. Asked once at session start (PostgreSQL does not report
    search_path changes), before the caller's first statement, so policy resolves unqualified
    table names as the server will.
    """
    conn.writer.write(
        m.encode_query("SELECT pg_catalog.current_schemas(false)::text, current_user::text")
    )
    await conn.writer.drain()
    row: list[str | None] | None = None
    failed = False
    while True:
        f = await read_message(conn.reader, max_size=MAX_STARTUP_MESSAGE, upstream=True)
        if f.type == m.BackendType.DATA_ROW:
            row = m.decode_data_row_text(f.body)
        elif f.type == m.BackendType.ERROR_RESPONSE:
            failed = True
        elif f.type == m.BackendType.READY_FOR_QUERY:
            conn.transaction_status = m.decode_ready_for_query(f.body)
            break
    if failed or row is None or len(row) != 2 or row[0] is None or row[1] is None:
        return None
    return parse_name_array(row[0])


def parse_name_array(text: str) -> tuple[str, ...] | None:
    """A ``name[]`` in PostgreSQL's text form (``{public,"My Schema"}``); None if malformed."""
    if not (text.startswith("{") and text.endswith("}")):
        return None
    out: list[str] = []
    body = text[1:-1]
    i = 0
    while i < len(body):
        if body[i] == '"':
            item: list[str] = []
            i += 1
            while i < len(body) and body[i] != '"':
                if body[i] == "\\" and i + 1 < len(body):
                    i += 1
                item.append(body[i])
                i += 1
            if i >= len(body):
                return None
            out.append("".join(item))
            i += 1
        else:
            end = body.find(",", i)
            end = len(body) if end < 0 else end
            out.append(body[i:end])
            i = end
        if i < len(body):
            if body[i] != ",":
                return None
            i += 1
    return tuple(out)
