"""A private PostgreSQL cluster for one test session: its own data directory, CA, port and log.

``start_cluster()`` runs ``initdb`` and ``pg_ctl`` (as the ``postgres`` user when we are root: the
server refuses to run as root), turns on TLS with a certificate from a throw-away CA, restricts
pg_hba.conf to ``hostssl … 127.0.0.1/32 <auth_method>`` (plus ``local`` trust on a private socket
directory for setup), logs every statement to a known file, and creates a role and database ``app``
with a random password.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import psycopg
from psycopg import sql

from tests.support.net import free_port, libpq_dsn
from tests.support.tls import issue_server_cert, make_ca, write_pem_pair

AuthMethod = Literal["scram-sha-256", "md5", "password", "trust"]

PG_BIN_CANDIDATES = ("/usr/lib/postgresql/15/bin",)
SERVICE_USER = "postgres"
_START_ATTEMPTS = 3  # a port picked by free_port() can be taken before the server binds it


class ClusterUnavailable(RuntimeError):
    """The machine cannot run a private cluster (no initdb); fixtures turn this into a skip."""


class ClusterError(RuntimeError):
    """initdb or the server failed; the message carries the relevant output."""


def find_pg_bin() -> Path:
    """The directory holding initdb/pg_ctl: ``$CALLGATE_PG_BIN``, PATH, or the Debian location."""
    env = os.environ.get("CALLGATE_PG_BIN")
    candidates = [env] if env else []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    candidates += PG_BIN_CANDIDATES
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    raise ClusterUnavailable(
        "initdb/pg_ctl not found (install postgresql-15, or set CALLGATE_PG_BIN)"
    )


@dataclass(frozen=True)
class PgCluster:
    """A running private cluster. ``user``/``password``/``database`` are the ``app`` role's."""

    host: str
    port: int
    ca_file: Path
    user: str
    password: str = field(repr=False)
    database: str
    log_path: Path
    auth_method: AuthMethod
    require_ssl: bool
    base_dir: Path
    data_dir: Path
    socket_dir: Path
    superuser: str = SERVICE_USER

    def read_log(self, since: int = 0) -> str:
        """The server log (every statement, connection and auth failure), from byte ``since``."""
        with self.log_path.open("rb") as f:
            f.seek(since)
            return f.read().decode("utf-8", "replace")

    def log_offset(self) -> int:
        """The log's current size: pass to ``read_log(since=…)`` to see only what happens next."""
        return self.log_path.stat().st_size

    def dsn(self, **overrides: str | int | None) -> str:
        """A libpq DSN for the ``app`` role over verified TLS; keywords override (None drops)."""
        params: dict[str, str | int | None] = {
            "host": self.host,
            "port": self.port,
            "dbname": self.database,
            "user": self.user,
            "password": self.password,
            "sslmode": "verify-full",
            "sslrootcert": str(self.ca_file),
        }
        params.update(overrides)
        return libpq_dsn(**params)

    def admin_dsn(self, dbname: str = "postgres") -> str:
        """Superuser over the private Unix socket (trust): for setup, never for the gateway."""
        return libpq_dsn(
            host=str(self.socket_dir), port=self.port, dbname=dbname, user=self.superuser
        )

    def admin_connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.admin_dsn(dbname), autocommit=True)


@dataclass(frozen=True)
class PgServer:
    """A server we connect to as a superuser without a password (the machine's, trust)."""

    host: str
    port: int
    user: str = SERVICE_USER
    database: str = "postgres"
    cluster: PgCluster | None = None  # set when this is a private fallback cluster

    def dsn(self, dbname: str | None = None, **extra: str | int | None) -> str:
        return libpq_dsn(
            host=self.host, port=self.port, dbname=dbname or self.database, user=self.user, **extra
        )

    def connect(self, dbname: str | None = None) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.dsn(dbname), autocommit=True)


def probe_server(host: str, port: int, user: str, database: str = "postgres") -> str | None:
    """None if ``user`` can log in without a password, else why not."""
    try:
        with psycopg.connect(
            libpq_dsn(host=host, port=port, dbname=database, user=user), connect_timeout=3
        ):
            return None
    except psycopg.Error as e:
        return str(e).strip()


def _as_service_user() -> list[str]:
    return ["runuser", "-u", SERVICE_USER, "--"] if os.geteuid() == 0 else []


def _chown_tree(path: Path) -> None:
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam(SERVICE_USER)
    for root, dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)


