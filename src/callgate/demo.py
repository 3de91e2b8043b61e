"""``callgate demo``: a five-minute tour on throwaway infrastructure.

Starts a private PostgreSQL cluster (unless ``CALLGATE_DEMO_DSN`` names a server), seeds a small
shop database, starts ``callgate serve`` in front of it, and walks callers through what the
gateway does: **allow** (a key-authenticated session), **block** (statements refused by policy,
in the caller's own protocol), **approval** (a statement held until an approver says yes),
**masking** (values masked in results) and **audit** (the recorded sessions and a signed,
verified hash chain).

Every step prints the command a reader could type themselves; keys are shown truncated. Every
subprocess has a timeout, and the gateway, a held client and the throwaway cluster are stopped
(and the work directory removed) whether the tour succeeds or not.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SEED_SQL = """
create table customers (id serial primary key, name text not null, email text not null,
                        note text);
create table orders (id serial primary key, customer_id int references customers,
                     amount numeric(10,2) not null, created_at timestamptz default now());
insert into customers (name, email, note) values
  ('Ada Lovelace', 'ada@example.com', 'pays by card 4111 1111 1111 1111'),
  ('Grace Hopper', 'grace@example.com', 'invoice by post'),
  ('Alan Turing', 'alan@example.com', null);
insert into orders (customer_id, amount) values (1, 120.50), (2, 99.00), (1, 15.25), (3, 42.00);
"""

#: seconds any one command may take (psql, a callgate CLI call)
COMMAND_TIMEOUT = 60.0
#: seconds for initdb / pg_ctl
CLUSTER_TIMEOUT = 120.0
#: seconds the gateway has to start listening, and to drain on SIGTERM
GATEWAY_START_TIMEOUT = 20.0
GATEWAY_STOP_TIMEOUT = 15.0
#: how long a held statement waits for an approver (the approvals rule's ``timeout``)
APPROVAL_TIMEOUT_S = 30
#: characters of the gateway log quoted when it fails
LOG_TAIL = 3000

CONNECTION = "shop"
POLICY_NAME = "functions use the shop"


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
    say(f"── {title} " + "─" * max(3, 70 - len(title)))


def command(text: str) -> None:
    """Print a command as the reader would type it."""
    say(f"$ {text}")


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


def _tail(path: Path, limit: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return text[-limit:].strip() or "(empty log)"


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
        timeout=CLUSTER_TIMEOUT,
    )
    log = workdir / "postgres.log"
    try:
        subprocess.run(
            _as_service_user(
                [
                    _pg_bin("pg_ctl"),
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-w",
                    "-t",
                    str(int(CLUSTER_TIMEOUT)),
                    "-o",
                    f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
            timeout=CLUSTER_TIMEOUT + 10,
        )
        yield Upstream("127.0.0.1", port, "postgres", "postgres", None)
    finally:
        # also when start failed or timed out: a postmaster may be running anyway
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            subprocess.run(
                _as_service_user([_pg_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                capture_output=True,
                check=False,
                timeout=CLUSTER_TIMEOUT,
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
        timeout=COMMAND_TIMEOUT,
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
            _tour(workdir, upstream_from_env(dsn), drop_database=True)
        else:
            step("Starting a throwaway PostgreSQL cluster (initdb)")
            with throwaway_cluster(workdir) as upstream:
                say(f"PostgreSQL is up on 127.0.0.1:{upstream.port}")
                _tour(workdir, upstream, drop_database=False)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --- the pieces of the tour -----------------------------------------------------------------------


class Cli:
    """``callgate …`` run in the work directory (so ``./callgate.yaml`` is the default config)."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.argv = [sys.executable, "-m", "callgate.cli.main"]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*self.argv, *args],
            capture_output=True,
            text=True,
            cwd=self.workdir,
            env=self.env,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        if check and done.returncode != 0:
            reason = (done.stderr or done.stdout).strip().splitlines()
            raise DemoError(
                f"callgate {args[0]} {args[1] if len(args) > 1 else ''} failed: "
                f"{reason[-1] if reason else f'exit {done.returncode}'}"
            )
        return done

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def show(self, args: Sequence[str], shown: str | None = None, *, check: bool = True) -> str:
        """Print the command (``shown`` replaces secrets in it), run it, print its output."""
        command("callgate " + (shown if shown is not None else shlex.join(args)))
        done = self.run(*args, check=check)
        out = (done.stdout + done.stderr).rstrip()
        say(out)
        return out

    def session_ids(self) -> set[str]:
        return {str(s["id"]) for s in self.json("sessions", "list", "--limit", "500")}


