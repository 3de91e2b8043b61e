"""A real OpenID provider for identity tests: tests/oidc_provider/server.mjs (panva's oidc-provider)
run with Node on a free loopback port.

No pytest here (like tests/support/): problems raise :class:`ProviderUnavailable`, which the
fixtures in conftest.py turn into a skip (locally) or a failure (``CI`` set).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from tests.support.net import free_port

PROVIDER_DIR = Path(__file__).resolve().parents[1] / "oidc_provider"
NPM_CI_TIMEOUT = 300.0  # seconds; a cold npm cache downloads ~40 small packages
START_TIMEOUT = 30.0  # seconds until discovery must answer
STOP_TIMEOUT = 5.0
LOG_TAIL = 4000


class ProviderUnavailable(RuntimeError):
    """Node/npm are missing, ``npm ci`` failed, or the provider did not start."""


@dataclass(frozen=True)
class Client:
    """One client_credentials client; ``claims`` are added to each of its access tokens."""

    client_id: str
    claims: Mapping[str, Any] = field(default_factory=dict)
    #: the provider signs this client's tokens with: RS256, PS256, ES256 or EdDSA
    alg: str = "RS256"
    client_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    #: how the client authenticates at the token endpoint: client_secret_basic or _post
    auth_method: str = "client_secret_basic"


def node_tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        raise ProviderUnavailable("node and npm are needed for the OIDC provider (Node 20+)")
    return node, npm


def ensure_installed(npm: str, directory: Path = PROVIDER_DIR) -> None:
    """``npm ci`` when node_modules is missing or older than package-lock.json."""
    installed = directory / "node_modules" / ".package-lock.json"
    lock = directory / "package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ProviderUnavailable(f"npm ci in {directory} took over {NPM_CI_TIMEOUT:g}s") from None
    if done.returncode != 0:
        raise ProviderUnavailable(
            f"npm ci in {directory} failed ({done.returncode}):\n{done.stderr[-LOG_TAIL:]}"
        )


class OIDCProvider:
    """``server.mjs`` as a subprocess. ``issuer`` is ``http://127.0.0.1:<port>``."""

    def __init__(
        self,
        workdir: Path,
        clients: Sequence[Client],
        *,
        audience: str = "callgate",
        access_token_ttl: int = 600,
    ) -> None:
        self.workdir = workdir
        self.clients = {c.client_id: c for c in clients}
        self.audience = audience
        self.access_token_ttl = access_token_ttl
        self.port = 0
        self._admin_token = secrets.token_urlsafe(24)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = workdir / "oidc-provider.log"
        self._log: IO[bytes] | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        node, npm = node_tools()
        ensure_installed(npm)
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "oidc-provider.json"
        config_path.write_text(
            json.dumps(
                {
                    "adminToken": self._admin_token,
                    "audience": self.audience,
                    "accessTokenTTL": self.access_token_ttl,
                    "clients": [
                        {
                            "client_id": c.client_id,
                            "client_secret": c.client_secret,
                            "alg": c.alg,
                            "claims": dict(c.claims),
                            "auth_method": c.auth_method,
                        }
                        for c in self.clients.values()
                    ],
                }
            )
        )
        config_path.chmod(0o600)
        self.port = free_port()
        self._log = self._log_path.open("wb")
        self._proc = subprocess.Popen(
            [node, str(PROVIDER_DIR / "server.mjs"), str(self.port), str(config_path)],
            cwd=PROVIDER_DIR,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        url = f"{self.issuer}/.well-known/openid-configuration"
        while True:
            if self._proc is None or self._proc.poll() is not None:
                self.stop()
                raise ProviderUnavailable(f"the OIDC provider exited:\n{self.log_tail()}")
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ProviderUnavailable(
                    f"the OIDC provider did not answer {url} in {START_TIMEOUT:g}s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self) -> str:
        try:
            text = self._log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return text[-LOG_TAIL:] or "(empty log)"

    # --- what tests use --------------------------------------------------------------------------

    def token(self, client_id: str) -> str:
        """A JWT access token for ``client_id`` (client_credentials grant)."""
        client = self.clients[client_id]
        response = httpx.post(
            f"{self.issuer}/token",
            auth=(client.client_id, client.client_secret),
            data={"grant_type": "client_credentials", "scope": "api"},
            timeout=10.0,
        )
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token

    def rotate_keys(self, alg: str = "RS256") -> str:
        """A new signing key for ``alg`` becomes the active one (older keys stay published).
        Returns the new ``kid``."""
        kid: str = self._admin("POST", "/admin/rotate", {"alg": alg})["kid"]
        return kid

    def retire_key(self, kid: str) -> None:
        """Stop publishing ``kid``."""
        self._admin("POST", "/admin/retire", {"kid": kid})

    def request_counts(self) -> dict[str, int]:
        """Requests served so far, by path (``/.well-known/openid-configuration``, ``/jwks``…)."""
        counts: dict[str, int] = self._admin("GET", "/admin/stats")["requests"]
        return counts

    def key_requests(self) -> int:
        """Discovery plus JWKS requests served so far."""
        counts = self.request_counts()
        return counts.get("/.well-known/openid-configuration", 0) + counts.get("/jwks", 0)

    def jwks(self) -> dict[str, Any]:
        """The published (public) keys. (The provider counts this request as a JWKS request.)"""
        published: dict[str, Any] = httpx.get(f"{self.issuer}/jwks", timeout=5.0).json()
        return published

    def active_kid(self, alg: str = "RS256") -> str:
        """The ``kid`` the provider signs ``alg`` tokens with now (not a JWKS request)."""
        keys: list[dict[str, str]] = self._admin("GET", "/admin/stats")["keys"]
        return next(k["kid"] for k in keys if k["alg"] == alg)

    def _admin(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        response = httpx.request(
            method,
            f"{self.issuer}{path}",
            json=body,
            headers={"authorization": f"Bearer {self._admin_token}"},
            timeout=10.0,
        )
        response.raise_for_status()
        return response.json()


def require_servers() -> bool:
    """CI (and anyone who sets CALLGATE_REQUIRE_SERVERS) must run every server-backed test."""
    return bool(os.environ.get("CI") or os.environ.get("CALLGATE_REQUIRE_SERVERS"))
