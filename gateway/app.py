"""The gateway's ASGI application: health, ``/v1/models`` and ``/v1/chat/completions``.

Raw ASGI, no framework, because the request path is the product: one header scan, one
dict lookup on the key's SHA-256, one on the model name, and the body passed through
untouched when nothing in it must change. Each process holds its own applied revision
(``gateway.store``), its own admin listener (``gateway.admin``), one aiohttp session for
upstreams, and background tasks for heartbeats and usage (``gateway.control``,
``gateway.usage``).

Errors are OpenAI error objects with the request id inside ``error``; every response
carries ``x-request-id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time

import aiohttp
import orjson

from gateway import __version__
from gateway.admin import AdminListener
from gateway.config import GatewaySettings
from gateway.control import Heartbeater, control_plane_client
from gateway.keys import hash_key
from gateway.proxy import PreparedCalls, Tokens, chat_completions
from gateway.responses import ApiError, send_body, send_error
from gateway.revision import AppliedRevision, ModelTarget
from gateway.schema import Consumer, UsageEvent
from gateway.store import RevisionStore
from gateway.types import Receive, Scope, Send
from gateway.usage import HttpSink, RedisSink, UsageReporter

log = logging.getLogger("gateway.app")

_CLIENT_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")
# Upstream connections: enough for many concurrent streams per process, with no
# per-host cap (most traffic goes to a handful of vendors).
_UPSTREAM_CONNECTIONS = 4096
_MAX_RECORDED_MODEL = 200


class _ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class Call:
    """What one API call did, for its usage event."""

    __slots__ = (
        "consumer",
        "credential",
        "model",
        "product",
        "request_id",
        "route",
        "started",
        "status",
        "stream",
        "tokens",
        "ts",
    )

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.ts = time.time()
        self.started = time.perf_counter()
        self.route = "unknown"
        self.status = 500
        self.consumer: int | None = None
        self.credential: int | None = None
        self.product: int | None = None
        self.model: str | None = None
        self.stream = False
        self.tokens = Tokens()


class Gateway:
    """The ASGI app of one gateway process."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.store = RevisionStore(settings.state_dir)
        self.http = control_plane_client()
        self.redis_sink = RedisSink(settings.redis_url) if settings.redis_url else None
        self.usage = UsageReporter(
            sink=self.redis_sink
            or HttpSink(self.http, settings.control_plane_url, settings.keys.auth_token),
            state_dir=settings.state_dir,
            instance_id=settings.instance_id,
            flush_seconds=settings.usage_flush_seconds,
        )
        self.admin = AdminListener(
            store=self.store,
            keys=settings.keys,
            instance_id=settings.instance_id,
            host=settings.admin_host,
            port=settings.admin_port,
        )
        self.heartbeater: Heartbeater | None = None
        self.session: aiohttp.ClientSession | None = None
        self.prepared = PreparedCalls()
        self._max_body = settings.max_body_bytes
        self._instance_id = settings.instance_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    # Lifespan -------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("gateway failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        """Load the last-known-good revision and start the per-process machinery."""
        settings = self.settings
        await asyncio.to_thread(settings.state_dir.mkdir, parents=True, exist_ok=True)
        await self.store.load(settings.keys)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=_UPSTREAM_CONNECTIONS, limit_per_host=0, keepalive_timeout=30
            ),
            headers={"User-Agent": f"portico-gateway/{__version__}"},
            # Upstream URLs come from revisions only; no proxy or netrc from the environment.
            trust_env=False,
        )
        bound = await self.admin.start()
        self.heartbeater = Heartbeater(
            client=self.http,
            control_plane_url=settings.control_plane_url,
            token=settings.keys.auth_token,
            store=self.store,
            instance_id=settings.instance_id,
            admin_url=settings.advertised_admin_url(bound),
            interval=settings.heartbeat_seconds,
        )
        self.heartbeater.start()
        self.usage.start()
        log.info(
            "gateway %s ready (pid %d, revision %s)",
            settings.instance_id,
            os.getpid(),
            self.store.number,
        )

    async def shutdown(self) -> None:
        """Stop background work, deliver or spool pending usage, close connections."""
        if self.heartbeater is not None:
            await self.heartbeater.stop()
        await self.admin.stop()
        await self.usage.stop()
        if self.session is not None:
            await self.session.close()
        await self.http.aclose()
        if self.redis_sink is not None:
            await self.redis_sink.close()
        log.info("gateway %s stopped", self.settings.instance_id)

    # HTTP -----------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path.startswith("/v1/"):
            await self._api(scope, receive, send, path)
            return
        request_id = _request_id(
            next((value for name, value in scope["headers"] if name == b"x-request-id"), None)
        )
        if scope["method"] == "GET" and path == "/healthz":
            await send_body(send, 200, b'{"status":"ok"}', request_id.encode())
        elif scope["method"] == "GET" and path == "/readyz":
            number = self.store.number
            if number is None:
                await send_body(send, 503, b'{"status":"no revision applied"}', request_id.encode())
            else:
                body = orjson.dumps({"status": "ready", "revision": number})
                await send_body(send, 200, body, request_id.encode())
        else:
            await send_error(send, _unknown_url(scope["method"], path), request_id)

    async def _api(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        key: bytes | None = None
        alt_key: bytes | None = None
        client_id: bytes | None = None
        declared: bytes | None = None
        # One pass over the headers collects all the request path needs.
        for name, value in scope["headers"]:
            if name == b"authorization":
                if value[:7].lower() == b"bearer ":
                    key = value[7:].strip()
            elif name == b"x-api-key" or name == b"api-key":
                alt_key = value.strip()
            elif name == b"x-request-id":
                client_id = value
            elif name == b"content-length":
                declared = value
        call = Call(_request_id(client_id))
        method = scope["method"]
        try:
            if path == "/v1/chat/completions" and method == "POST":
                call.route = "chat.completions"
                await self._chat(call, key or alt_key, declared, receive, send)
            elif path == "/v1/models" and method == "GET":
                call.route = "models"
                await self._models(call, key or alt_key, send)
            elif path.startswith("/v1/models/") and method == "GET":
                call.route = "models.retrieve"
                await self._model(call, key or alt_key, path[len("/v1/models/") :], send)
            else:
                raise _unknown_url(method, path)
        except ApiError as err:
            call.status = err.status
            await send_error(send, err, call.request_id)
        except _ClientGone:
            call.status = 499  # nginx's "client closed request"; nothing left to answer
        except Exception:
            log.exception("unexpected error serving request %s", call.request_id)
            call.status = 500
            failure = ApiError(
                500,
                "The gateway failed unexpectedly; quote the request id when reporting it.",
                type="server_error",
                code="internal_error",
            )
            # RuntimeError: the response had already started; the log line says enough.
            with contextlib.suppress(RuntimeError):
                await send_error(send, failure, call.request_id)
        finally:
            self._record(call)

    def _record(self, call: Call) -> None:
        self.usage.record(
            UsageEvent(
                id=os.urandom(16).hex(),
                request_id=call.request_id,
                ts=call.ts,
                status=call.status,
                latency_ms=round((time.perf_counter() - call.started) * 1000.0, 3),
                gateway=self._instance_id,
                route=call.route,
                consumer=call.consumer,
                credential=call.credential,
                product=call.product,
                model=call.model,
                prompt_tokens=call.tokens.prompt,
                completion_tokens=call.tokens.completion,
                stream=call.stream,
            )
        )

    def _authenticate(self, call: Call, key: bytes | None) -> tuple[AppliedRevision, Consumer]:
        """The applied revision and the key's consumer; raises 503 or 401 otherwise."""
        revision = self.store.current
        if revision is None:
            raise ApiError(
                503,
                "The gateway has no configuration yet; try again shortly.",
                type="server_error",
                code="gateway_not_ready",
            )
        if not key:
            raise ApiError(
                401,
                "No API key provided. Send it as 'Authorization: Bearer <key>' "
                "(or in an 'x-api-key' or 'api-key' header).",
                code="invalid_api_key",
            )
        doc = revision.doc
        credential = revision.credentials.get(hash_key(key))
        if credential is not None and (
            credential.expires_at is None or credential.expires_at >= time.time()
        ):
            consumer = doc.consumers.get(str(credential.consumer))
            if consumer is not None:
                call.credential = credential.id
                call.consumer = consumer.id
                return revision, consumer
        raise ApiError(
            401,
            "Invalid API key: it is unknown, expired or revoked. "
            "Create a new key for your app in the developer portal.",
            code="invalid_api_key",
        )

    async def _chat(
        self,
        call: Call,
        key: bytes | None,
        declared: bytes | None,
        receive: Receive,
        send: Send,
    ) -> None:
        revision, consumer = self._authenticate(call, key)
        body = await self._read_body(receive, declared)
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ApiError(
                400,
                "The request body is not valid JSON.",
                code="invalid_json",
            ) from None
        if not isinstance(request, dict):
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_body")
        model = request.get("model")
        if not isinstance(model, str) or not model:
            raise _param_error("model", "a model name (string)")
        if not isinstance(request.get("messages"), list):
            raise _param_error("messages", "a list of messages")
        call.model = model[:_MAX_RECORDED_MODEL]
        target = revision.models.get(model)
        if target is None:
            raise ApiError(
                404,
                f"The model {model[:_MAX_RECORDED_MODEL]!r} does not exist or is not "
                "published; GET /v1/models lists the models your key can use.",
                code="model_not_found",
                param="model",
            )
        call.product = target.product.id
        if target.product.slug not in consumer.subscriptions:
            raise ApiError(
                403,
                f"Your key's app is not subscribed to the product {target.product.slug!r}, "
                f"which serves the model {model!r}. Subscribe to it in the developer portal.",
                type="permission_error",
                code="permission_denied",
                param="model",
            )
        stream = request.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise _param_error("stream", "a boolean")
        call.stream = stream is True
        changed = False
        strip_usage = False
        if call.stream:
            options = request.get("stream_options")
            if options is not None and not isinstance(options, dict):
                raise _param_error("stream_options", "an object")
            if not (options and options.get("include_usage") is True):
                # Usage is how consumers are metered, so it is asked for on their behalf
                # and the extra chunk is kept from a client that did not ask for it.
                request["stream_options"] = {**(options or {}), "include_usage": True}
                strip_usage = changed = True
        if target.route.upstream_model != model:
            request["model"] = target.route.upstream_model
            changed = True
        session = self.session
        if session is None:  # only between the lifespan's steps
            raise ApiError(503, "The gateway is starting.", type="server_error")
        call.status = await chat_completions(
            session,
            target,
            self.prepared.chat(revision.models, target),
            orjson.dumps(request) if changed else body,
            stream=call.stream,
            strip_usage=strip_usage,
            tokens=call.tokens,
            request_id=call.request_id.encode(),
            send=send,
            receive=receive,
        )

    async def _models(self, call: Call, key: bytes | None, send: Send) -> None:
        revision, consumer = self._authenticate(call, key)
        subscriptions = consumer.subscriptions
        data = [
            _model_object(name, target)
            for name, target in revision.models.items()
            if target.product.slug in subscriptions
        ]
        call.status = 200
        body = orjson.dumps({"object": "list", "data": data})
        await send_body(send, 200, body, call.request_id.encode())

    async def _model(self, call: Call, key: bytes | None, name: str, send: Send) -> None:
        revision, consumer = self._authenticate(call, key)
        call.model = name[:_MAX_RECORDED_MODEL]
        target = revision.models.get(name)
        if target is None or target.product.slug not in consumer.subscriptions:
            # Unsubscribed models are not revealed by this lookup, as by the list.
            raise ApiError(
                404,
                f"The model {name[:_MAX_RECORDED_MODEL]!r} does not exist or your key "
                "cannot use it.",
                code="model_not_found",
                param="model",
            )
        call.product = target.product.id
        call.status = 200
        body = orjson.dumps(_model_object(name, target))
        await send_body(send, 200, body, call.request_id.encode())

    async def _read_body(self, receive: Receive, declared: bytes | None) -> bytes:
        limit = self._max_body
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise ApiError(400, "Invalid Content-Length header.", code="invalid_body") from None
            if size > limit:
                raise _too_large(limit)
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > limit:
                raise _too_large(limit)
            return body
        # Chunked or split bodies: keep counting so a client cannot stream past the limit.
        chunks = [body]
        size = len(body)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _model_object(name: str, target: ModelTarget) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": target.product.slug}


def _request_id(client_id: bytes | None) -> str:
    """The client's request id when it is safe to echo and log, else a fresh one."""
    if client_id is not None and _CLIENT_REQUEST_ID.match(client_id):
        accepted: str = client_id.decode()
        return accepted
    return os.urandom(16).hex()


def _unknown_url(method: str, path: str) -> ApiError:
    return ApiError(
        404,
        f"Invalid URL ({method} {path[:200]}). This gateway serves GET /v1/models and "
        "POST /v1/chat/completions.",
        code="unknown_url",
    )


def _param_error(param: str, expected: str) -> ApiError:
    return ApiError(
        400,
        f"The request body needs '{param}' to be {expected}.",
        code="invalid_request_parameter",
        param=param,
    )


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is larger than the gateway's limit of {limit} bytes.",
        code="request_too_large",
    )


def create_app() -> Gateway:
    """Uvicorn's app factory: one :class:`Gateway` per worker process."""
    return Gateway(GatewaySettings.from_env())
