"""The gateway as an A2A client of the agents behind agent products.

A2A agents are called over JSON-RPC at the interface their card names, in the version
they speak there (``AgentTarget.protocol_version``; v0.3 requests and answers are
translated, ``gateway.a2a.translate``), with ``A2A-Version`` set accordingly (the SDK's
server refuses a v1.0 method without it). The backend credential is the upstream's own
(``gateway.backend_auth``): the app's key never reaches the agent.

Plain HTTP agents (``rest-agent``) are called as their ``RestAgentCall`` says: the A2A
message is put into the request template and the reply read back out of the answer.

Failures the agent did not choose are :class:`AgentDown` (they count against the
target's health; ``unsent`` when no connection was made, so another target may be
tried); errors the agent answered with are :class:`AgentRpcError`, relayed as they are.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import aiohttp
import orjson

from gateway.a2a import translate
from gateway.a2a.index import ServedTarget
from gateway.backend_auth import BackendAuth, BackendAuthError
from gateway.wire import json_object, sse_events

# Larger answers are refused rather than buffered.
MAX_ANSWER_BYTES = 16 << 20
_PLACEHOLDERS = ("text", "data", "message_id", "context_id", "task_id")


class AgentDown(Exception):
    """The target did not answer usably; ``message`` is safe to show an app."""

    def __init__(self, message: str, *, unsent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.unsent = unsent


class AgentRpcError(Exception):
    """A JSON-RPC error, from the agent or decided by the gateway, in v1.0 terms."""

    def __init__(self, code: int, message: str, data: list[Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class AgentClient:
    def __init__(self, http: aiohttp.ClientSession, auth: BackendAuth) -> None:
        self._http = http
        self._auth = auth
        self._ids = itertools.count(1)

    async def _headers(
        self, target: ServedTarget, *, stream: bool, extensions: str | None
    ) -> dict[str, str]:
        try:
            credential = await self._auth.headers(
                target.upstream_id, target.upstream, target.secret
            )
        except BackendAuthError as exc:
            raise AgentDown(
                "The agent's authorization server refused the gateway's credentials; "
                "please tell the portal's administrators."
                if exc.refused
                else "The gateway could not reach the agent's authorization server.",
                unsent=True,
            ) from None
        headers = {
            "A2A-Version": target.spec.protocol_version,
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
        }
        if extensions:
            headers["A2A-Extensions"] = extensions
            if target.spec.protocol_version == "0.3":
                headers["X-A2A-Extensions"] = extensions
        headers.update(credential)
        return headers

    def _request(self, target: ServedTarget, method: str, params: dict[str, Any]) -> bytes:
        if target.spec.protocol_version == "0.3":
            name = translate.TO_V03_METHOD.get(method)
            if name is None:
                raise AgentRpcError(-32004, f"This agent speaks A2A v0.3, which has no {method}.")
            method, params = name, translate.params_to_v03(method, params)
        return orjson.dumps(
            {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}
        )

    async def call(
        self, target: ServedTarget, method: str, params: dict[str, Any], extensions: str | None
    ) -> dict[str, Any]:
        """One JSON-RPC request; the v1.0 result. Raises :class:`AgentRpcError` or
        :class:`AgentDown`."""
        body = self._request(target, method, params)
        headers = await self._headers(target, stream=False, extensions=extensions)
        with _transport("The agent did not answer in time."):
            async with self._http.post(
                target.spec.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=target.upstream.timeout_seconds),
            ) as response:
                raw = await _read(response)
                return self._result(target, method, _answer(response.status, raw))

    async def stream(
        self, target: ServedTarget, method: str, params: dict[str, Any], extensions: str | None
    ) -> AsyncIterator[dict[str, Any]]:
        """A streaming request's v1.0 events (``StreamResponse`` objects), as they come;
        an agent that answers with JSON instead gives one (or its error)."""
        body = self._request(target, method, params)
        headers = await self._headers(target, stream=True, extensions=extensions)
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=target.upstream.timeout_seconds,
            sock_read=target.upstream.timeout_seconds,
        )
        with _transport("The agent stopped answering."):
            async with self._http.post(
                target.spec.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=timeout,
            ) as response:
                kind = response.headers.get("Content-Type", "")
                if response.status != 200 or not kind.startswith("text/event-stream"):
                    raw = await _read(response)
                    yield self._result(target, method, _answer(response.status, raw))
                    return
                async for event, data in sse_events(response):
                    message = json_object(data.encode())
                    if event == "error" or "error" in message:
                        raise _rpc_error(message.get("error"))
                    if "result" not in message:
                        raise AgentDown("The agent sent a stream event the gateway cannot read.")
                    yield self._result(target, method, message["result"])

    @staticmethod
    def _result(target: ServedTarget, method: str, result: Any) -> dict[str, Any]:
        if not isinstance(result, dict):
            raise AgentRpcError(-32006, "The agent's answer is not an A2A result.")
        if target.spec.protocol_version != "0.3":
            return result
        try:
            if method in ("GetTask", "CancelTask"):
                return translate.task_from_v03(result)
            return translate.event_from_v03(result)
        except translate.Malformed as exc:
            raise AgentRpcError(
                -32006, f"The agent's answer is not valid A2A v0.3: {exc}."
            ) from None

    async def call_rest(
        self, target: ServedTarget, values: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """A REST agent's reply to one message, as v1.0 parts."""
        call = target.spec.rest
        assert call is not None  # the index checks REST targets have one
        url = (
            target.upstream.base_url.rstrip("/") + call.path
            if call.path
            else target.upstream.base_url
        )
        request = render(call.request, values)
        headers = {"Accept": "application/json, text/plain;q=0.9, */*;q=0.1"}
        params: dict[str, str] | None = None
        data: bytes | None = None
        if call.method == "GET":
            if isinstance(request, dict):
                params = {
                    k: v if isinstance(v, str) else orjson.dumps(v).decode()
                    for k, v in request.items()
                }
        else:
            data = orjson.dumps(request)
            headers["Content-Type"] = "application/json"
        try:
            headers.update(
                await self._auth.headers(target.upstream_id, target.upstream, target.secret)
            )
        except BackendAuthError:
            raise AgentDown(
                "The gateway could not authenticate to the agent.", unsent=True
            ) from None
        if target.upstream.options.get("auth") == "query" and target.secret:
            params = {
                **(params or {}),
                target.upstream.options.get("param") or "api_key": target.secret,
            }
        with _transport("The agent did not answer in time."):
            async with self._http.request(
                call.method,
                url,
                params=params,
                data=data,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=target.upstream.timeout_seconds),
            ) as response:
                raw = await _read(response)
                status = response.status
                kind = response.headers.get("Content-Type", "")
        if status >= 500:
            raise AgentDown(f"The agent failed (HTTP {status}).")
        if status >= 300:
            raise AgentRpcError(-32603, f"The agent refused the request (HTTP {status}).")
        return reply_parts(raw, kind, call.reply)


