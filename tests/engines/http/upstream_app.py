"""A local API for the HTTP engine's tests: a real server (uvicorn + starlette) in a subprocess.

Every request is logged as it arrives (method, path, query, headers) so a test can prove what did
or did not reach the upstream: ``GET /_log`` returns the log, ``DELETE /_log`` clears it (both
are left out of it). Run: ``python -m tests.engines.http.upstream_app PORT [--tls CERT KEY]``.

Endpoints:
- ``/echo/...``: the request as JSON (method, path, query, headers, body as text)
- ``/json/{name}``: canned JSON documents (``customer`` holds an e-mail and a card number)
- ``/status/{code}``: that status with a small JSON body
- ``/slow?delay=S``: answers after S seconds
- ``/download?size=N[&chunked=1]``: N bytes (Content-Length, or chunked)
- ``/upload``: reads the body as a stream; answers its size and SHA-256
- ``/early``: answers 413 without reading the body
- ``/cookie``: sets a cookie
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sys
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

LOG: list[dict[str, Any]] = []
BLOCK = 256 * 1024
PATTERN = bytes(range(256)) * (BLOCK // 256)

DOCS: dict[str, Any] = {
    "customer": {
        "data": [
            {
                "id": 1,
                "name": "Ada",
                "email": "ada@example.com",
                "card": {"number": "4111111111111111", "exp": "12/30"},
            },
            {
                "id": 2,
                "name": "Bob",
                "email": "bob@example.org",
                "card": {"number": "5500005555555559", "exp": "01/29"},
            },
        ]
    },
    "plain": {"hello": "world"},
}


class LogMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] != "/_log":
            LOG.append(
                {
                    "method": scope["method"],
                    "path": scope["path"],
                    "raw_path": scope.get("raw_path", b"").decode("latin-1"),
                    "query": scope["query_string"].decode("latin-1"),
                    "headers": [
                        [k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]
                    ],
                }
            )
        await self.app(scope, receive, send)


async def log_endpoint(request: Request) -> Response:
    if request.method == "DELETE":
        LOG.clear()
        return JSONResponse({"cleared": True})
    return JSONResponse(LOG)


async def echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode("utf-8", "replace"),
        },
        headers={"X-Echo-Auth": request.headers.get("authorization", "")},
    )


async def doc(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in DOCS:
        return JSONResponse({"error": "no such document"}, status_code=404)
    return JSONResponse(DOCS[name])


async def jsonp(request: Request) -> Response:
    """A document as JSONP: ``<callback>(<JSON>);``, or with ``?style=loose`` its keys unquoted
    (a JavaScript object literal, which a browser reads as well as JSON)."""
    name = request.path_params["name"]
    callback = request.query_params.get("callback", "cb")
    text = json.dumps(DOCS.get(name, {}))
    if request.query_params.get("style") == "loose":
        text = re.sub(r'"(\w+)":', r"\1:", text)
    return Response(f"{callback}({text});", media_type="application/javascript")


async def status(request: Request) -> Response:
    code = int(request.path_params["code"])
    if code in (204, 304):
        return Response(status_code=code)
    return JSONResponse({"status": code}, status_code=code)


async def slow(request: Request) -> Response:
    await asyncio.sleep(float(request.query_params.get("delay", "5")))
    return JSONResponse({"slept": True})


async def download(request: Request) -> Response:
    size = int(request.query_params.get("size", "0"))

    async def blocks() -> AsyncIterator[bytes]:
        left = size
        while left > 0:
            n = min(left, BLOCK)
            yield PATTERN[:n]
            left -= n

    headers = {} if request.query_params.get("chunked") else {"Content-Length": str(size)}
    return StreamingResponse(blocks(), media_type="application/octet-stream", headers=headers)


async def upload(request: Request) -> Response:
    digest = hashlib.sha256()
    total = 0
    async for piece in request.stream():
        digest.update(piece)
        total += len(piece)
    return JSONResponse({"bytes": total, "sha256": digest.hexdigest()})


async def early(request: Request) -> Response:
    return JSONResponse({"error": "too large"}, status_code=413, headers={"Connection": "close"})


async def cookie(request: Request) -> Response:
    resp = JSONResponse({"ok": True})
    resp.set_cookie("session", "s3cr3t-session-value", httponly=True)
    return resp


ALL = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

app = Starlette(
    routes=[
        Route("/_log", log_endpoint, methods=["GET", "DELETE"]),
        Route("/echo", echo, methods=ALL),
        Route("/echo/{rest:path}", echo, methods=ALL),
        Route("/json/{name}", doc, methods=["GET"]),
        Route("/jsonp/{name}", jsonp, methods=["GET"]),
        Route("/status/{code:int}", status, methods=ALL),
        Route("/slow", slow, methods=["GET"]),
        Route("/download", download, methods=["GET", "HEAD"]),
        Route("/upload", upload, methods=["POST", "PUT"]),
        Route("/early", early, methods=["POST", "PUT"]),
        Route("/cookie", cookie, methods=["GET"]),
    ]
)
app.add_middleware(LogMiddleware)


def main() -> None:
    import uvicorn

    port = int(sys.argv[1])
    kwargs: dict[str, Any] = {}
    if len(sys.argv) > 2 and sys.argv[2] == "--tls":
        kwargs = {"ssl_certfile": sys.argv[3], "ssl_keyfile": sys.argv[4]}
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="auto",  # httptools when installed (test extras), else h11
        **kwargs,
    )


if __name__ == "__main__":
    main()
