"""Sockets and connection strings: free ports, waiting for a listener, libpq DSNs."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it; a race is possible, rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(
    host: str,
    port: int,
    timeout: float = 15.0,
    *,
    alive: Callable[[], bool] | None = None,
    interval: float = 0.05,
) -> bool:
    """Wait until ``host:port`` accepts a TCP connection.

    Returns True when it does, False on timeout or as soon as ``alive()`` returns False (the process
    that should open the port has exited), so the caller can report that process's log.
    """
    deadline = time.monotonic() + timeout
    while True:
        if port_open(host, port):
            return True
        if alive is not None and not alive():
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _quote(value: str) -> str:
    """libpq conninfo quoting: values with spaces, quotes or backslashes go in single quotes."""
    if value and not any(c in value for c in " '\\\t\n"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def libpq_dsn(
    host: str | int | None = "127.0.0.1",
    port: str | int | None = 5432,
    dbname: str | int | None = None,
    user: str | int | None = None,
    password: str | int | None = None,
    sslmode: str | int | None = None,
    sslrootcert: str | int | None = None,
    **extra: str | int | None,
) -> str:
    """A libpq keyword/value connection string (``host=… port=… …``); None values are left out.

    Prefer passing a password through ``PGPASSWORD`` to programs whose command line is printed.
    """
    params: dict[str, str | int | None] = {
        "host": host,
        "port": port,
        "dbname": dbname,
        "user": user,
        "password": password,
        "sslmode": sslmode,
        "sslrootcert": sslrootcert,
        **extra,
    }
    return " ".join(f"{k}={_quote(str(v))}" for k, v in params.items() if v is not None)
