"""A real AWS stand-in for signing tests: ``moto`` in server mode, with signature checking on.

moto checks SigV4 signatures only once ``INITIAL_NO_AUTH_ACTION_COUNT`` actions have been served
(moto docs, "IAM-like Access Control"); before that it accepts anything. The server is started
with that count set to exactly the number of bootstrap actions (create an IAM user, give it an
allow-all policy, create its access key), so from the first request a test sends every request is
authenticated against that user's key. :meth:`MotoServer.start` then proves it: a request signed
with a wrong secret must be refused, or the server is reported unusable.

No pytest here: problems raise :class:`MotoUnavailable`, which fixtures turn into a skip (or a
failure in CI).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from tests.support.net import free_port

REGION = "us-east-1"
ACCOUNT_ID = "123456789012"  # moto's default account
USER_NAME = "callgate-gateway"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
LOG_TAIL = 4000

# CreateUser, PutUserPolicy, CreateAccessKey: the actions served before signatures are checked.
BOOTSTRAP_ACTIONS = 3

ALLOW_ALL = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)


class MotoUnavailable(RuntimeError):
    """moto is not installed, did not start, or does not check signatures."""


@dataclass(frozen=True)
class AwsKey:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    arn: str


class MotoServer:
    """``python -m moto.server`` on a free loopback port; ``endpoint`` is its base URL."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.key: AwsKey | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path = workdir / "moto.log"
        self._log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> AwsKey:
        if importlib.util.find_spec("moto.server") is None:
            raise MotoUnavailable("moto[server] is not installed (pip install -e '.[test]')")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = {
            **os.environ,
            "INITIAL_NO_AUTH_ACTION_COUNT": str(BOOTSTRAP_ACTIONS),
            "AWS_DEFAULT_REGION": REGION,
        }
        # Keys in the environment would mean nothing to moto, but must not leak into its log.
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            env.pop(name, None)
        self._log = self._log_path.open("wb")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self._wait_ready()
        self.key = self._bootstrap()
        self._check_enforced()
        return self.key

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

    # --- start-up ------------------------------------------------------------------------------

    def _wait_ready(self) -> None:
        # /moto-api/ endpoints are not AWS actions: they do not use up the unauthenticated ones.
        url = f"{self.endpoint}/moto-api/data.json"
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc is None or self._proc.poll() is not None:
                self.stop()
                raise MotoUnavailable(f"moto server exited:\n{self.log_tail()}")
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise MotoUnavailable(f"moto server did not answer in {START_TIMEOUT:g}s")
            time.sleep(0.1)

    def _iam(self, action: str, **params: str) -> str:
        # Sent in the unauthenticated window. moto picks the service of a request to a bare
        # IP from the Authorization header's credential scope, hence a placeholder naming iam.
        placeholder = (
            f"AWS4-HMAC-SHA256 Credential=AKIAPLACEHOLDER/20240101/{REGION}/iam/aws4_request, "
            "SignedHeaders=host, Signature=0"
        )
        response = httpx.post(
            f"{self.endpoint}/",
            data={"Action": action, "Version": "2010-05-08", **params},
            headers={"Authorization": placeholder},
            timeout=10.0,
        )
        if response.status_code != 200:
            self.stop()
            raise MotoUnavailable(f"IAM {action} failed ({response.status_code}): {response.text}")
        return response.text

    def _bootstrap(self) -> AwsKey:
        created = self._iam("CreateUser", UserName=USER_NAME)
        self._iam("PutUserPolicy", UserName=USER_NAME, PolicyName="all", PolicyDocument=ALLOW_ALL)
        answer = self._iam("CreateAccessKey", UserName=USER_NAME)
        access = re.search(r"<AccessKeyId>([^<]+)</AccessKeyId>", answer)
        secret = re.search(r"<SecretAccessKey>([^<]+)</SecretAccessKey>", answer)
        arn = re.search(r"<Arn>([^<]+)</Arn>", created)
        if access is None or secret is None or arn is None:
            self.stop()
            raise MotoUnavailable(f"unexpected IAM answers: {created!r} {answer!r}")
        return AwsKey(access.group(1), secret.group(1), arn.group(1))

    def _check_enforced(self) -> None:
        # Any signature at all with an unknown key: moto must now refuse it.
        response = httpx.post(
            f"{self.endpoint}/",
            data={"Action": "GetCallerIdentity", "Version": "2011-06-15"},
            headers={
                "Authorization": (
                    f"AWS4-HMAC-SHA256 Credential=AKIANOTAKEY/20240101/{REGION}/sts/aws4_request,"
                    " SignedHeaders=host;x-amz-date, Signature=0"
                ),
                "X-Amz-Date": "20240101T000000Z",
            },
            timeout=10.0,
        )
        if response.status_code != 403:
            self.stop()
            raise MotoUnavailable(
                f"moto does not check signatures (an unknown key got {response.status_code})"
            )
