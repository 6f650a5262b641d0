"""Sending responses and OpenAI-style errors from raw ASGI.

Every response carries ``x-request-id``; every error body is an OpenAI error object
with the request id inside ``error`` so that a user can quote it in a support request.
Error messages are fixed strings chosen here: nothing a client or an upstream sent is
echoed back into them except the client's own model name and path.
"""

from __future__ import annotations

import orjson

from gateway.types import Headers, Receive, Send

JSON = b"application/json"


class ApiError(Exception):
    """An error to answer with an OpenAI error object; raised inside request handlers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: Headers | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers
        # An upstream's own error body to relay instead, to OpenAI clients only.
        self.raw_body: bytes | None = None
        self.raw_content_type = JSON


def error_body(err: ApiError, request_id: str) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": err.message,
                "type": err.type,
                "param": err.param,
                "code": err.code,
                "request_id": request_id,
            }
        }
    )


async def send_body(
    send: Send,
    status: int,
    body: bytes,
    request_id: bytes,
    content_type: bytes = JSON,
    extra: Headers | None = None,
) -> None:
    """Send a complete response in two ASGI messages."""
    headers: Headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id),
    ]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, err: ApiError, request_id: str) -> None:
    if err.raw_body is not None:
        await send_body(
            send, err.status, err.raw_body, request_id.encode(), err.raw_content_type, err.headers
        )
        return
    await send_body(
        send, err.status, error_body(err, request_id), request_id.encode(), JSON, err.headers
    )


async def send_chunk(send: Send, chunk: bytes) -> None:
    """One more piece of a streamed response body."""
    await send({"type": "http.response.body", "body": chunk, "more_body": True})


async def client_gone(receive: Receive) -> None:
    """Returns when the client disconnects (for a task racing a stream)."""
    while (await receive())["type"] != "http.disconnect":
        pass
