"""The fixtures themselves: private clusters really enforce what they promise, helpers behave, and
the gateway process wrapper starts, stops and restarts a server (driven here by a stand-in program,
so this file does not depend on ``callgate serve``; the engine tests use the real one).
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

from tests.support.gateway import Gateway, GatewayError, build_config, deep_merge
from tests.support.net import free_port, libpq_dsn, port_open, wait_port
from tests.support.pgcluster import PgCluster, PgServer
from tests.support.tls import CertPaths

pytestmark = pytest.mark.integration


def _fetch_one(dsn: str, query: str) -> tuple[object, ...]:
    with psycopg.connect(dsn, connect_timeout=10) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row


def _stored_password(cluster: PgCluster) -> str:
    with cluster.admin_connect() as conn:
        row = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (cluster.user,)
        ).fetchone()
    assert row is not None
    return str(row[0])


# --- pg_private: SCRAM over verified TLS only -----------------------------------------------------


def test_pg_private_verify_full_scram_works(pg_private: PgCluster) -> None:
    offset = pg_private.log_offset()
    user, ssl = _fetch_one(
        pg_private.dsn(),
        "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    assert (user, ssl) == ("app", True)
    assert _stored_password(pg_private).startswith("SCRAM-SHA-256$")
    assert "method=scram-sha-256" in pg_private.read_log(since=offset)


def test_pg_private_refuses_plaintext(pg_private: PgCluster) -> None:
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(pg_private.dsn(sslmode="disable", sslrootcert=None), connect_timeout=10)


def test_pg_private_refuses_wrong_password(pg_private: PgCluster) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_private.dsn(password=secrets.token_urlsafe(12)), connect_timeout=10)


def test_pg_private_certificate_names_localhost_and_loopback(pg_private: PgCluster) -> None:
    for host in ("localhost", "127.0.0.1"):
        assert _fetch_one(pg_private.dsn(host=host), "SELECT 1") == (1,)


def test_pg_private_logs_every_statement(pg_private: PgCluster) -> None:
    marker = f"marker_{secrets.token_hex(8)}"
    offset = pg_private.log_offset()
    assert _fetch_one(pg_private.dsn(), f"SELECT '{marker}'") == (marker,)
    log = pg_private.read_log(since=offset)
    assert f"statement: SELECT '{marker}'" in log
    # The role was created with log_statement off: its password is in no log line.
    assert pg_private.password not in pg_private.read_log()


def test_pg_private_object_is_frozen_and_hides_password(pg_private: PgCluster) -> None:
    assert pg_private.password not in repr(pg_private)
    with pytest.raises(AttributeError):
        pg_private.port = 1  # type: ignore[misc]
    assert pg_private.ca_file.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")


# --- the md5 and cleartext-password variants ------------------------------------------------------


def test_pg_private_md5_authenticates(pg_private_md5: PgCluster) -> None:
    offset = pg_private_md5.log_offset()
    assert _fetch_one(pg_private_md5.dsn(), "SELECT current_user") == ("app",)
    assert _stored_password(pg_private_md5).startswith("md5")
    assert "method=md5" in pg_private_md5.read_log(since=offset)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_private_md5.dsn(password="wrong"), connect_timeout=10)


def test_pg_private_password_authenticates(pg_private_password: PgCluster) -> None:
    offset = pg_private_password.log_offset()
    assert _fetch_one(pg_private_password.dsn(), "SELECT current_user") == ("app",)
    assert "method=password" in pg_private_password.read_log(since=offset)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_private_password.dsn(password="wrong"), connect_timeout=10)


# --- pg_local / pg_db -----------------------------------------------------------------------------


def test_pg_db_is_a_fresh_database(pg_local: PgServer, pg_db: str) -> None:
    with pg_local.connect(pg_db) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (pg_db,)
        conn.execute("CREATE TABLE t (x int)")
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relname = 't'").fetchone() == (1,)


# --- helpers --------------------------------------------------------------------------------------


def test_libpq_dsn_quotes_and_drops_none() -> None:
    dsn = libpq_dsn(host="h", port=1, user="a b", password="it's\\", dbname=None)
    assert dsn == r"host=h port=1 user='a b' password='it\'s\\'"


def test_free_port_and_wait_port() -> None:
    port = free_port()
    assert not port_open("127.0.0.1", port)
    assert wait_port("127.0.0.1", port, timeout=0.2) is False
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        assert wait_port("127.0.0.1", port, timeout=2)


def test_deep_merge_replaces_lists_and_merges_dicts() -> None:
    base = {"gateway": {"store": "a", "tls": {"cert": "c"}}, "listeners": [{"x": 1}]}
    merged = deep_merge(base, {"gateway": {"audit": {"durability": "async"}}, "listeners": []})
    assert merged == {
        "gateway": {"store": "a", "tls": {"cert": "c"}, "audit": {"durability": "async"}},
        "listeners": [],
    }
    assert base["listeners"] == [{"x": 1}]


def test_build_config_defaults(tmp_path: Path, gateway_tls: CertPaths) -> None:
    config = build_config(tmp_path, {"listeners": [{"protocol": "postgres"}]}, tls=gateway_tls)
    assert config["gateway"]["store"] == f"sqlite:///{tmp_path / 'callgate.db'}"
    assert Path(config["gateway"]["tls"]["cert"]).is_file()
    (listener,) = config["listeners"]
    assert listener["bind"].startswith("127.0.0.1:")
    default = build_config(tmp_path, None, tls=gateway_tls)
    assert default["listeners"][0]["allow_plaintext"] is True


# --- the Gateway process wrapper, with a stand-in for `callgate` ----------------------------------

_FAKE_CALLGATE = """
import json, signal, socket, sys, yaml
args = sys.argv[1:]
config = yaml.safe_load(open(args[args.index("-c") + 1]))
if args[:2] == ["keys", "create"]:
    print(json.dumps({"name": args[2], "key": "cgk_" + "x" * 32,
                      "groups": args[args.index("--groups") + 1].split(",")}))
    sys.exit(0)