@dataclass(frozen=True)
class Caller:
    """A callgate API key and the shell variable the tour keeps it in."""

    name: str
    var: str
    key: str


class Client:
    """psql through the gateway, printed as the reader would type it."""

    def __init__(self, port: int) -> None:
        self.port = port

    def argv(self, who: Caller, sql: str, extra: Sequence[str] = ()) -> list[str]:
        return [
            _pg_bin("psql"),
            "-X",
            *extra,
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            who.name,
            "-d",
            CONNECTION,
            "-c",
            sql,
        ]

    def shown(self, who: Caller, sql: str, extra: Sequence[str] = ()) -> str:
        options = "".join(f" {o}" for o in extra)
        return (
            f'PGPASSWORD="${who.var}" psql{options} -h 127.0.0.1 -p {self.port} -U {who.name}'
            f' -d {CONNECTION} -c "{sql}"'
        )

    @staticmethod
    def env(key: str) -> dict[str, str]:
        # The reader's own PG* settings (PGSSLMODE, PGOPTIONS, a service file…) stay out of it.
        # No TLS on the demo listener: psql's default sslmode=prefer falls back to plaintext.
        clean = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        return {**clean, "PGPASSWORD": key, "PGCONNECT_TIMEOUT": "10"}

    def run(self, who: Caller, sql: str, *, verbose: bool = False) -> str:
        """``verbose``: psql's VERBOSITY=verbose, which prints an error's SQLSTATE."""
        extra = ["-v", "VERBOSITY=verbose"] if verbose else []
        command(self.shown(who, sql, extra=extra))
        done = subprocess.run(
            self.argv(who, sql, extra=extra),
            capture_output=True,
            text=True,
            env=self.env(who.key),
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        out = (done.stdout + done.stderr).rstrip()
        say(out)
        return out

    def refused_at_connect(self, key: str, database: str = CONNECTION) -> str:
        done = subprocess.run(
            [_pg_bin("psql"), "-X", "-h", "127.0.0.1", "-p", str(self.port), "-d", database]
            + ["-U", "someone", "-c", "select 1"],
            capture_output=True,
            text=True,
            env=self.env(key),
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        lines = (done.stdout + done.stderr).strip().splitlines()
        return lines[-1] if lines else f"exit {done.returncode}"


@contextlib.contextmanager
def running_gateway(cli: Cli, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``callgate serve`` in the background; SIGTERM (then SIGKILL) when the block ends."""
    log_path = cli.workdir / "gateway.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*cli.argv, "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cli.workdir,
            env=cli.env,
        )
        try:
            try:
                wait_port(port, GATEWAY_START_TIMEOUT, proc)
            except DemoError as exc:
                raise DemoError(f"callgate serve did not start: {exc}\n{_tail(log_path)}") from exc
            yield proc
        finally:
            stop_process(proc, GATEWAY_STOP_TIMEOUT)


def stop_process(proc: subprocess.Popen[Any], timeout: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


CONFIG_TEMPLATE = """\
gateway:
  store: sqlite:///./callgate.db            # keys, sessions, reviews and the audit chain
  audit:
    signing_key: file:./audit-ed25519.pem   # signs audit checkpoints (callgate certs audit-key)
listeners:
  - {{protocol: postgres, bind: "127.0.0.1:{port}", allow_plaintext: true}}   # loopback only
connections:
  - name: shop
    protocol: postgres
    upstream: {{host: {host}, port: {upstream_port}, database: {db}, user: {user},
               {password}tls: prefer}}
policies:                                   # deny > review > allow; nothing matched: deny
  - name: functions use the shop
    subjects: {{groups: [functions, support-tier2]}}
    connections: [shop]
    rules:
      - {{allow: {{kinds: [select, insert]}}}}
      - {{review: {{kinds: [update, delete]}}}}               # held for a dba (approvals:)
      - {{deny: {{kinds: [update, delete], where: absent}}}}
      - {{deny: {{kinds: [ddl, privilege]}}}}
      - {{deny: {{functions: [pg_read_file, "dblink*", "lo_*"]}}}}
    mask:
      - {{columns: ["customers.email"], style: partial}}
      - {{detect: [credit_card], style: redact}}
    mask_exempt: {{groups: [support-tier2]}}
approvals:
  - connections: [shop]
    approvers: {{groups: [dba]}}
    min_approvals: 1
    mode: hold                              # the statement waits in the caller's session
    timeout: {timeout}s
"""


def _scalar(value: str) -> str:
    """A YAML scalar for a flow mapping: plain when that reads back the same, else quoted."""
    plain = re.fullmatch(r"[A-Za-z0-9_.-]+", value) is not None
    return value if plain and yaml.safe_load(value) == value else json.dumps(value)


def demo_config(upstream: Upstream, db: str, port: int) -> str:
    """callgate.yaml for the tour (the text is shown to the reader, comments and all)."""
    text = CONFIG_TEMPLATE.format(
        port=port,
        host=_scalar(upstream.host),
        upstream_port=upstream.port,
        db=_scalar(db),
        user=_scalar(upstream.user),
        # a reference the gateway resolves from its environment: the password is never in the file
        password="password: env:DEMO_UPSTREAM_PASSWORD, " if upstream.password else "",
        timeout=APPROVAL_TIMEOUT_S,
    )
    parsed = yaml.safe_load(text)
    wanted = {"host": upstream.host, "database": db, "user": upstream.user}
    got = parsed["connections"][0]["upstream"]
    if any(got.get(k) != v for k, v in wanted.items()) or parsed["policies"][0]["name"] != (
        POLICY_NAME
    ):
        raise DemoError("the demo config did not render as intended")
    return text


def _tour(workdir: Path, upstream: Upstream, *, drop_database: bool) -> None:
    db = f"callgate_demo_{secrets.token_hex(3)}"
    admin_env = {"PGPASSWORD": upstream.password or "", "PGCONNECT_TIMEOUT": "10"}
    base = ["-h", upstream.host, "-p", str(upstream.port), "-U", upstream.user]
    code, out = psql([*base, "-d", upstream.database, "-c", f"create database {db}"], admin_env)
    if code != 0:
        raise DemoError(f"could not create the demo database: {out}")
    try:
        code, out = psql([*base, "-d", db, "-q"], admin_env, SEED_SQL)
        if code != 0:
            raise DemoError(f"could not seed the demo database: {out}")
        say(f"Seeded database {db}: customers (3 rows), orders (4 rows)")
        _walk(workdir, upstream, db)
    finally:
        if drop_database:  # a shared server: leave nothing behind (the gateway is stopped now)
            with contextlib.suppress(subprocess.TimeoutExpired, OSError, DemoError):
                psql(
                    [*base, "-d", upstream.database, "-c", f"drop database if exists {db}"],
                    admin_env,
                )


def _walk(workdir: Path, upstream: Upstream, db: str) -> None:
    env = {**os.environ, "DEMO_UPSTREAM_PASSWORD": upstream.password or ""}
    env.pop("CALLGATE_CREDENTIAL", None)  # the tour names each caller's credential itself
    env.pop("CALLGATE_CONFIG", None)  # ./callgate.yaml in the work directory
    cli = Cli(workdir, env)
    port = free_port()

    step("Setup: an audit signing key, the config, the gateway")
    say(f"(working in {workdir})")
    cli.show(["certs", "audit-key", "--out", "audit-ed25519.pem"])
    (workdir / "callgate.yaml").write_text(demo_config(upstream, db, port))
    say()
    say("callgate.yaml:")
    say((workdir / "callgate.yaml").read_text().rstrip())
    say()
    cli.show(["check"])
    say()
    command("callgate serve &")
    with running_gateway(cli, port) as gateway:
        say(f"callgate listens for PostgreSQL clients on 127.0.0.1:{port}")
        _callers_and_steps(cli, Client(port))
        say()
        say("Stop the gateway: SIGTERM drains the sessions and signs a last checkpoint.")
        command(f"kill -TERM {gateway.pid}")
        stop_process(gateway, GATEWAY_STOP_TIMEOUT)
    say()
    say("Verify the whole trail: every hash chain, and every checkpoint's Ed25519 signature:")
    out = cli.show(["audit", "verify"], check=False)
    if "verified: ok" not in out:
        raise DemoError("callgate audit verify did not report 'verified: ok'")
    step("Done: gateway stopped; cluster and work directory removed next")


def _create_key(cli: Cli, name: str, groups: str, var: str) -> Caller:
    command(f"callgate keys create {name} --groups {groups}")
    key = str(cli.json("keys", "create", name, "--groups", groups)["key"])
    say(f"  {var}={key[:12]}…   (hidden here)")
    return Caller(name, var, key)


def _callers_and_steps(cli: Cli, client: Client) -> None:
    step("Identities: one API key per caller")
    say("Each key is printed once; the store keeps only a keyed hash of it.")
    fn = _create_key(cli, "invoice-fn", "functions", "FN_KEY")
    dba = _create_key(cli, "dba-alice", "dba", "DBA_KEY")
    support = _create_key(cli, "support-ana", "support-tier2", "SUPPORT_KEY")
    stray = _create_key(cli, "stray-script", "scripts", "STRAY_KEY")

    # 1 ------------------------------------------------------------------------------------------
    step("1. Allow: a function reads and writes through callgate")
    say("The key is the psql password; the database's own credential never leaves callgate.")
    client.run(
        fn,
        "select c.name, sum(o.amount) as total from orders o join customers c"
        " on c.id = o.customer_id group by c.name order by total desc",
    )
    out = client.run(fn, "insert into orders (customer_id, amount) values (2, 10)")
    if "INSERT 0 1" not in out:
        raise DemoError("the allowed INSERT did not go through")

    # 2 ------------------------------------------------------------------------------------------
    step("2. Block: statements policy refuses (SQLSTATE 42501)")
    for sql in ("delete from orders", "select pg_read_file('/etc/passwd')"):
        out = client.run(fn, sql, verbose=True)
        if "42501" not in out:
            raise DemoError(f"{sql!r} was not refused")
    say("The DELETE never reached the database: all 5 orders are still there.")
    out = client.run(fn, "select count(*) from orders")
    if " 5" not in out:
        raise DemoError("orders changed after the refused DELETE")
    say()
    say("Refused at connect, before any statement:")
    say(f"  a forged key      → {client.refused_at_connect('cgk_forged_0000')}")
    say(f"  no policy for it  → {client.refused_at_connect(stray.key)}")
    say(f"  unknown database  → {client.refused_at_connect(fn.key, 'payroll')}")

    # 3 ------------------------------------------------------------------------------------------
    step("3. Approval: an UPDATE held until a dba approves it")
    update_sql = "update orders set amount = 130.50 where id = 1"
    before = cli.session_ids()
    command(client.shown(fn, update_sql) + " &")
    held = subprocess.Popen(
        client.argv(fn, update_sql),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=client.env(fn.key),
    )
    try:
        review = _wait_for_review(cli, dba, held)
        say(f"(psql is waiting; the hold ends after {APPROVAL_TIMEOUT_S}s unless someone decides)")
        cli.show(["reviews", "list", "--as", dba.key], f'reviews list --as "${dba.var}"')
        rid = str(review["id"])
        cli.show(
            ["reviews", "approve", rid, "--as", dba.key, "--reason", "month-end fix"],
            f'reviews approve {rid} --as "${dba.var}" --reason "month-end fix"',
        )
        say("(CALLGATE_CREDENTIAL=… instead of --as keeps a key out of the process list)")
        try:
            out, _ = held.communicate(timeout=APPROVAL_TIMEOUT_S + 10)
        except subprocess.TimeoutExpired as exc:
            raise DemoError("the approved UPDATE did not finish") from exc
        say("the background psql prints:")
        say(out.rstrip())
        if "UPDATE 1" not in out:
            raise DemoError("the approved UPDATE did not report UPDATE 1")
    finally:
        if held.poll() is None:
            held.kill()
            held.wait(10)
    approval_session = _new_session(cli, before)

    # 4 ------------------------------------------------------------------------------------------
    step("4. Masking: emails and card numbers masked in results")
    select_customers = "select name, email, note from customers order by id"
    before = cli.session_ids()
    out = client.run(fn, select_customers)
    if "ada@example.com" in out or "4111 1111 1111 1111" in out:
        raise DemoError("a value that must be masked came back unmasked")
    masked_session = _new_session(cli, before)
    say()
    say("support-tier2 is named in the policy's mask_exempt: it sees the values.")
    client.run(support, select_customers)

    # 5 ------------------------------------------------------------------------------------------
    step("5. Audit: recorded sessions, a signed hash chain")
    time.sleep(0.5)  # session.end and the relayed review events are written asynchronously
    cli.show(["sessions", "list"])
    say()
    say("The held UPDATE: the query was decided 'review', then ran once approved:")
    cli.show(["sessions", "show", approval_session])
    say()
    say("The review's own events (requested, approved: by whom and why) are in the audit chain")
    say("outside any session:")
    _show_review_events(cli, str(review["id"]))
    say()
    say("The masked SELECT: query.masked says which columns were masked and why (never a value):")
    cli.show(["sessions", "show", masked_session])


def _wait_for_review(cli: Cli, approver: Caller, held: subprocess.Popen[str]) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if held.poll() is not None:
            out = held.stdout.read() if held.stdout else ""
            raise DemoError(f"the UPDATE was not held for review: {out.strip()}")
        rows: list[dict[str, Any]] = cli.json("reviews", "list", "--as", approver.key)
        if rows:
            return rows[0]
        time.sleep(0.2)
    raise DemoError("no pending review appeared within 20s")


def _show_review_events(cli: Cli, review_id: str) -> None:
    """``sessions export`` filtered to one review's events, as the jq filter shown prints them."""
    jq = (
        f'select(.payload.review_id == "{review_id}")'
        " | {seq, type, requester: .payload.requester, by: .payload.by, reason: .payload.reason}"
    )
    command(f"callgate sessions export | jq -c '{jq}'")
    deadline = time.monotonic() + 10
    while True:  # the gateway relays decisions made by the CLI into the chain within ~250 ms
        events = [json.loads(line) for line in cli.run("sessions", "export").stdout.splitlines()]
        ours = [
            e
            for e in events
            if isinstance(e.get("payload"), dict) and e["payload"].get("review_id") == review_id
        ]
        if any(e["type"] == "review.approved" for e in ours) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    for e in ours:
        p = e["payload"]
        row = {
            "seq": e.get("seq"),
            "type": e.get("type"),
            "requester": p.get("requester"),
            "by": p.get("by"),
            "reason": p.get("reason"),
        }
        say(json.dumps(row, separators=(",", ":"), ensure_ascii=False))
    if not any(e["type"] == "review.approved" for e in ours):
        raise DemoError(f"the approval of {review_id} is not in the audit chain")


def _new_session(cli: Cli, before: set[str]) -> str:
    new = cli.session_ids() - before
    if len(new) != 1:
        raise DemoError(f"expected one new recorded session, found {len(new)}")
    return new.pop()
