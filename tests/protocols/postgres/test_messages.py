"""Byte fixtures for every message type callgate decodes or encodes (PostgreSQL docs §55.7)."""

from __future__ import annotations

import struct

import pytest

from callgate.errors import ProtocolViolation, UpstreamProtocolViolation
from callgate.protocols.postgres import messages as m
from callgate.protocols.postgres.auth import md5_response, sasl_mechanisms


def startup_bytes(params: bytes, code: int = m.PROTOCOL_3_0) -> bytes:
    return struct.pack("!II", len(params) + 8, code) + params


class TestStartup:
    def test_startup_message(self) -> None:
        raw = startup_bytes(b"user\0bob\0database\0orders\0application_name\0\0\0")
        pkt, used = m.read_startup_packet(raw)  # type: ignore[misc]
        assert used == len(raw)
        assert isinstance(pkt, m.StartupMessage)
        assert pkt.protocol == m.PROTOCOL_3_0
        assert pkt.get("user") == "bob"
        assert pkt.get("database") == "orders"
        assert pkt.get("application_name") == ""
        assert pkt.get("options") is None

    def test_startup_roundtrip(self) -> None:
        params = (("user", "a"), ("database", "b"), ("client_encoding", "UTF8"))
        pkt, _ = m.read_startup_packet(m.encode_startup(params))  # type: ignore[misc]
        assert isinstance(pkt, m.StartupMessage)
        assert pkt.parameters == params

    def test_ssl_gss_cancel(self) -> None:
        assert m.read_startup_packet(m.encode_ssl_request()) == (m.SSLRequest(), 8)
        gss = struct.pack("!II", 8, m.GSSENC_REQUEST_CODE)
        assert m.read_startup_packet(gss) == (m.GSSENCRequest(), 8)
        cancel = m.encode_cancel_request(1234, -5)
        assert m.read_startup_packet(cancel) == (m.CancelRequest(1234, -5), 16)

    def test_needs_more(self) -> None:
        raw = startup_bytes(b"user\0bob\0\0")
        for i in range(len(raw)):
            assert m.read_startup_packet(raw[:i]) is None

    @pytest.mark.parametrize(
        "raw",
        [
            struct.pack("!I", 3) + b"\0" * 4,  # length below minimum
            struct.pack("!I", 100_000) + b"\0" * 4,  # over the startup limit
            startup_bytes(b"user\0bob"),  # not NUL-terminated
            startup_bytes(b"user\0\0"),  # name without value
            startup_bytes(b"user\0a\0user\0b\0\0"),  # duplicate
            startup_bytes(b"\xff\xfe\0x\0\0"),  # invalid UTF-8
            struct.pack("!II", 12, m.SSL_REQUEST_CODE) + b"junk",
            struct.pack("!II", 12, m.CANCEL_REQUEST_CODE) + b"shrt",
        ],
    )
    def test_malformed(self, raw: bytes) -> None:
        with pytest.raises(ProtocolViolation):
            m.read_startup_packet(raw)


class TestFrontend:
    def test_query(self) -> None:
        assert m.decode_query(b"select 1\0") == m.Query("select 1")
        assert m.encode_query("select 1") == b"Q\x00\x00\x00\x0dselect 1\x00"

    def test_parse(self) -> None:
        body = b"s1\0select $1\0" + struct.pack("!hI", 1, 23)
        assert m.decode_parse(body) == m.Parse("s1", "select $1", (23,))

    def test_bind(self) -> None:
        body = (
            b"p\0s1\0"
            + struct.pack("!hhh", 2, 0, 1)
            + struct.pack("!h", 2)
            + struct.pack("!i", 3)
            + b"abc"
            + struct.pack("!i", -1)
            + struct.pack("!hh", 1, 1)
        )
        b = m.decode_bind(body)
        assert b == m.Bind("p", "s1", (0, 1), (b"abc", None), (1,))
        assert b.format_of(0) == 0 and b.format_of(1) == 1

    def test_bind_single_format_applies_to_all(self) -> None:
        body = b"\0\0" + struct.pack("!hh", 1, 1) + struct.pack("!hi", 1, 1) + b"x" + b"\0\0"
        b = m.decode_bind(body)
        assert b.format_of(0) == 1

    @pytest.mark.parametrize(
        "body",
        [
            b"\0\0" + struct.pack("!hhh", 2, 0, 1) + struct.pack("!hi", 1, 1) + b"x\0\0",
            b"\0\0\0\0" + struct.pack("!hi", 1, -2) + b"\0\0",
            b"\0\0\0\0" + struct.pack("!hi", 1, 10) + b"x\0\0",
            b"\0\0" + struct.pack("!hh", 1, 7) + b"\0\0\0\0",
            b"\0\0\0\0\0\0\0\0junk",
        ],
    )
    def test_bind_malformed(self, body: bytes) -> None:
        with pytest.raises(ProtocolViolation):
            m.decode_bind(body)

    def test_execute_describe_close(self) -> None:
        assert m.decode_execute(b"p\0" + struct.pack("!i", 10)) == m.Execute("p", 10)
        assert m.decode_describe(b"Sname\0") == m.Describe("S", "name")
        assert m.decode_close(b"P\0") == m.Close("P", "")
        with pytest.raises(ProtocolViolation):
            m.decode_describe(b"Xname\0")

    def test_function_call(self) -> None:
        body = struct.pack("!Ih", 1234, 1) + struct.pack("!h", 1) + struct.pack("!hi", 1, 2)
        body += b"hi" + struct.pack("!h", 0)
        assert m.decode_function_call(body) == m.FunctionCall(1234, (1,), (b"hi",), 0)

    def test_password_and_copy_fail(self) -> None:
        assert m.decode_password(b"cgk_abc\0") == "cgk_abc"
        assert m.decode_copy_fail(b"oops\0") == "oops"
        with pytest.raises(ProtocolViolation):
            m.decode_password(b"no-terminator")

    def test_sasl_encoders(self) -> None:
        assert m.encode_sasl_initial("SCRAM-SHA-256", b"n,,") == (
            b"p\x00\x00\x00\x19SCRAM-SHA-256\x00\x00\x00\x00\x03n,,"
        )
        assert m.encode_sasl_response(b"xy") == b"p\x00\x00\x00\x06xy"
        assert m.SYNC == b"S\x00\x00\x00\x04"
        assert m.TERMINATE == b"X\x00\x00\x00\x04"


