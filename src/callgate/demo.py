"""``callgate demo``: a five-minute tour on throwaway infrastructure.

Starts a private PostgreSQL cluster (unless ``CALLGATE_DEMO_DSN`` names a server), seeds a small
shop database, starts ``callgate serve`` in front of it, and walks a caller through what the gateway
does today: a key-authenticated session, refusals, and the recorded, hash-chained audit trail.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

SEED_SQL = """
create table customers (id serial primary key, name text not null, email text not null);
create table orders (id serial primary key, customer_id int references customers,
                     amount numeric(10,2) not null, created_at timestamptz default now());
insert into customers (name, email) values
  ('Ada Lovelace', 'ada@example.com'), ('Grace Hopper', 'grace@example.com'),
  ('Alan Turing', 'alan@example.com');
insert into orders (customer_id, amount) values (1, 120.50), (2, 99.00), (1, 15.25), (3, 42.00);
"""


class DemoError(Exception):
    pass


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int
    user: str
    database: str
    password: str | None


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say()
    say(f"── {title} " + "─" * max(0, 70 - len(title)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise DemoError("the process exited before it started listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise DemoError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    raise DemoError(f"{name} not found: install PostgreSQL or set CALLGATE_DEMO_DSN")


def _as_service_user(argv: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; run them as the postgres user then.
    if os.geteuid() != 0:
        return argv
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise DemoError("running as root needs a 'postgres' user to start PostgreSQL") from exc
    return ["runuser", "-u", "postgres", "--", *argv]


@contextlib.contextmanager
def throwaway_cluster(workdir: Path) -> Iterator[Upstream]:
    data = workdir / "pgdata"
    sock = workdir / "pgsock"
    data.mkdir()
    sock.mkdir()
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for p in (workdir, data, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    port = free_port()
    subprocess.run(
        _as_service_user(
            [
                _pg_bin("initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ]
        ),
        check=True,
        capture_output=True,
    )
    log = workdir / "postgres.log"
    subprocess.run(
        _as_service_user(
            [
                _pg_bin("pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-o",
                f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield Upstream("127.0.0.1", port, "postgres", "postgres", None)
    finally:
        subprocess.run(
            _as_service_user([_pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
            check=False,
        )


def upstream_from_env(dsn: str) -> Upstream:
    from urllib.parse import unquote, urlparse

    u = urlparse(dsn)
    if u.scheme not in ("postgres", "postgresql") or not u.hostname:
        raise DemoError("CALLGATE_DEMO_DSN must look like postgresql://user:pw@host:port/db")
    return Upstream(
        u.hostname,
        u.port or 5432,
        unquote(u.username or "postgres"),
        (u.path or "/postgres").lstrip("/") or "postgres",
        unquote(u.password) if u.password else None,
    )


def psql(args: list[str], env: dict[str, str], input_sql: str | None = None) -> tuple[int, str]:
    done = subprocess.run(
        [_pg_bin("psql"), "-X", "-v", "ON_ERROR_STOP=1", *args],
        input=input_sql,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).strip()


def run_demo() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="callgate-demo-"))
    os.chmod(workdir, 0o755)  # noqa: S103 - the postgres user must reach the cluster dir
    try:
        dsn = os.environ.get("CALLGATE_DEMO_DSN")
        if dsn:
            step("Using the PostgreSQL server named by CALLGATE_DEMO_DSN")
            _tour(workdir, upstream_from_env(dsn))
        else:
            step("Starting a throwaway PostgreSQL cluster (initdb)")
            with throwaway_cluster(workdir) as upstream:
                say(f"PostgreSQL is up on 127.0.0.1:{upstream.port}")
                _tour(workdir, upstream)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _tour(workdir: Path, upstream: Upstream) -> None:
    db = f"callgate_demo_{secrets.token_hex(3)}"
    admin_env = {"PGPASSWORD": upstream.password or ""}
    base = ["-h", upstream.host, "-p", str(upstream.port), "-U", upstream.user]
    code, out = psql([*base, "-d", upstream.database, "-c", f"create database {db}"], admin_env)
    if code != 0:
        raise DemoError(f"could not create the demo database: {out}")
    code, out = psql([*base, "-d", db, "-q"], admin_env, SEED_SQL)
    if code != 0:
        raise DemoError(f"could not seed the demo database: {out}")
    say(f"Seeded database {db}: customers (3 rows), orders (4 rows)")

    port = free_port()
    config = {
        "gateway": {"store": f"sqlite:///{workdir / 'callgate.db'}"},
        "listeners": [
            {"protocol": "postgres", "bind": f"127.0.0.1:{port}", "allow_plaintext": True}
        ],
        "connections": [
            {
                "name": "shop",
                "protocol": "postgres",
                "upstream": {
                    "host": upstream.host,
                    "port": upstream.port,
                    "database": db,
                    "user": upstream.user,
                    "password": "env:DEMO_UPSTREAM_PASSWORD" if upstream.password else None,
                    "tls": "prefer",
                },
            }
        ],
        "policies": [
            {
                "name": "functions use the shop",
                "subjects": {"groups": ["functions"]},
                "connections": ["shop"],
                "rules": [{"allow": {}}],
            }
        ],
    }
    if not upstream.password:
        del config["connections"][0]["upstream"]["password"]  # type: ignore[index]
    cfg_path = workdir / "callgate.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    cg = [sys.executable, "-m", "callgate.cli.main"]
    env = {**os.environ, "DEMO_UPSTREAM_PASSWORD": upstream.password or ""}

    step("The gateway's config (callgate.yaml)")
    say(cfg_path.read_text().rstrip())

    step("callgate serve")
    log = (workdir / "gateway.log").open("wb")
    proc = subprocess.Popen([*cg, "serve", "-c", str(cfg_path)], stdout=log, stderr=log, env=env)
    try:
        wait_port(port, 20, proc)
        say(f"callgate listens for PostgreSQL clients on 127.0.0.1:{port}")

        step("An API key for a serverless function (printed once, stored only as a keyed hash)")
        done = subprocess.run(
            [
                *cg,
                "keys",
                "create",
                "invoice-fn",
                "--groups",
                "functions",
                "--json",
                "-c",
                str(cfg_path),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if done.returncode != 0:
            raise DemoError(f"keys create failed: {done.stderr.strip()}")
        key = json.loads(done.stdout)["key"]
        say(f"created key 'invoice-fn' in group 'functions': {key[:12]}… (hidden here)")
        outsider = json.loads(
            subprocess.run(
                [
                    *cg,
                    "keys",
                    "create",
                    "stray-script",
                    "--groups",
                    "scripts",
                    "--json",
                    "-c",
                    str(cfg_path),
                ],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            ).stdout
        )["key"]

        client = ["-h", "127.0.0.1", "-p", str(port), "-d", "shop", "-U", "invoice-fn"]
        step(
            "The function connects with psql: its key is the password, the database password "
            "stays in callgate"
        )
        q = (
            "select c.name, sum(o.amount) as total from orders o join customers c "
            "on c.id = o.customer_id group by c.name order by total desc"
        )
        say(f'$ psql -h 127.0.0.1 -p {port} -d shop -c "{q}"')
        code, out = psql([*client, "-c", q], {"PGPASSWORD": key, "PGSSLMODE": "disable"})
        say(out)
        say('$ psql … -c "insert into orders (customer_id, amount) values (2, 10)"')
        code, out = psql(
            [*client, "-c", "insert into orders (customer_id, amount) values (2, 10)"],
            {"PGPASSWORD": key, "PGSSLMODE": "disable"},
        )
        say(out)

        step("Refusals, in the caller's own protocol")
        code, out = psql(
            [*client, "-c", "select 1"], {"PGPASSWORD": "cgk_forged_0000", "PGSSLMODE": "disable"}
        )
        say(f"a forged key      → {out.splitlines()[-1] if out else code}")
        code, out = psql(
            [*client, "-c", "select 1"], {"PGPASSWORD": outsider, "PGSSLMODE": "disable"}
        )
        say(f"no policy for it  → {out.splitlines()[-1] if out else code}")
        code, out = psql(
            [*client[:-2], "-d", "payroll", "-c", "select 1"],
            {"PGPASSWORD": key, "PGSSLMODE": "disable"},
        )
        say(f"unknown database  → {out.splitlines()[-1] if out else code}")

        step("The recorded session (callgate sessions show)")
        time.sleep(0.3)
        sessions = json.loads(
            subprocess.run(
                [*cg, "sessions", "list", "--json", "-c", str(cfg_path)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            ).stdout
        )
        ours = [s for s in sessions if s.get("connection") == "shop"]
        if not ours:
            raise DemoError("no session was recorded")
        shown = subprocess.run(
            [*cg, "sessions", "show", str(ours[-1]["id"]), "-c", str(cfg_path)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
        say(shown.rstrip())
        say()
        say(f"{len(ours)} sessions recorded; every event is hash-chained to the one before it.")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    step("Done: the gateway drained and stopped; the throwaway cluster is removed next")
