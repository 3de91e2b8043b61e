"""What a caller sees when callgate says no, and what never reaches the upstream."""

from __future__ import annotations

import socket
import struct
import time

import psycopg
import pytest

from callgate.protocols.postgres import messages as m
from tests.engines.postgres.conftest import MakeThrough, Through

pytestmark = pytest.mark.integration


def sqlstate_of(exc: pytest.ExceptionInfo[psycopg.OperationalError]) -> str | None:
    # libpq reports startup errors as text; the SQLSTATE is in the message as "FATAL: ..."
    return getattr(exc.value, "sqlstate", None)


def connect_error(dsn: str) -> str:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(dsn, connect_timeout=10).close()
    return str(info.value)


def raw_startup(port: int, params: dict[str, str]) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(m.encode_startup(tuple(params.items())))
    return s


def read_messages(s: socket.socket, until: bytes = b"Z") -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    buf = b""
    while True:
        while len(buf) >= 5:
            t = buf[0]
            (length,) = struct.unpack("!I", buf[1:5])
            if len(buf) < 1 + length:
                break
            out.append((t, buf[5 : 1 + length]))
            buf = buf[1 + length :]
            if bytes([t]) in until or (t == ord("E") and b"FATAL" in out[-1][1]):
                return out
        chunk = s.recv(65536)
        if not chunk:
            return out
        buf += chunk


def error_code(body: bytes) -> str | None:
    return m.decode_error_fields(body).sqlstate


def login(port: int, key: str, database: str = "main") -> socket.socket:
    s = raw_startup(port, {"user": "x", "database": database})
    msgs = read_messages(s, until=b"R")
    assert msgs[-1][0] == ord("R")
    s.sendall(m.encode_password(key.encode()))
    msgs = read_messages(s)
    assert msgs[-1][0] == ord("Z"), msgs
    return s


def test_wrong_revoked_expired_keys(through: Through) -> None:
    with pytest.raises(psycopg.OperationalError, match=r"28P01|credential"):
        psycopg.connect(through.dsn(password="cgk_nope_" + "y" * 40)).close()
    # revoke
    key2 = through.gw.create_key("fn-revoked", ["apps"])
    psycopg.connect(through.dsn(password=key2)).close()
    done = through.gw.cli("keys", "revoke", "fn-revoked")
    assert done.returncode == 0, done.stderr
    time.sleep(6)  # the verified-key cache lives at most 5 s
    with pytest.raises(psycopg.OperationalError, match=r"28P01|credential"):
        psycopg.connect(through.dsn(password=key2)).close()
    # expiry
    done = through.gw.cli(
        "keys", "create", "fn-short", "--groups", "apps", "--expires", "1s", "--json"
    )
    assert done.returncode == 0, done.stderr
    import json

    short = json.loads(done.stdout)["key"]
    time.sleep(1.5)
    with pytest.raises(psycopg.OperationalError, match=r"28P01|credential"):
        psycopg.connect(through.dsn(password=short)).close()


def test_error_codes_over_the_wire(through: Through) -> None:
    # wrong key → 28P01
    s = raw_startup(through.gw.port, {"user": "x", "database": "main"})
    read_messages(s, until=b"R")
    s.sendall(m.encode_password(b"cgk_bad_" + b"z" * 40))
    msgs = read_messages(s)
    assert msgs[-1][0] == ord("E") and error_code(msgs[-1][1]) == "28P01"
    s.close()
    # unknown connection → 3D000 (only after authenticating)
    s = raw_startup(through.gw.port, {"user": "x", "database": "nosuch"})
    read_messages(s, until=b"R")
    s.sendall(m.encode_password(through.key.encode()))
    msgs = read_messages(s)
    assert error_code(msgs[-1][1]) == "3D000"
    s.close()


def test_no_policy_for_connection_is_42501(make_through: MakeThrough) -> None:
    th = make_through()
    other = th.gw.create_key("outsider", ["not-apps"])
    with pytest.raises(psycopg.OperationalError, match="not allowed"):
        psycopg.connect(th.dsn(password=other)).close()