class TestBackend:
    def test_error_roundtrip(self) -> None:
        raw = m.encode_error("42501", "denied", severity="FATAL", detail="d", hint="h")
        assert raw[0:1] == b"E"
        fields = m.decode_error_fields(raw[5:])
        assert fields.sqlstate == "42501"
        assert fields.message == "denied"
        assert fields.severity == "FATAL"
        assert fields.get("D") == "d" and fields.get("H") == "h"
        notice = m.encode_error("01000", "n", severity="NOTICE", notice=True)
        assert notice[0:1] == b"N"

    def test_ready_for_query(self) -> None:
        assert m.encode_ready_for_query("T") == b"Z\x00\x00\x00\x05T"
        assert m.decode_ready_for_query(b"E") == "E"
        with pytest.raises(ProtocolViolation):
            m.decode_ready_for_query(b"Q")

    def test_command_complete_rows(self) -> None:
        assert m.decode_command_complete(b"INSERT 0 5\0") == "INSERT 0 5"
        assert m.rows_from_tag("INSERT 0 5") == 5
        assert m.rows_from_tag("SELECT 3") == 3
        assert m.rows_from_tag("BEGIN") is None
        assert m.rows_from_tag("CREATE TABLE") is None

    def test_parameter_status_and_key(self) -> None:
        raw = m.encode_parameter_status("TimeZone", "UTC")
        assert m.decode_parameter_status(raw[5:]) == ("TimeZone", "UTC")
        raw = m.encode_backend_key_data(42, -7)
        assert raw == b"K\x00\x00\x00\x0c" + struct.pack("!ii", 42, -7)
        assert m.decode_backend_key_data(raw[5:]) == (42, -7)

    def test_authentication(self) -> None:
        assert m.AUTH_OK == b"R\x00\x00\x00\x08\x00\x00\x00\x00"
        assert m.AUTH_CLEARTEXT == b"R\x00\x00\x00\x08\x00\x00\x00\x03"
        code, data = m.decode_authentication(struct.pack("!i", 5) + b"salt")
        assert (code, data) == (5, b"salt")

    def test_negotiate_protocol(self) -> None:
        body = struct.pack("!ii", m.PROTOCOL_3_0, 1) + b"_pq_.x\0"
        assert m.decode_negotiate_protocol(body) == (m.PROTOCOL_3_0, ("_pq_.x",))


def test_md5_matches_postgres_algorithm() -> None:
    # md5(md5("secret" + "app") + salt), computed independently with the documented recipe.
    import hashlib

    salt = b"\x01\x02\x03\x04"
    inner = hashlib.md5(b"secretapp").hexdigest().encode()
    want = b"md5" + hashlib.md5(inner + salt).hexdigest().encode()
    assert md5_response("app", "secret", salt) == want
    with pytest.raises(UpstreamProtocolViolation):
        md5_response("app", "secret", b"abc")


def test_sasl_mechanisms() -> None:
    assert sasl_mechanisms(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0") == (
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-256",
    )
    with pytest.raises(UpstreamProtocolViolation):
        sasl_mechanisms(b"SCRAM")