if args[0] == "serve":
    if config.get("fail"):
        print("config error: fail is set", file=sys.stderr)
        sys.exit(2)
    socks = []
    for listener in config["listeners"]:
        host, port = listener["bind"].rsplit(":", 1)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))
        s.listen()
        socks.append(s)
    print("serving", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (print("draining", flush=True), sys.exit(0)))
    while True:
        conn, _ = socks[0].accept()
        conn.close()
print("unknown command", args, file=sys.stderr)
sys.exit(2)
"""


@pytest.fixture
def fake_exe(tmp_path: Path) -> Path:
    exe = tmp_path / "fake-callgate"
    exe.write_text(f"#!{sys.executable}\n" + textwrap.dedent(_FAKE_CALLGATE))
    exe.chmod(0o755)
    return exe


def test_gateway_wrapper_lifecycle(tmp_path: Path, gateway_tls: CertPaths, fake_exe: Path) -> None:
    config = build_config(tmp_path, {"listeners": [{"protocol": "postgres"}]}, tls=gateway_tls)
    gw = Gateway(tmp_path, config, exe=fake_exe)
    try:
        gw.start()
        assert port_open("127.0.0.1", gw.port)
        assert gw.ports == {"postgres": gw.port}
        key = gw.create_key("fn", ["functions", "bench"])
        assert key.startswith("cgk_")
        done = gw.cli("keys", "create", "other", "--groups", "a", "--json")
        assert json.loads(done.stdout)["groups"] == ["a"]
        gw.restart()
        assert gw.running and port_open("127.0.0.1", gw.port)
        assert gw.kill() == -signal.SIGKILL
        assert not gw.running
        gw.start()
        assert gw.stop() == 0
        assert gw.log_text().count("serving") == 3
        assert "draining" in gw.log_text()
    finally:
        gw.stop()


def test_gateway_wrapper_reports_exit_with_log(
    tmp_path: Path, gateway_tls: CertPaths, fake_exe: Path
) -> None:
    config = build_config(tmp_path, {"fail": True}, tls=gateway_tls)
    gw = Gateway(tmp_path, config, exe=fake_exe)
    with pytest.raises(GatewayError, match=r"exited with status 2(.|\n)*fail is set"):
        gw.start(timeout=10)
    assert not gw.running
