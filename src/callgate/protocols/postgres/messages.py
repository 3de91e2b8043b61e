"""Typed PostgreSQL protocol messages and their encoders/decoders (PostgreSQL docs §55.7)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from callgate.errors import ProtocolViolation

_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_I16 = struct.Struct("!h")
_HDR = struct.Struct("!cI")

PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

# Startup packets are tiny; libpq caps them at 10000 bytes (MAX_STARTUP_PACKET_LENGTH); so do we.
MAX_STARTUP_PACKET = 10000


class FrontendType:
    """First byte of frontend (client → server) messages."""

    BIND = ord("B")
    CLOSE = ord("C")
    COPY_DATA = ord("d")
    COPY_DONE = ord("c")
    COPY_FAIL = ord("f")
    DESCRIBE = ord("D")
    EXECUTE = ord("E")
    FLUSH = ord("H")
    FUNCTION_CALL = ord("F")
    PARSE = ord("P")
    PASSWORD = ord("p")  # also SASLInitialResponse, SASLResponse, GSSResponse
    QUERY = ord("Q")
    SYNC = ord("S")
    TERMINATE = ord("X")


class BackendType:
    """First byte of backend (server → client) messages."""

    AUTHENTICATION = ord("R")
    BACKEND_KEY_DATA = ord("K")
    BIND_COMPLETE = ord("2")
    CLOSE_COMPLETE = ord("3")
    COMMAND_COMPLETE = ord("C")
    COPY_DATA = ord("d")
    COPY_DONE = ord("c")
    COPY_IN_RESPONSE = ord("G")
    COPY_OUT_RESPONSE = ord("H")
    COPY_BOTH_RESPONSE = ord("W")
    DATA_ROW = ord("D")
    EMPTY_QUERY_RESPONSE = ord("I")
    ERROR_RESPONSE = ord("E")
    FUNCTION_CALL_RESPONSE = ord("V")
    NEGOTIATE_PROTOCOL_VERSION = ord("v")
    NO_DATA = ord("n")
    NOTICE_RESPONSE = ord("N")
    NOTIFICATION_RESPONSE = ord("A")
    PARAMETER_DESCRIPTION = ord("t")
    PARAMETER_STATUS = ord("S")
    PARSE_COMPLETE = ord("1")
    PORTAL_SUSPENDED = ord("s")
    READY_FOR_QUERY = ord("Z")
    ROW_DESCRIPTION = ord("T")


FRONTEND_TYPES = frozenset(v for k, v in vars(FrontendType).items() if k.isupper())
BACKEND_TYPES = frozenset(v for k, v in vars(BackendType).items() if k.isupper())


class AuthCode:
    OK = 0
    CLEARTEXT_PASSWORD = 3
    MD5_PASSWORD = 5
    GSS = 7
    SSPI = 9
    SASL = 10
    SASL_CONTINUE = 11
    SASL_FINAL = 12


# --- startup-phase packets (no type byte) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    process_id: int
    secret_key: int


@dataclass(frozen=True, slots=True)
class StartupMessage:
    protocol: int
    parameters: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        for k, v in self.parameters:
            if k == name:
                return v
        return None


StartupPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def read_startup_packet(buf: bytes | bytearray) -> tuple[StartupPacket, int] | None:
    """Decode one startup-phase packet from the front of ``buf``.

    Returns the packet and the bytes consumed, or ``None`` when more bytes are needed.
    Raises :class:`ProtocolViolation` for anything malformed.
    """
    if len(buf) < 8:
        if len(buf) >= 4:
            _check_startup_length(_U32.unpack_from(buf, 0)[0])
        return None
    length = _U32.unpack_from(buf, 0)[0]
    _check_startup_length(length)
    if len(buf) < length:
        return None
    code = _U32.unpack_from(buf, 4)[0]
    body = bytes(buf[8:length])
    if code == SSL_REQUEST_CODE:
        return _expect_empty(SSLRequest(), body), length
    if code == GSSENC_REQUEST_CODE:
        return _expect_empty(GSSENCRequest(), body), length
    if code == CANCEL_REQUEST_CODE:
        if len(body) != 8:
            raise ProtocolViolation("malformed CancelRequest")
        pid, key = struct.unpack("!ii", body)
        return CancelRequest(pid, key), length
    return StartupMessage(code, _parse_startup_params(body)), length


def _check_startup_length(length: int) -> None:
    if length < 8 or length > MAX_STARTUP_PACKET:
        raise ProtocolViolation(f"invalid startup packet length {length}")


def _expect_empty(msg: SSLRequest | GSSENCRequest, body: bytes) -> SSLRequest | GSSENCRequest:
    if body:
        raise ProtocolViolation("malformed startup request")
    return msg


def _parse_startup_params(body: bytes) -> tuple[tuple[str, str], ...]:
    # A sequence of name\0value\0 pairs ending with a lone \0 (§55.7 StartupMessage).
    if not body or body[-1] != 0:
        raise ProtocolViolation("startup packet is not NUL-terminated")
    content = body[:-1]
    if not content:
        return ()
    if content[-1] != 0:
        raise ProtocolViolation("startup packet parameters are not name/value pairs")
    parts = content[:-1].split(b"\0")
    if len(parts) % 2 != 0:
        raise ProtocolViolation("startup packet parameters are not name/value pairs")
    try:
        decoded = [p.decode("utf-8") for p in parts]
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("startup packet is not valid UTF-8") from exc
    pairs = tuple(zip(decoded[0::2], decoded[1::2], strict=True))
    seen: set[str] = set()
    for name, _ in pairs:
        if not name:
            raise ProtocolViolation("startup packet has an empty parameter name")
        if name in seen:
            raise ProtocolViolation(f"startup parameter {name!r} given twice")
        seen.add(name)
    return pairs


def encode_startup(parameters: tuple[tuple[str, str], ...], protocol: int = PROTOCOL_3_0) -> bytes:
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in parameters) + b"\0"
    return _U32.pack(len(body) + 8) + _U32.pack(protocol) + body


def encode_ssl_request() -> bytes:
    return struct.pack("!II", 8, SSL_REQUEST_CODE)


def encode_cancel_request(process_id: int, secret_key: int) -> bytes:
    return struct.pack("!IIii", 16, CANCEL_REQUEST_CODE, process_id, secret_key)


# --- generic framing helpers ------------------------------------------------------------------


def frame(type_byte: int, body: bytes = b"") -> bytes:
    return _HDR.pack(bytes((type_byte,)), len(body) + 4) + body


def cstr(value: str) -> bytes:
    raw = value.encode("utf-8")
    if b"\0" in raw:
        raise ValueError("NUL byte in protocol string")
    return raw + b"\0"


class Cursor:
    """Reads fields from one message body; any overrun is a :class:`ProtocolViolation`."""

    __slots__ = ("buf", "pos", "what")

    def __init__(self, buf: bytes, what: str):
        self.buf = buf
        self.pos = 0
        self.what = what

    def _need(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise ProtocolViolation(f"truncated {self.what} message")

    def int32(self) -> int:
        self._need(4)
        v: int = _I32.unpack_from(self.buf, self.pos)[0]
        self.pos += 4
        return v

    def int16(self) -> int:
        self._need(2)
        v: int = _I16.unpack_from(self.buf, self.pos)[0]
        self.pos += 2
        return v

    def byte(self) -> int:
        self._need(1)
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def raw(self, n: int) -> bytes:
        self._need(n)
        v = self.buf[self.pos : self.pos + n]
        self.pos += n
        return v

    def cstr(self) -> str:
        end = self.buf.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolViolation(f"unterminated string in {self.what} message")
        raw = self.buf[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolViolation(f"invalid UTF-8 in {self.what} message") from exc

    def rest(self) -> bytes:
        v = self.buf[self.pos :]
        self.pos = len(self.buf)
        return v

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise ProtocolViolation(f"trailing bytes in {self.what} message")


# --- frontend messages callgate decodes -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query:
    sql: str


@dataclass(frozen=True, slots=True)
class Parse:
    name: str
    sql: str
    param_types: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]

    def format_of(self, index: int) -> int:
        """The format code of parameter ``index`` (§55.7 Bind: 0, 1 or n format codes)."""
        if not self.param_formats:
            return 0
        if len(self.param_formats) == 1:
            return self.param_formats[0]
        return self.param_formats[index]


@dataclass(frozen=True, slots=True)
class Execute:
    portal: str
    max_rows: int


@dataclass(frozen=True, slots=True)
class Describe:
    kind: str  # "S" statement or "P" portal
    name: str


@dataclass(frozen=True, slots=True)
class Close:
    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class FunctionCall:
    function_oid: int
    arg_formats: tuple[int, ...]
    args: tuple[bytes | None, ...]
    result_format: int


def decode_query(body: bytes) -> Query:
    c = Cursor(body, "Query")
    sql = c.cstr()
    c.end()
    return Query(sql)


def decode_parse(body: bytes) -> Parse:
    c = Cursor(body, "Parse")
    name = c.cstr()
    sql = c.cstr()
    n = c.int16()
    if n < 0:
        raise ProtocolViolation("negative parameter count in Parse")
    types = tuple(c.int32() & 0xFFFFFFFF for _ in range(n))
    c.end()
    return Parse(name, sql, types)


def _formats(c: Cursor) -> tuple[int, ...]:
    n = c.int16()
    if n < 0:
        raise ProtocolViolation(f"negative format count in {c.what}")
    fmts = tuple(c.int16() for _ in range(n))
    if any(f not in (0, 1) for f in fmts):
        raise ProtocolViolation(f"invalid format code in {c.what}")
    return fmts


def _values(c: Cursor) -> tuple[bytes | None, ...]:
    n = c.int16()
    if n < 0:
        raise ProtocolViolation(f"negative value count in {c.what}")
    out: list[bytes | None] = []
    for _ in range(n):
        size = c.int32()
        if size == -1:
            out.append(None)
        elif size < 0:
            raise ProtocolViolation(f"invalid value length in {c.what}")
        else:
            out.append(c.raw(size))
    return tuple(out)


def decode_bind(body: bytes) -> Bind:
    c = Cursor(body, "Bind")
    portal = c.cstr()
    stmt = c.cstr()
    pfmts = _formats(c)
    params = _values(c)
    if len(pfmts) > 1 and len(pfmts) != len(params):
        raise ProtocolViolation("Bind parameter format count does not match parameter count")
    rfmts = _formats(c)
    c.end()
    return Bind(portal, stmt, pfmts, params, rfmts)


def decode_execute(body: bytes) -> Execute:
    c = Cursor(body, "Execute")
    portal = c.cstr()
    max_rows = c.int32()
    c.end()
    return Execute(portal, max_rows)


def _decode_target(body: bytes, what: str) -> tuple[str, str]:
    c = Cursor(body, what)
    kind = chr(c.byte())
    if kind not in ("S", "P"):
        raise ProtocolViolation(f"invalid {what} target {kind!r}")
    name = c.cstr()
    c.end()
    return kind, name


def decode_describe(body: bytes) -> Describe:
    return Describe(*_decode_target(body, "Describe"))


def decode_close(body: bytes) -> Close:
    return Close(*_decode_target(body, "Close"))


def decode_function_call(body: bytes) -> FunctionCall:
    c = Cursor(body, "FunctionCall")
    oid = c.int32() & 0xFFFFFFFF
    fmts = _formats(c)
    args = _values(c)
    result_format = c.int16()
    c.end()
    return FunctionCall(oid, fmts, args, result_format)


def decode_password(body: bytes) -> str:
    """A PasswordMessage carrying a cleartext credential (the caller's token or key)."""
    c = Cursor(body, "PasswordMessage")
    value = c.cstr()
    c.end()
    return value


def decode_copy_fail(body: bytes) -> str:
    c = Cursor(body, "CopyFail")
    msg = c.cstr()
    c.end()
    return msg


def encode_query(sql: str) -> bytes:
    return frame(FrontendType.QUERY, cstr(sql))


def encode_password(value: bytes) -> bytes:
    return frame(FrontendType.PASSWORD, value + b"\0")


def encode_sasl_initial(mechanism: str, data: bytes) -> bytes:
    return frame(FrontendType.PASSWORD, cstr(mechanism) + _I32.pack(len(data)) + data)


def encode_sasl_response(data: bytes) -> bytes:
    return frame(FrontendType.PASSWORD, data)


SYNC = frame(FrontendType.SYNC)
TERMINATE = frame(FrontendType.TERMINATE)


# --- backend messages -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorFields:
    """ErrorResponse / NoticeResponse fields (§55.8), keyed by their one-letter codes."""

    fields: tuple[tuple[str, str], ...]

    def get(self, code: str) -> str | None:
        for k, v in self.fields:
            if k == code:
                return v
        return None

    @property
    def sqlstate(self) -> str | None:
        return self.get("C")

    @property
    def message(self) -> str | None:
        return self.get("M")

    @property
    def severity(self) -> str | None:
        return self.get("V") or self.get("S")


def decode_error_fields(body: bytes) -> ErrorFields:
    c = Cursor(body, "ErrorResponse")
    out: list[tuple[str, str]] = []
    while True:
        code = c.byte()
        if code == 0:
            break
        out.append((chr(code), c.cstr()))
    c.end()
    return ErrorFields(tuple(out))


def encode_error(
    sqlstate: str,
    message: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
    notice: bool = False,
) -> bytes:
    parts = [b"S", cstr(severity), b"V", cstr(severity), b"C", cstr(sqlstate), b"M", cstr(message)]
    if detail:
        parts += [b"D", cstr(detail)]
    if hint:
        parts += [b"H", cstr(hint)]
    parts.append(b"\0")
    return frame(
        BackendType.NOTICE_RESPONSE if notice else BackendType.ERROR_RESPONSE, b"".join(parts)
    )


def decode_command_complete(body: bytes) -> str:
    c = Cursor(body, "CommandComplete")
    tag = c.cstr()
    c.end()
    return tag


def rows_from_tag(tag: str) -> int | None:
    """Row count from a command tag (``INSERT 0 5`` → 5, ``SELECT 3`` → 3, ``BEGIN`` → None)."""
    last = tag.rpartition(" ")[2]
    return int(last) if last.isdigit() and " " in tag else None


def decode_ready_for_query(body: bytes) -> str:
    if len(body) != 1 or body not in (b"I", b"T", b"E"):
        raise ProtocolViolation("malformed ReadyForQuery")
    return body.decode()


def encode_ready_for_query(status: str) -> bytes:
    return frame(BackendType.READY_FOR_QUERY, status.encode())


def decode_parameter_status(body: bytes) -> tuple[str, str]:
    c = Cursor(body, "ParameterStatus")
    name = c.cstr()
    value = c.cstr()
    c.end()
    return name, value


def encode_parameter_status(name: str, value: str) -> bytes:
    return frame(BackendType.PARAMETER_STATUS, cstr(name) + cstr(value))


def decode_backend_key_data(body: bytes) -> tuple[int, int]:
    if len(body) != 8:
        raise ProtocolViolation("malformed BackendKeyData")
    pid, key = struct.unpack("!ii", body)
    return pid, key


def encode_backend_key_data(process_id: int, secret_key: int) -> bytes:
    return frame(BackendType.BACKEND_KEY_DATA, struct.pack("!ii", process_id, secret_key))


def decode_authentication(body: bytes) -> tuple[int, bytes]:
    c = Cursor(body, "Authentication")
    code = c.int32()
    return code, c.rest()


def encode_authentication(code: int, data: bytes = b"") -> bytes:
    return frame(BackendType.AUTHENTICATION, _I32.pack(code) + data)


AUTH_OK = encode_authentication(AuthCode.OK)
AUTH_CLEARTEXT = encode_authentication(AuthCode.CLEARTEXT_PASSWORD)


def encode_command_complete(tag: str) -> bytes:
    return frame(BackendType.COMMAND_COMPLETE, cstr(tag))


PARSE_COMPLETE = frame(BackendType.PARSE_COMPLETE)
BIND_COMPLETE = frame(BackendType.BIND_COMPLETE)
CLOSE_COMPLETE = frame(BackendType.CLOSE_COMPLETE)
NO_DATA = frame(BackendType.NO_DATA)
EMPTY_QUERY_RESPONSE = frame(BackendType.EMPTY_QUERY_RESPONSE)


def decode_data_row_text(body: bytes) -> list[str | None]:
    """A DataRow's values as text (for callgate's own small queries in text format)."""
    c = Cursor(body, "DataRow")
    n = c.int16()
    out: list[str | None] = []
    for _ in range(n):
        size = c.int32()
        if size == -1:
            out.append(None)
        elif size < 0:
            raise ProtocolViolation("invalid value length in DataRow")
        else:
            out.append(c.raw(size).decode("utf-8", "replace"))
    c.end()
    return out


def decode_negotiate_protocol(body: bytes) -> tuple[int, tuple[str, ...]]:
    c = Cursor(body, "NegotiateProtocolVersion")
    newest = c.int32()
    n = c.int32()
    if n < 0:
        raise ProtocolViolation("malformed NegotiateProtocolVersion")
    names = tuple(c.cstr() for _ in range(n))
    c.end()
    return newest, names