def test_plaintext_refused_when_tls_required(make_through: MakeThrough) -> None:
    th = make_through(allow_plaintext=False)
    with pytest.raises(psycopg.OperationalError, match="requires TLS"):
        psycopg.connect(th.dsn(sslmode="disable")).close()
    # over TLS it works, and the session is recorded as TLS
    with psycopg.connect(th.dsn(sslmode="require")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.pgconn.ssl_in_use


def test_options_and_role_never_reach_upstream(through: Through) -> None:
    dsn = through.dsn(options="-c statement_timeout=4321 -c role=pg_read_all_data")
    with psycopg.connect(dsn, application_name="opt-test") as conn:
        assert conn.execute("show statement_timeout").fetchone() == ("0",)
        assert conn.execute("select current_user").fetchone() == (through.server.user,)
        assert conn.execute("show application_name").fetchone() == ("opt-test",)


def test_protocol_version_refused_clearly(through: Through) -> None:
    s = socket.create_connection(("127.0.0.1", through.gw.port), timeout=10)
    s.sendall(m.encode_startup((("user", "x"),), protocol=(2 << 16)))
    msgs = read_messages(s)
    assert error_code(msgs[-1][1]) == "0A000"
    assert b"3.0" in msgs[-1][1]


def test_malformed_frames_end_only_that_session(through: Through) -> None:
    healthy = psycopg.connect(through.dsn(), autocommit=True)
    try:
        s = login(through.gw.port, through.key)
        s.sendall(b"\x01\x00\x00\x00\x04garbage")
        msgs = read_messages(s)
        assert msgs and error_code(msgs[-1][1]) == "08P01"
        assert s.recv(100) == b""
        s.close()
        s = login(through.gw.port, through.key)
        s.sendall(b"Q\x00\x00\x00\x02")  # length below the minimum
        msgs = read_messages(s)
        assert error_code(msgs[-1][1]) == "08P01"
        s.close()
        # garbage instead of a startup packet
        s = socket.create_connection(("127.0.0.1", through.gw.port), timeout=10)
        s.sendall(b"\xff\xff\xff\xff" + b"x" * 20)
        msgs = read_messages(s)
        assert error_code(msgs[-1][1]) == "08P01"
        s.close()
        assert healthy.execute("select 'still here'").fetchone() == ("still here",)
    finally:
        healthy.close()


def test_oversized_frame_refused(make_through: MakeThrough) -> None:
    th = make_through({"gateway": {"limits": {"max_decoded_bytes": 4096}}})
    s = login(th.gw.port, th.key)
    s.sendall(m.encode_query("select '" + "x" * 10_000 + "'"))
    msgs = read_messages(s)
    assert error_code(msgs[-1][1]) == "08P01"
    assert b"exceeds the limit" in msgs[-1][1]
    with psycopg.connect(th.dsn()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_upstream_killed_mid_query(through: Through) -> None:
    import threading

    with psycopg.connect(through.dsn(application_name="victim"), autocommit=True) as conn:
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]  # type: ignore[index]

        def kill() -> None:
            with psycopg.connect(through.server.dsn(through.database), autocommit=True) as admin:
                admin.execute("select pg_terminate_backend(%s)", (pid,))

        threading.Timer(0.5, kill).start()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select pg_sleep(20)")
    # the gateway survives and records why the session ended
    with psycopg.connect(through.dsn()) as conn:
        assert conn.execute("select 2").fetchone() == (2,)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        victims = [s for s in through.sessions() if s.get("application_name") == "victim"]
        if victims and victims[0].get("end_reason"):
            assert "upstream" in victims[0]["end_reason"].lower()
            return
        time.sleep(0.2)
    pytest.fail("the victim session's end was not recorded")


def test_upstream_unreachable_is_08006(make_through: MakeThrough, pg_db: str) -> None:
    from tests.support.net import free_port

    th = make_through(
        {
            "connections": [
                {
                    "name": "main",
                    "protocol": "postgres",
                    "upstream": {
                        "host": "127.0.0.1",
                        "port": free_port(),
                        "database": pg_db,
                        "user": "postgres",
                        "tls": "disable",
                    },
                }
            ]
        }
    )
    s = raw_startup(th.gw.port, {"user": "x", "database": "main"})
    read_messages(s, until=b"R")
    s.sendall(m.encode_password(th.key.encode()))
    msgs = read_messages(s)
    assert error_code(msgs[-1][1]) == "08006"
