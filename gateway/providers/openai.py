"""Vendors that speak OpenAI's wire format, with each one's small differences.

OpenAI, Azure OpenAI, DeepSeek, Mistral, Alibaba DashScope (its compatible mode),
Ollama, vLLM and any other OpenAI-compatible server. Bodies pass through: the gateway
only renames the model and asks for stream usage, so :meth:`OpenAIWire.chat_request`
is for the converted paths (Anthropic clients), and the fast path uses :meth:`url`
and :meth:`headers` once per target and credential.

Differences handled here:

- Azure OpenAI: ``api-key`` instead of a bearer token; with the ``api_version`` option
  the classic deployment URL ``/openai/deployments/<model>/...?api-version=...`` (the
  route's upstream model is the deployment name), without it the v1 API
  ``/openai/v1/...``.
- Mistral: streams always end with usage and the API refuses ``stream_options``, so it
  is left out.
- Ollama and vLLM: no credential needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson

from gateway.providers._convert import SseDecoder, json_object
from gateway.providers.base import (
    Endpoint,
    FailureKind,
    HttpRequest,
    Json,
    UpstreamFailure,
    classify_status,
    mentions_context_window,
    retry_after_seconds,
)

_MAX_MESSAGE = 500


class OpenAIWire:
    """One OpenAI-wire vendor (see the module docstring)."""

    openai_wire = True

    def __init__(self, vendor: str, *, auth: str = "bearer", stream_options: bool = True) -> None:
        self.vendor = vendor
        self._auth = auth
        self.stream_options = stream_options

    # The fast path ----------------------------------------------------------------------

    def url(self, endpoint: Endpoint, operation: str) -> str:
        """The URL of ``operation`` ("chat/completions", "embeddings", "responses")."""
        base = endpoint.base_url.rstrip("/")
        if self.vendor == "azure_openai":
            version = endpoint.options.get("api_version")
            if version:
                deployment = quote(endpoint.model, safe="")
                return (
                    f"{base}/openai/deployments/{deployment}/{operation}"
                    f"?api-version={quote(version, safe='')}"
                )
            return f"{base}/openai/v1/{operation}"
        return f"{base}/{operation}"

    def headers(self, endpoint: Endpoint) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if endpoint.credential:
            if self._auth == "api-key":
                headers["api-key"] = endpoint.credential
            else:
                headers["Authorization"] = "Bearer " + endpoint.credential
        return headers

    # The Adapter protocol (converted paths) ----------------------------------------------

    def chat_request(self, endpoint: Endpoint, request: Json, *, stream: bool) -> HttpRequest:
        body: dict[str, Any] = {**request, "model": endpoint.model}
        if stream:
            body["stream"] = True
            if self.stream_options:
                body["stream_options"] = {"include_usage": True}
            else:
                body.pop("stream_options", None)
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        return HttpRequest(
            url=self.url(endpoint, "chat/completions"),
            headers=self.headers(endpoint),
            body=orjson.dumps(body),
        )

    def chat_response(self, endpoint: Endpoint, payload: bytes) -> Json:
        answer = json_object(payload)
        if answer is None or not isinstance(answer.get("choices"), list):
            raise UpstreamFailure(
                FailureKind.SERVER, "The upstream answered with a malformed completion."
            )
        return answer

    def chat_stream(self, endpoint: Endpoint) -> SseChunks:
        return SseChunks()

    def embeddings_request(self, endpoint: Endpoint, request: Json) -> HttpRequest:
        return HttpRequest(
            url=self.url(endpoint, "embeddings"),
            headers=self.headers(endpoint),
            body=orjson.dumps({**request, "model": endpoint.model}),
        )

    def embeddings_response(self, endpoint: Endpoint, payload: bytes) -> Json:
        answer = json_object(payload)
        if answer is None or not isinstance(answer.get("data"), list):
            raise UpstreamFailure(
                FailureKind.SERVER, "The upstream answered with malformed embeddings."
            )
        return answer

    def failure(self, status: int, payload: bytes, headers: Mapping[str, str]) -> UpstreamFailure:
        return openai_failure(status, payload, headers)


def openai_failure(status: int, payload: bytes, headers: Mapping[str, str]) -> UpstreamFailure:
    """Classify an OpenAI-format error answer."""
    error = json_object(payload)
    details = error.get("error") if error is not None else None
    message, code, param = "", None, None
    if isinstance(details, dict):
        message = str(details.get("message") or "")[:_MAX_MESSAGE]
        code = details.get("code") if isinstance(details.get("code"), str) else None
        param = details.get("param") if isinstance(details.get("param"), str) else None
    kind = classify_status(status)
    if kind is FailureKind.BAD_REQUEST and (
        code == "context_length_exceeded" or mentions_context_window(message)
    ):
        kind = FailureKind.CONTEXT_WINDOW
    return UpstreamFailure(
        kind,
        message or f"The upstream answered HTTP {status}.",
        status=status,
        retry_after=retry_after_seconds(headers),
        param=param,
        code=code,
    )


class SseChunks(SseDecoder):
    """OpenAI's own stream format, parsed into chunk dicts (for the converted paths)."""

    __slots__ = ("_done",)

    def __init__(self) -> None:
        super().__init__()
        self._done = False

    def _end(self, chunks: list[Json]) -> None:
        if not self._done:
            raise UpstreamFailure(FailureKind.SERVER, "The upstream broke off the stream.")

    def _event(self, data: bytes, chunks: list[Json]) -> None:
        if data == b"[DONE]":
            self._done = True
            return
        chunk = json_object(data)
        if chunk is None:
            return
        if "error" in chunk and "choices" not in chunk:
            error = chunk["error"] if isinstance(chunk["error"], dict) else {}
            message = error.get("message") or "The upstream reported an error mid-stream."
            raise UpstreamFailure(FailureKind.SERVER, str(message)[:_MAX_MESSAGE])
        if not isinstance(chunk.get("choices"), list):
            chunk["choices"] = []
        chunks.append(chunk)


OPENAI = OpenAIWire("openai")
AZURE_OPENAI = OpenAIWire("azure_openai", auth="api-key")
DEEPSEEK = OpenAIWire("deepseek")
MISTRAL = OpenAIWire("mistral", stream_options=False)
DASHSCOPE = OpenAIWire("dashscope")
OLLAMA = OpenAIWire("ollama")
VLLM = OpenAIWire("vllm")
OPENAI_COMPATIBLE = OpenAIWire("openai_compatible")
