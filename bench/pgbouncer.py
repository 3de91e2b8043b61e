"""pgbouncer (the C peer we compare against) in session pooling mode, on a free loopback port.

It refuses to run as root, so as root it runs as the ``postgres`` user in a directory owned by it.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.net import free_port, wait_port

SERVICE_USER = "postgres"


class PgbouncerError(RuntimeError):
    pass


@dataclass(frozen=True)
class Pgbouncer:
    host: str
    port: int
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def find_pgbouncer() -> str:
    exe = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if exe is None:
        raise PgbouncerError("pgbouncer not found (`make bench` installs it with apt)")
    return exe


def _ini(workdir: Path, port: int, dbname: str, upstream_host: str, upstream_port: int) -> str:
    return f"""\
[databases]
{dbname} = host={upstream_host} port={upstream_port} dbname={dbname}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir / "userlist.txt"}
pool_mode = session
max_client_conn = 1000
default_pool_size = 100
logfile = {workdir / "pgbouncer.log"}
pidfile = {workdir / "pgbouncer.pid"}
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
"""


@contextmanager
def running_pgbouncer(
    dbname: str, user: str, upstream_host: str = "127.0.0.1", upstream_port: int = 5432
) -> Iterator[Pgbouncer]:
    """Start pgbouncer in front of ``upstream_host:upstream_port/dbname``; stop it on exit.

    ``auth_type = trust``: pgbouncer still wants the user listed in the auth file.
    """
    exe = find_pgbouncer()
    workdir = Path(tempfile.mkdtemp(prefix="callgate-bench-pgbouncer-"))
    port = free_port()
    (workdir / "pgbouncer.ini").write_text(
        _ini(workdir, port, dbname, upstream_host, upstream_port)
    )
    (workdir / "userlist.txt").write_text(f'"{user}" ""\n')
    prefix: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam(SERVICE_USER)
        for path in (workdir, *workdir.iterdir()):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", SERVICE_USER, "--"]
    out = (workdir / "stdout.log").open("wb")
    proc = subprocess.Popen(
        [*prefix, exe, str(workdir / "pgbouncer.ini")],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=workdir,
    )
    bouncer = Pgbouncer(host="127.0.0.1", port=port, log_path=workdir / "pgbouncer.log")
    try:
        if not wait_port("127.0.0.1", port, 15, alive=lambda: proc.poll() is None):
            stdout = (workdir / "stdout.log").read_text(errors="replace")
            raise PgbouncerError(f"pgbouncer did not start:\n{stdout}\n{bouncer.log_tail()}")
        yield bouncer
    finally:
        if proc.poll() is None:
            # The whole process group (runuser and pgbouncer): immediate shutdown, the run is over.
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        out.close()
        shutil.rmtree(workdir, ignore_errors=True)
