"""The REST API (docs/api.md): reviews and access windows, as the caller's own identity.

Every ``/api`` request carries ``Authorization: Bearer <credential>`` (an OIDC token, a ``cgk_``
API key or a ``cgt_`` session token), verified by the identity service like any other caller's,
failures throttled per client address. Errors are JSON: ``{"error": {"code", "message"}}`` with
401 (credential), 403 (not allowed), 404 (no such review, or one the caller may not see), 409 (no
longer pending, already approved by this approver), 400 (bad request).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from callgate.approvals import ApprovalService, ReviewState
from callgate.approvals.models import grant_json, review_json
from callgate.config import parse_duration
from callgate.config.durations import DurationError
from callgate.errors import AuthenticationFailed, CallgateError
from callgate.model import Principal
from callgate.services import IdentityService

log = logging.getLogger("callgate.api")

#: Largest request body accepted (a reason and a few fields; anything bigger is not ours).
MAX_BODY_BYTES: Final = 64 * 1024
#: What ``?state=`` accepts besides a single state.
ALL_STATES: Final = "all"


@dataclass(frozen=True, slots=True)
class ApiContext:
    """What the API needs. ``identity`` is called per request, so a config reload (which builds
    a new identity service) takes effect for the next request."""

    approvals: ApprovalService
    identity: Callable[[], IdentityService]
    #: ``False`` when the store cannot take writes (``/healthz`` answers 503)
    healthy: Callable[[], bool] = lambda: True


class ApiError(CallgateError):
    """A malformed API request."""

    http_status = 400
    code = "bad_request"


def error_response(status: int, code: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="callgate"'} if status == 401 else None
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _code(exc: CallgateError) -> str:
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return code
    return {401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict"}.get(
        exc.http_status, "error"
    )


Handler = Callable[[Request, Principal], Awaitable[Response]]


def create_api_app(context: ApiContext) -> Starlette:
    approvals = context.approvals

    def authenticated(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            header = request.headers.get("authorization", "")
            scheme, _, credential = header.partition(" ")
            if scheme.lower() != "bearer" or not credential.strip():
                return error_response(
                    401, "unauthorized", "send Authorization: Bearer <credential>"
                )
            source = request.client.host if request.client else "unknown"
            try:
                principal = await context.identity().authenticate(
                    credential.strip(), source=source, protocol="api"
                )
                return await handler(request, principal)
            except AuthenticationFailed as exc:
                return error_response(401, "unauthorized", exc.message)
            except CallgateError as exc:
                status = exc.http_status if 400 <= exc.http_status < 600 else 500
                return error_response(status, _code(exc), exc.message)
            except Exception:
                log.exception("API request %s %s failed", request.method, request.url.path)
                return error_response(500, "internal", "internal error in callgate")

        return endpoint

    async def body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if not raw:
            return {}
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(f"the request body is larger than {MAX_BODY_BYTES} bytes")
        try:
            data = json.loads(raw)
        except ValueError:
            raise ApiError("the request body is not JSON") from None
        if not isinstance(data, dict):
            raise ApiError("the request body must be a JSON object")
        return data

    def text(data: dict[str, Any], key: str, *, required: bool = False) -> str | None:
        value = data.get(key)
        if value is None:
            if required:
                raise ApiError(f"{key!r} is required")
            return None
        if not isinstance(value, str):
            raise ApiError(f"{key!r} must be a string")
        return value

    def states(request: Request) -> tuple[ReviewState, ...] | None:
        wanted = request.query_params.get("state", ReviewState.PENDING.value)
        if wanted == ALL_STATES:
            return None
        try:
            return tuple(ReviewState(s) for s in wanted.split(","))
        except ValueError:
            choices = ", ".join([*(s.value for s in ReviewState), ALL_STATES])
            raise ApiError(f"unknown state {wanted!r}; expected one of {choices}") from None

    def limit(request: Request) -> int:
        value = request.query_params.get("limit", "100")
        if not value.isdigit() or not 1 <= int(value) <= 500:
            raise ApiError("limit must be an integer from 1 to 500")
        return int(value)

    async def list_reviews(request: Request, who: Principal) -> Response:
        found = await approvals.list_reviews(who, states=states(request), limit=limit(request))
        return JSONResponse({"reviews": [review_json(r) for r in found]})

    async def get_review(request: Request, who: Principal) -> Response:
        review = await approvals.get_review(request.path_params["review_id"], who)
        return JSONResponse(review_json(review))

    async def approve(request: Request, who: Principal) -> Response:
        data = await body(request)
        review_id = request.path_params["review_id"]
        review = await approvals.approve(review_id, who, text(data, "reason"))
        return JSONResponse(review_json(review))

    async def deny(request: Request, who: Principal) -> Response:
        data = await body(request)
        review_id = request.path_params["review_id"]
        review = await approvals.deny(review_id, who, text(data, "reason") or "")
        return JSONResponse(review_json(review))

    async def request_access(request: Request, who: Principal) -> Response:
        data = await body(request)
        connection = text(data, "connection", required=True) or ""
        try:
            duration = parse_duration(data.get("duration"))
        except DurationError as exc:
            raise ApiError(f"'duration': {exc}") from None
        review = await approvals.request_access(
            who, connection, duration, text(data, "reason") or ""
        )
        return JSONResponse(review_json(review), status_code=201)

    async def list_grants(request: Request, who: Principal) -> Response:
        active = request.query_params.get("active", "true") != "false"
        found = await approvals.list_grants(who, active=active, limit=limit(request))
        now = approvals.now()
        return JSONResponse({"grants": [grant_json(g, now) for g in found]})

    async def revoke_grant(request: Request, who: Principal) -> Response:
        data = await body(request)
        grant = await approvals.revoke_grant(
            request.path_params["grant_id"], who, text(data, "reason")
        )
        return JSONResponse(grant_json(grant, approvals.now()))

    async def healthz(request: Request) -> Response:
        ok = context.healthy()
        return JSONResponse(
            {"status": "ok" if ok else "degraded", "store": ok}, status_code=200 if ok else 503
        )

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/api/reviews", authenticated(list_reviews), methods=["GET"]),
        Route("/api/reviews/{review_id}", authenticated(get_review), methods=["GET"]),
        Route("/api/reviews/{review_id}/approve", authenticated(approve), methods=["POST"]),
        Route("/api/reviews/{review_id}/deny", authenticated(deny), methods=["POST"]),
        Route("/api/access/requests", authenticated(request_access), methods=["POST"]),
        Route("/api/access/grants", authenticated(list_grants), methods=["GET"]),
        Route(
            "/api/access/grants/{grant_id}/revoke",
            authenticated(revoke_grant),
            methods=["POST"],
        ),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(404, "not_found", f"no such endpoint {request.url.path}")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return error_response(405, "method_not_allowed", f"{request.method} is not allowed here")

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})