def _run(cmd: list[str], what: str, timeout: float = 120) -> str:
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd="/"
    )
    if done.returncode != 0:
        raise ClusterError(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _hba(auth_method: AuthMethod, require_ssl: bool) -> str:
    lines = [
        "# written by tests/support/pgcluster.py",
        "local all all trust",
        f"hostssl all all 127.0.0.1/32 {auth_method}",
    ]
    if not require_ssl:
        lines.append(f"hostnossl all all 127.0.0.1/32 {auth_method}")
    return "\n".join(lines) + "\n"


def _conf(socket_dir: Path, tls_dir: Path, auth_method: AuthMethod) -> str:
    # md5 clusters must store md5 hashes: a SCRAM verifier makes the server fall back to SCRAM.
    encryption = "md5" if auth_method == "md5" else "scram-sha-256"
    settings = {
        "listen_addresses": "'127.0.0.1'",
        "unix_socket_directories": f"'{socket_dir}'",
        "ssl": "on",
        "ssl_cert_file": f"'{tls_dir / 'server.crt'}'",
        "ssl_key_file": f"'{tls_dir / 'server.key'}'",
        "password_encryption": f"'{encryption}'",
        "logging_collector": "off",
        "log_statement": "'all'",
        "log_connections": "on",
        "log_line_prefix": "'%m [%p] %q%u@%d '",
        "log_min_messages": "info",
        # A throw-away cluster: durability buys nothing and costs seconds.
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "shared_buffers": "32MB",
        "max_connections": "50",
    }
    return "\n# callgate test settings\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())


def start_cluster(
    auth_method: AuthMethod = "scram-sha-256",
    *,
    require_ssl: bool = True,
    user: str = "app",
    database: str = "app",
) -> PgCluster:
    """initdb + start + create the role/database. Call ``stop_cluster()`` when done."""
    bin_dir = find_pg_bin()
    base = Path(tempfile.mkdtemp(prefix=f"callgate-pg-{auth_method}-"))
    base.chmod(0o755)  # root (the tests) reads the CA and the log; the data dir itself stays 0700
    data_dir, socket_dir, tls_dir = base / "data", base / "sock", base / "tls"
    socket_dir.mkdir()
    tls_dir.mkdir()
    log_path = base / "postgres.log"
    log_path.touch()

    ca = make_ca("callgate test PostgreSQL CA")
    ca_file = base / "ca.pem"
    ca_file.write_bytes(ca.cert_pem())
    ca_file.chmod(0o644)
    cert, key = issue_server_cert(ca, ("localhost",), ("127.0.0.1",))
    write_pem_pair(cert, key, tls_dir / "server.crt", tls_dir / "server.key")
    _chown_tree(base)

    try:
        _run(
            [
                *_as_service_user(),
                str(bin_dir / "initdb"),
                "-D", str(data_dir),
                "-U", SERVICE_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            "initdb",
        )  # fmt: skip
        (data_dir / "pg_hba.conf").write_text(_hba(auth_method, require_ssl))
        with (data_dir / "postgresql.conf").open("a") as f:
            f.write(_conf(socket_dir, tls_dir, auth_method))
        _chown_tree(data_dir)
        socket_dir.chmod(0o700)  # the local trust line is for us (root or the owner) only

        port = free_port()

        for attempt in range(_START_ATTEMPTS):
            try:
                _run(
                    [
                        *_as_service_user(),
                        str(bin_dir / "pg_ctl"),
                        "-D", str(data_dir),
                        "-l", str(log_path),
                        "-w", "-t", "60",
                        "-o", f"-p {port}",
                        "start",
                    ],
                    "pg_ctl start",
                )  # fmt: skip
                break
            except ClusterError as e:
                log = log_path.read_text(errors="replace")
                if attempt + 1 < _START_ATTEMPTS and "could not bind" in log:
                    port = free_port()
                    continue
                raise ClusterError(f"{e}\n--- server log ---\n{log[-4000:]}") from e

        password = secrets.token_urlsafe(24)
        cluster = PgCluster(
            host="127.0.0.1",
            port=port,
            ca_file=ca_file,
            user=user,
            password=password,
            database=database,
            log_path=log_path,
            auth_method=auth_method,
            require_ssl=require_ssl,
            base_dir=base,
            data_dir=data_dir,
            socket_dir=socket_dir,
        )
        # Setup statements would carry the password into the statement log; keep them out of it.
        with psycopg.connect(
            cluster.admin_dsn(), autocommit=True, options="-c log_statement=none"
        ) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(user), sql.Literal(password)
                )
            )
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(database), sql.Identifier(user)
                )
            )
        return cluster
    except BaseException:
        _stop(bin_dir, data_dir)
        if not os.environ.get("CALLGATE_KEEP_TMP"):
            shutil.rmtree(base, ignore_errors=True)
        raise


def _stop(bin_dir: Path, data_dir: Path) -> None:
    if not (data_dir / "postmaster.pid").exists():
        return
    subprocess.run(
        [*_as_service_user(), str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "immediate",
         "-w", "stop"],
        capture_output=True,
        timeout=60,
        check=False,
        cwd="/",
    )  # fmt: skip


def stop_cluster(cluster: PgCluster) -> None:
    """``pg_ctl stop -m immediate``; remove the directory unless ``CALLGATE_KEEP_TMP`` is set."""
    _stop(find_pg_bin(), cluster.data_dir)
    if not os.environ.get("CALLGATE_KEEP_TMP"):
        shutil.rmtree(cluster.base_dir, ignore_errors=True)


class ClusterFactory(Protocol):
    """The type of the ``pg_clusters`` fixture (tests/conftest.py)."""

    def __call__(
        self, auth_method: AuthMethod = "scram-sha-256", *, require_ssl: bool = True
    ) -> PgCluster: ...
