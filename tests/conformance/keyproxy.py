"""A reverse proxy that adds an app key, so the conformance suite can reach the gateway.

The conformance CLI has no way to send credentials, and the gateway's MCP endpoints
want ``Authorization: Bearer <key>``. This proxy sets that one header and passes
everything else through as it came, both ways: method, path and query, every other
request header (``Host`` and ``Origin`` included, so the DNS-rebinding scenario tests
the gateway's checks rather than the proxy's), the body, the status, the response
headers, and the response body chunk by chunk as it arrives (SSE streams stay
streams). Only hop-by-hop headers (RFC 9110 7.6.1) are not forwarded, and the
optional whitespace around header values is dropped.

    python -m tests.conformance.keyproxy --port 8100 --upstream http://127.0.0.1:8000
    # the key comes from the environment: KEYPROXY_BEARER
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from typing import Any

import httpx
import uvicorn

KEY_VARIABLE = "KEYPROXY_BEARER"
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
Scope = dict[str, Any]
Message = dict[str, Any]


class KeyProxy:
    """The ASGI app: every HTTP request goes to ``upstream`` with the key added."""

    def __init__(self, upstream: str, key: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.authorization = f"Bearer {key}".encode()
        self.client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._proxy(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # No pool limits and no read timeout: SSE streams stay open as long as
                # the two ends want. No default headers: only what the client sent goes.
                self.client = httpx.AsyncClient(
                    timeout=httpx.Timeout(10.0, read=None),
                    limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
                )
                self.client.headers.clear()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _proxy(self, scope: Scope, receive: Any, send: Any) -> None:
        assert self.client is not None
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        # Values go without the optional whitespace around them (RFC 9110 5.5: it is
        # not part of the value), which httpx refuses to send.
        headers = [
            (name, value.strip(b" \t"))
            for name, value in scope["headers"]
            if name not in _HOP_BY_HOP and name not in (b"authorization", b"content-length")
        ]
        headers.append((b"authorization", self.authorization))
        target = self.upstream + scope["raw_path"].decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        request = self.client.build_request(
            scope["method"], target, headers=headers, content=bytes(body)
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            text = f"keyproxy: the upstream failed: {type(exc).__name__}".encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 502,
                    "headers": [(b"content-type", b"text/plain")],
                }
            )
            await send({"type": "http.response.body", "body": text})
            return
        try:
            await self._relay(response, receive, send)
        finally:
            await response.aclose()

    async def _relay(self, response: httpx.Response, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": [
                    (name, value)
                    for name, value in response.headers.raw
                    if name.lower() not in _HOP_BY_HOP
                ],
            }
        )

        async def pump() -> None:
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

        async def hang_up() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        # Whichever ends first: the upstream's body, or the client going away (then the
        # upstream's stream is closed too, as a direct client's leaving would close it).
        tasks = [asyncio.create_task(pump()), asyncio.create_task(hang_up())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                with contextlib.suppress(httpx.HTTPError, OSError):
                    task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8000")
    args = parser.parse_args()
    key = os.environ.get(KEY_VARIABLE)
    if not key:
        parser.error(f"set {KEY_VARIABLE} to the app key to add")
    uvicorn.run(
        KeyProxy(args.upstream, key),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        # The gateway's own Date and Server headers go through; uvicorn adds none.
        server_header=False,
        date_header=False,
    )


if __name__ == "__main__":
    main()
