"""REST-to-MCP: a tool call becomes one HTTP request to a plain REST service, and its
answer becomes the tool's result.

This module is the pure part: building the request from a tool's ``RestCall`` and the
call's (already validated) arguments, and reading the answer. Sending it, with the
upstream's own credential, is ``McpUpstreams.call_rest``.

Where an argument may end up is fixed by the admin, never by the caller: path values
are percent-encoded whole (a ``/`` or ``..`` in a value cannot leave the template's
segment), header values may not carry line breaks, and the URL is always the
upstream's base URL plus the template.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson

from gateway.schema import RestCall

# Headers a tool argument may not set: they belong to the connection or the gateway
# (the upstream's credential is added after the arguments' headers, and wins).
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
        "authorization",
        "proxy-authorization",
        "cookie",
    }
)
MAX_ANSWER_BYTES = 4 << 20
_ERROR_EXCERPT = 2000


class RestArgumentError(ValueError):
    """The arguments cannot make a request (the message is safe to show)."""


@dataclass(slots=True)
class RestRequest:
    method: str
    url: str
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None


def build_request(call: RestCall, base_url: str, arguments: dict[str, Any]) -> RestRequest:
    """The request ``call`` makes for ``arguments`` (``base_url`` is the upstream's)."""
    path = call.path
    request = RestRequest(call.method, "")
    body: dict[str, Any] = {}
    whole: Any = None
    has_whole = False
    for argument in call.arguments:
        if argument.name not in arguments or arguments[argument.name] is None:
            if argument.in_ == "path":
                raise RestArgumentError(f"'{argument.name}' is required.")
            continue
        value = arguments[argument.name]
        name = argument.field or argument.name
        if argument.in_ == "path":
            path = path.replace("{" + name + "}", _path_segment(argument.name, value))
        elif argument.in_ == "query":
            values = value if isinstance(value, list) else [value]
            request.query.extend((name, _scalar(item)) for item in values)
        elif argument.in_ == "header":
            text = _scalar(value)
            if any(ch in text for ch in "\r\n\0"):
                raise RestArgumentError(f"'{argument.name}' may not contain line breaks.")
            if name.lower() not in _RESERVED_HEADERS:
                request.headers[name] = text
        elif argument.in_ == "body":
            body[name] = value
        else:
            whole, has_whole = value, True
    if "{" in path:
        raise RestArgumentError("The tool's path has a placeholder no argument fills.")
    request.url = base_url.rstrip("/") + "/" + path.lstrip("/")
    if has_whole:
        request.body = orjson.dumps(whole)
    elif body or call.method in ("POST", "PUT", "PATCH"):
        request.body = orjson.dumps(body)
    if request.body is not None:
        request.headers["Content-Type"] = "application/json"
    request.headers.setdefault("Accept", "application/json")
    return request


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value).decode()


def _path_segment(name: str, value: Any) -> str:
    text = _scalar(value)
    if not text:
        # An empty segment would merge the template's segments.
        raise RestArgumentError(f"'{name}' may not be empty.")
    if text in (".", ".."):
        return text.replace(".", "%2E")  # a dot segment would climb the template
    return quote(text, safe="")


def tool_result(
    status: int, content_type: str, body: bytes, select: str, secret: str | None
) -> dict[str, Any]:
    """The MCP ``CallToolResult`` for the service's answer."""
    if not 200 <= status < 300:
        text = _text(body, secret)[:_ERROR_EXCERPT]
        return _error(f"The REST service answered HTTP {status}." + (f"\n{text}" if text else ""))
    if status == 204 or not body:
        return {"content": [{"type": "text", "text": ""}], "isError": False}
    value: Any
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        if "json" in content_type:
            return _error("The REST service sent malformed JSON.")
        return {"content": [{"type": "text", "text": _text(body, secret)}], "isError": False}
    if select:
        found, value = _select(value, select)
        if not found:
            return _error(f"The REST service's answer has no field '{select}'.")
    result: dict[str, Any] = {
        "content": [
            {"type": "text", "text": orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()}
        ],
        "isError": False,
    }
    if isinstance(value, dict):
        result["structuredContent"] = value
    return result


def _select(value: Any, path: str) -> tuple[bool, Any]:
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return False, None
    return True, value


def _text(body: bytes, secret: str | None) -> str:
    text = body.decode("utf-8", "replace")
    # Services echo what they were sent; the gateway's credential must not go back out.
    return text.replace(secret, "[redacted]") if secret else text


def _error(message: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": message}], "isError": True}
