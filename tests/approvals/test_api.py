"""The REST API: httpx against the ASGI app, and once against a real uvicorn server."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from callgate.approvals import ApprovalService, ReviewState
from callgate.identity import ApiKeys, IdentityService
from callgate.model import Principal
from callgate.web import ApiContext, create_api_app, serve_api
from tests.approvals.conftest import run, running
from tests.support.tls import CertPaths

SECRET = b"k" * 32


@dataclass
class Api:
    service: ApprovalService
    client: httpx.AsyncClient
    keys: dict[str, str]
    principals: dict[str, Principal]

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}


@asynccontextmanager
async def api(tmp_path: Path, *, real_server: bool = False) -> AsyncIterator[Api]:
    async with running(tmp_path) as (service, store):
        api_keys = ApiKeys(store, SECRET)
        identity = IdentityService([api_keys])
        keys = {
            "alice": await api_keys.create_key("alice", ["functions"]),
            "mallory": await api_keys.create_key("mallory", ["functions"]),
            "dba": await api_keys.create_key("dba-one", ["dba"]),
            "dba2": await api_keys.create_key("dba-two", ["dba"]),
        }
        principals = {who: await identity.authenticate(k, source="t", protocol="t")
                      for who, k in keys.items()}  # fmt: skip
        app = create_api_app(ApiContext(service, lambda: identity, lambda: store.healthy))
        if real_server:
            server = await serve_api(app, "127.0.0.1", 0)
            try:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as c:
                    yield Api(service, c, keys, principals)
            finally:
                await server.stop()
        else:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
                yield Api(service, c, keys, principals)


async def _request(a: Api, sql: str = "INSERT INTO orders VALUES (1)") -> str:
    review = await a.service.request(
        a.principals["alice"], connection="orders", statement_sql=sql, policy_version="v1"
    )
    return review.id


def test_credentials_are_required(tmp_path: Path) -> None:
    async def main() -> None:
        async with api(tmp_path) as a:
            r = await a.client.get("/api/reviews")
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"].startswith("Bearer")
            r = await a.client.get("/api/reviews", headers={"Authorization": "Bearer cgk_nope"})
            assert r.status_code == 401
            assert (await a.client.get("/healthz")).json() == {"status": "ok", "store": True}
            r = await a.client.get("/api/nothing", headers=a.auth("dba"))
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"

    run(main)


def test_approve_through_the_api_wakes_the_waiter(tmp_path: Path) -> None:
    async def main() -> None:
        async with api(tmp_path) as a:
            rid = await _request(a)
            waiter = asyncio.create_task(a.service.wait(rid))
            r = await a.client.get("/api/reviews", headers=a.auth("dba"))
            assert r.status_code == 200
            (listed,) = r.json()["reviews"]
            assert listed["id"] == rid and listed["statement"] == "INSERT INTO orders VALUES (1)"
            # mallory neither requested nor approves: sees nothing, gets 404 for it
            r = await a.client.get("/api/reviews", headers=a.auth("mallory"))
            assert r.json()["reviews"] == []
            r = await a.client.get(f"/api/reviews/{rid}", headers=a.auth("alice"))
            assert r.status_code == 200 and r.json()["state"] == "pending"

            r = await a.client.post(
                f"/api/reviews/{rid}/approve", json={"reason": "ok"}, headers=a.auth("dba")
            )
            assert r.status_code == 200, r.text
            assert r.json()["state"] == "approved" and r.json()["decided_by"] == "dba-one"
            assert (await asyncio.wait_for(waiter, 1)).approved
            r = await a.client.post(f"/api/reviews/{rid}/approve", headers=a.auth("dba2"))
            assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"

    run(main)


def test_refusals_403_404_409_400(tmp_path: Path) -> None:
    async def main() -> None:
        async with api(tmp_path) as a:
            rid = await _request(a)
            r = await a.client.post(f"/api/reviews/{rid}/approve", headers=a.auth("mallory"))
            assert r.status_code == 403 and "not an approver" in r.json()["error"]["message"]
            r = await a.client.get(f"/api/reviews/{rid}", headers=a.auth("mallory"))
            assert r.status_code == 404  # a review is only shown to its requester and approvers
            r = await a.client.post(f"/api/reviews/{rid}/approve", headers=a.auth("alice"))
            assert r.status_code == 403 and "own request" in r.json()["error"]["message"]
            r = await a.client.post("/api/reviews/rv_missing/approve", headers=a.auth("dba"))
            assert r.status_code == 404
            r = await a.client.post(f"/api/reviews/{rid}/deny", json={}, headers=a.auth("dba"))
            assert r.status_code == 400 and r.json()["error"]["code"] == "reason_required"
            r = await a.client.post(
                f"/api/reviews/{rid}/deny", content=b"{nope", headers=a.auth("dba")
            )
            assert r.status_code == 400
            r = await a.client.post(
                f"/api/reviews/{rid}/deny", json={"reason": "not now"}, headers=a.auth("dba")
            )
            assert r.status_code == 200 and r.json()["state"] == "denied"
            r = await a.client.post(
                f"/api/reviews/{rid}/deny", json={"reason": "again"}, headers=a.auth("dba2")
            )
            assert r.status_code == 409
            assert (await a.service.get_review(rid)).state is ReviewState.DENIED
            r = await a.client.get("/api/reviews?state=bogus", headers=a.auth("dba"))
            assert r.status_code == 400

    run(main)


def test_the_requester_cannot_deny_its_own_review(tmp_path: Path) -> None:
    async def main() -> None:
        async with api(tmp_path) as a:
            rid = await _request(a)
            r = await a.client.post(
                f"/api/reviews/{rid}/deny", json={"reason": "x"}, headers=a.auth("alice")
            )
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"

    run(main)


def test_access_requests_through_the_api(tmp_path: Path) -> None:
    async def main() -> None:
        async with api(tmp_path) as a:
            r = await a.client.post(
                "/api/access/requests",
                json={"connection": "orders", "duration": "30m", "reason": "incident 7"},
                headers=a.auth("alice"),
            )
            assert r.status_code == 201, r.text
            review = r.json()
            assert review["kind"] == "access" and review["duration_seconds"] == 1800
            r = await a.client.post(f"/api/reviews/{review['id']}/approve", headers=a.auth("dba"))
            assert r.status_code == 200 and r.json()["grant_id"]
            r = await a.client.get("/api/access/grants", headers=a.auth("alice"))
            (grant,) = r.json()["grants"]
            assert grant["policy"] == "oncall-write" and grant["status"] == "active"
            r = await a.client.post(
                f"/api/access/grants/{grant['id']}/revoke", json={}, headers=a.auth("mallory")
            )
            assert r.status_code == 403
            r = await a.client.post(
                f"/api/access/grants/{grant['id']}/revoke", json={}, headers=a.auth("alice")
            )
            assert r.status_code == 200 and r.json()["status"] == "revoked"
            r = await a.client.post(
                "/api/access/requests",
                json={"connection": "orders", "duration": "9h", "reason": "x"},
                headers=a.auth("alice"),
            )
            assert r.status_code == 403
            r = await a.client.post(
                "/api/access/requests",
                json={"connection": "orders", "duration": "soon", "reason": "x"},
                headers=a.auth("alice"),
            )
            assert r.status_code == 400

    run(main)


def test_real_uvicorn_server(tmp_path: Path) -> None:
    async def main() -> None:
        async with api(tmp_path, real_server=True) as a:
            assert (await a.client.get("/healthz")).status_code == 200
            rid = await _request(a)
            waiter = asyncio.create_task(a.service.wait(rid))
            r = await a.client.post(f"/api/reviews/{rid}/approve", headers=a.auth("mallory"))
            assert r.status_code == 403
            r = await a.client.post(f"/api/reviews/{rid}/approve", headers=a.auth("dba"))
            assert r.status_code == 200
            assert (await asyncio.wait_for(waiter, 1)).approved

    run(main)


def test_real_uvicorn_server_with_tls(tmp_path: Path, gateway_tls: CertPaths) -> None:
    """``serve_api`` uses the gateway's own SSLContext (as ``callgate serve`` will pass it)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(gateway_tls.cert, gateway_tls.key)

    async def main() -> None:
        async with running(tmp_path) as (service, _):
            app = create_api_app(ApiContext(service, lambda: IdentityService([])))
            server = await serve_api(app, "127.0.0.1", 0, context)
            try:
                client_ctx = ssl.create_default_context()
                client_ctx.check_hostname = False
                client_ctx.verify_mode = ssl.CERT_NONE  # a self-signed dev pair
                url = f"https://127.0.0.1:{server.port}"
                async with httpx.AsyncClient(base_url=url, verify=client_ctx) as c:
                    r = await c.get("/healthz")
                    assert r.status_code == 200 and r.json()["status"] == "ok"
                async with httpx.AsyncClient(base_url=url.replace("https", "http")) as c:
                    try:
                        r = await c.get("/healthz")
                        plaintext_answered = r.status_code == 200
                    except httpx.HTTPError:
                        plaintext_answered = False
                    assert not plaintext_answered
            finally:
                await server.stop()

    run(main)
