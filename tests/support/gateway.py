"""``callgate serve`` as a subprocess, configured from a dict, for tests and the benchmark.

No pytest here: failures raise ``GatewayError`` with the captured log, and the ``gateway``
fixture in tests/conftest.py turns that into a test failure.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import yaml

from tests.support.net import free_port, wait_port
from tests.support.tls import CertPaths, gateway_tls_pair

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 15.0  # seconds until the listener must accept TCP
STOP_TIMEOUT = 10.0  # seconds SIGTERM may take (drain) before we SIGKILL
CLI_TIMEOUT = 60.0
LOG_TAIL = 6000  # characters of the log quoted in an error


class GatewayError(RuntimeError):
    """The gateway did not start, or a CLI call that must succeed did not."""


def callgate_exe() -> Path:
    """``.venv/bin/callgate`` of this checkout, else the one beside the running interpreter."""
    for candidate in (
        REPO_ROOT / ".venv" / "bin" / "callgate",
        Path(sys.executable).parent / "callgate",
    ):
        if candidate.exists():
            return candidate
    raise GatewayError("callgate console script not found: run `make test` (pip install -e .)")


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Dicts merge key by key; anything else (lists included) in ``override`` replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def build_config(
    workdir: Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    allow_plaintext: bool = True,
    tls: CertPaths | None = None,
) -> dict[str, Any]:
    """The defaults (sqlite store in ``workdir``, TLS pair, one postgres listener on a free port)
    with ``overrides`` merged over them. Listeners given without ``bind`` get a free loopback port.
    ``tls`` is a pair to reuse; without it one is made in ``workdir/certs``.
    """
    if tls is None:
        tls = gateway_tls_pair(workdir / "certs", callgate_exe())
    defaults: dict[str, Any] = {
        "gateway": {
            "store": f"sqlite:///{workdir / 'callgate.db'}",
            "tls": {"cert": str(tls.cert), "key": str(tls.key)},
        },
        "listeners": [{"protocol": "postgres", "allow_plaintext": allow_plaintext}],
        "connections": [],
        "policies": [],
    }
    config = deep_merge(defaults, overrides or {})
    for listener in config.get("listeners") or []:
        if isinstance(listener, dict) and "bind" not in listener:
            listener["bind"] = f"127.0.0.1:{free_port()}"
    return config


def _bind_port(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return host, int(port)


class Gateway:
    """One ``callgate serve -c <config>`` process and the CLI against the same config.

    ``port`` is the first listener's port; ``ports`` maps each listener's protocol to its port.
    """

    def __init__(
        self,
        workdir: Path,
        config: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        exe: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.config: dict[str, Any] = copy.deepcopy(dict(config))
        self.config_path = workdir / "callgate.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.stdout_path = workdir / "gateway.stdout.log"
        self.stderr_path = workdir / "gateway.stderr.log"
        self.exe = exe or callgate_exe()
        self.env = {**os.environ, "CALLGATE_CONFIG": str(self.config_path), **(env or {})}
        self.addresses: list[tuple[str, str, int]] = []  # (protocol, host, port)
        for listener in self.config.get("listeners") or []:
            host, port = _bind_port(str(listener["bind"]))
            self.addresses.append((str(listener.get("protocol", "")), host, port))
        self.proc: subprocess.Popen[bytes] | None = None
        self._files: list[IO[bytes]] = []

    # --- addresses -------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        return self.addresses[0][1]

    @property
    def port(self) -> int:
        return self.addresses[0][2]

    @property
    def ports(self) -> dict[str, int]:
        return {proto: port for proto, _, port in reversed(self.addresses)}

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT) -> None:
        if self.running:
            raise GatewayError("gateway already running")
        out, err = self.stdout_path.open("ab"), self.stderr_path.open("ab")
        self._files = [out, err]
        self.proc = subprocess.Popen(
            [str(self.exe), "serve", "-c", str(self.config_path)],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.workdir,
            start_new_session=True,  # a Ctrl-C in the test runner must not hit the gateway first
        )
        deadline = time.monotonic() + timeout
        for _, host, port in self.addresses:
            left = max(0.0, deadline - time.monotonic())
            if not wait_port(host, port, left, alive=lambda: self.running):
                exited = self.proc.poll()
                reason = (
                    f"exited with status {exited}"
                    if exited is not None
                    else f"did not accept TCP on {host}:{port} within {timeout:.0f}s"
                )
                self.kill()
                raise GatewayError(f"callgate serve {reason}\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def _signal_and_wait(self, sig: signal.Signals, timeout: float) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        for f in self._files:
            f.close()
        self._files = []
        return self.proc.returncode

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM (drain), wait, SIGKILL after ``timeout``. Returns the exit status."""
        return self._signal_and_wait(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """SIGKILL: a crash, for recovery tests."""
        return self._signal_and_wait(signal.SIGKILL, STOP_TIMEOUT)

    def reload(self) -> None:
        """SIGHUP: reload config and policy (write ``config_path`` first)."""
        if self.proc is not None and self.running:
            self.proc.send_signal(signal.SIGHUP)

    def restart(self, timeout: float = START_TIMEOUT) -> None:
        self.stop()
        self.start(timeout)

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Replace the config file (listener addresses are kept as they were at start)."""
        self.config = copy.deepcopy(dict(config))
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    # --- output ----------------------------------------------------------------------------------
    def log_text(self) -> str:
        """Everything the process wrote so far (stdout, then stderr), across restarts."""
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def log_tail(self, chars: int = LOG_TAIL) -> str:
        text = self.log_text()
        return f"--- gateway log ({self.workdir}) ---\n{text[-chars:] if text else '(empty)'}"

    # --- CLI -------------------------------------------------------------------------------------
    def cli(
        self, *args: str, input: str | None = None, timeout: float = CLI_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """``callgate ARGS… -c <config>`` (``-c`` goes before a ``--``); never raises on failure."""
        argv = list(args)
        if "-c" not in argv and "--config" not in argv:
            at = argv.index("--") if "--" in argv else len(argv)
            argv[at:at] = ["-c", str(self.config_path)]
        return subprocess.run(
            [str(self.exe), *argv],
            capture_output=True,
            text=True,
            input=input,
            env=self.env,
            cwd=self.workdir,
            timeout=timeout,
            check=False,
        )

    def create_key(self, name: str, groups: Sequence[str] = ()) -> str:
        """``callgate keys create NAME --groups a,b --json``: returns the ``key`` field.

        On failure the error quotes stderr only: stdout may hold the key.
        """
        args = ["keys", "create", name, "--json"]
        if groups:
            args[3:3] = ["--groups", ",".join(groups)]
        done = self.cli(*args)
        if done.returncode != 0:
            raise GatewayError(
                f"callgate keys create {name} failed ({done.returncode}): {done.stderr}"
            )
        try:
            key = json.loads(done.stdout)["key"]
        except (ValueError, KeyError, TypeError) as e:
            raise GatewayError(
                f"callgate keys create {name} --json printed no JSON object with a `key` field"
            ) from e
        if not isinstance(key, str) or not key:
            raise GatewayError(f"callgate keys create {name}: `key` is not a non-empty string")
        return key


class GatewayFactory(Protocol):
    """The type of the ``gateway`` fixture (tests/conftest.py)."""

    def __call__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        allow_plaintext: bool = True,
        env: Mapping[str, str] | None = None,
        start: bool = True,
    ) -> Gateway: ...