@contextlib.contextmanager
def _transport(timed_out: str) -> Iterator[None]:
    """Connection failures as :class:`AgentDown` (``unsent`` when no connection was
    made); ``timed_out`` says what a timeout means for this request."""
    try:
        yield
    except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError) as exc:
        unsent = isinstance(exc, aiohttp.ClientConnectorError)
        raise AgentDown("The gateway could not reach the agent.", unsent=unsent) from None
    except TimeoutError:
        raise AgentDown(timed_out) from None
    except aiohttp.ClientError:
        raise AgentDown("The connection to the agent failed.") from None


def render(template: Any, values: Mapping[str, Any]) -> Any:
    """``template`` with its placeholders (``{{text}}``...) filled in: a string that is
    exactly one becomes the value itself, others have them replaced by text."""
    if isinstance(template, str):
        for name in _PLACEHOLDERS:
            token = "{{" + name + "}}"
            if template == token:
                return values.get(name)
        for name in _PLACEHOLDERS:
            token = "{{" + name + "}}"
            if token in template:
                value = values.get(name)
                text = (
                    value
                    if isinstance(value, str)
                    else ""
                    if value is None
                    else orjson.dumps(value).decode()
                )
                template = template.replace(token, text)
        return template
    if isinstance(template, dict):
        return {key: render(value, values) for key, value in template.items()}
    if isinstance(template, list):
        return [render(value, values) for value in template]
    return template


def reply_parts(raw: bytes, content_type: str, select: str) -> list[dict[str, Any]]:
    """The parts of a REST agent's reply: the selected value of a JSON answer (a string
    as text, anything else as data), or a non-JSON answer as text."""
    try:
        value: Any = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return [{"text": raw.decode("utf-8", "replace")}]
    if not content_type.startswith(("application/json", "application/")) and isinstance(value, str):
        return [{"text": value}]
    for step in select.split(".") if select else ():
        if isinstance(value, dict) and step in value:
            value = value[step]
        elif isinstance(value, list) and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            raise AgentRpcError(
                -32006, f"The agent's answer has nothing at {select!r}, where its reply should be."
            )
    if isinstance(value, str):
        return [{"text": value}]
    return [{"data": value}]


async def _read(response: aiohttp.ClientResponse) -> bytes:
    raw = await response.content.read(MAX_ANSWER_BYTES + 1)
    if len(raw) > MAX_ANSWER_BYTES:
        raise AgentDown(
            f"The agent's answer is larger than the gateway relays ({MAX_ANSWER_BYTES >> 20} MiB)."
        )
    return raw


def _answer(status: int, raw: bytes) -> Any:
    """The ``result`` of a JSON-RPC answer; raises for an error or no answer."""
    message = json_object(raw)
    if "error" in message:
        raise _rpc_error(message["error"])
    if "result" in message:
        return message["result"]
    if status in (401, 403):
        raise AgentDown(
            "The agent refused the gateway's credentials; please tell the portal's administrators."
        )
    if status >= 500:
        raise AgentDown(f"The agent failed (HTTP {status}).")
    raise AgentRpcError(-32006, f"The agent's answer is not JSON-RPC (HTTP {status}).")


def _rpc_error(error: Any) -> AgentRpcError:
    if not isinstance(error, dict) or not isinstance(error.get("code"), int):
        return AgentRpcError(-32006, "The agent sent an error the gateway cannot read.")
    message = error.get("message")
    data = error.get("data")
    return AgentRpcError(
        error["code"],
        message if isinstance(message, str) else "The agent failed.",
        data if isinstance(data, list) else None,
    )
