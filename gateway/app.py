"""The gateway's ASGI application: health, the model APIs under ``/v1/`` and MCP.

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
from collections.abc import Callable
from typing import Any, NamedTuple

import aiohttp
import orjson

from gateway import __version__, anthropic, openai_responses, realtime
from gateway.a2a.health import HealthProber
from gateway.a2a.server import A2aService
from gateway.a2a.tasks import TaskBook
from gateway.a2a.upstream import AgentClient
from gateway.admin import AdminListener
from gateway.backend_auth import BackendAuth
from gateway.cache import Directive, Entry, Recorder, cache_key, create_cache, directive
from gateway.config import GatewaySettings
from gateway.connector import EgressConnector
from gateway.control import Heartbeater, control_plane_client
from gateway.keys import hash_key
from gateway.limits import Decision, Limits, create_limiter
from gateway.mcp.server import McpService, resource_metadata
from gateway.mcp.sessions import Sessions
from gateway.mcp.streams import SseHub
from gateway.mcp.upstream import McpUpstreams
from gateway.proxy import (
    OPENAI_CLIENT,
    ClientProtocol,
    Outcome,
    Upstreams,
    serve_chat,
    serve_embeddings,
)
from gateway.responses import ApiError, send_body, send_error
from gateway.revision import AppliedRevision
from gateway.routing import Route, Router, RouteTarget
from gateway.schema import Consumer, Plan, Subscription, UsageEvent
from gateway.store import RevisionStore
from gateway.types import Headers, Receive, Scope, Send
from gateway.usage import HttpSink, RedisSink, UsageReporter

log = logging.getLogger("gateway.app")

_CLIENT_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")
_METADATA_PATH = "/.well-known/oauth-protected-resource"
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,59}$")
# Upstream connections: enough for many concurrent streams per process, with no
# per-host cap (most traffic goes to a handful of vendors).
_UPSTREAM_CONNECTIONS = 4096
_MAX_RECORDED_MODEL = 200
# Vendors whose Realtime API the gateway relays.
_REALTIME_VENDORS = ("openai", "azure_openai")


class _ClientGone(Exception):
    """The client disconnected before its request body arrived."""


class Call:
    """What one API call did, for its usage event."""

    __slots__ = (
        "cache",
        "cache_state",
        "cached",
        "consumer",
        "credential",
        "model",
        "outcome",
        "pin",
        "product",
        "protocol",
        "request_id",
        "route",
        "started",
        "status",
        "stream",
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
        self.outcome = Outcome()
        self.protocol = "openai"  # the error format: "openai" or "anthropic"
        self.pin: str | None = None  # x-portico-upstream: the one upstream to use
        self.cache = Directive.USE  # what the request asks of the response cache
        self.cache_state: bytes | None = None  # x-portico-cache: hit, miss or skip
        self.cached = False


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
        self.upstreams: Upstreams | None = None
        self.router = Router()
        self.limiter = create_limiter(settings.redis_url, timeout=settings.redis_timeout_seconds)
        self.cache = create_cache(
            settings.redis_url,
            max_bytes=settings.cache_max_bytes,
            timeout=settings.redis_timeout_seconds,
        )
        self._limits: dict[tuple[int | None, ...], Limits] = {}
        self.mcp_sessions = Sessions(
            settings.keys.seal_key, settings.redis_url, settings.redis_timeout_seconds
        )
        self.mcp_streams = SseHub(self.mcp_sessions.redis)
        self.mcp: McpService | None = None
        self.a2a: A2aService | None = None
        self.agent_health: HealthProber | None = None
        self._max_body = settings.max_body_bytes
        self._instance_id = settings.instance_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
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
            connector=EgressConnector(
                settings.egress, limit=_UPSTREAM_CONNECTIONS, limit_per_host=0, keepalive_timeout=30
            ),
            headers={"User-Agent": f"portico-gateway/{__version__}"},
            # Upstream URLs come from revisions only; no proxy or netrc from the environment.
            trust_env=False,
        )
        self.upstreams = Upstreams(self.session, self.router)
        backend_auth = BackendAuth(self.session)
        self.mcp = McpService(
            self,
            self.mcp_sessions,
            McpUpstreams(self.session, backend_auth),
            token_key=settings.keys.token_key,
            hub=self.mcp_streams,
            allowed_origins=settings.allowed_origins,
        )
        self.a2a = A2aService(
            self,
            AgentClient(self.session, backend_auth),
            self.router,
            settings.keys.seal_key,
            TaskBook(self.mcp_sessions.redis),
        )
        self.agent_health = HealthProber(self, self.session, backend_auth, self.router)
        self.agent_health.start()
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
        if self.agent_health is not None:
            await self.agent_health.stop()
        await self.usage.stop()
        if self.session is not None:
            await self.session.close()
        await self.limiter.close()
        await self.cache.close()
        await self.mcp_streams.shutdown()
        await self.mcp_sessions.close()
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
        if path == "/mcp" or path.startswith("/mcp/"):
            await self._mcp(scope, receive, send, path)
            return
        if path.startswith("/agents/"):
            await self._agents(scope, receive, send, path)
            return
        request_id = _request_id(_header(scope, b"x-request-id"))
        if scope["method"] == "GET" and path == "/healthz":
            await send_body(send, 200, b'{"status":"ok"}', request_id.encode())
        elif scope["method"] == "GET" and path.startswith(_METADATA_PATH):
            await self._resource_metadata(send, path[len(_METADATA_PATH) :], request_id)
        elif scope["method"] == "GET" and path == "/readyz":
            number = self.store.number
            if number is None:
                await send_body(send, 503, b'{"status":"no revision applied"}', request_id.encode())
            else:
                body = orjson.dumps({"status": "ready", "revision": number})
                await send_body(send, 200, body, request_id.encode())
        else:
            await send_error(send, _unknown_url(scope["method"], path), request_id)

    async def _resource_metadata(self, send: Send, resource: str, request_id: str) -> None:
        """RFC 9728 metadata of an MCP endpoint (``/mcp/<product>`` or ``/mcp``; the
        root document describes ``/mcp``), when the portal issues tokens for them."""
        revision = self.store.current
        oauth = revision.doc.oauth if revision is not None else None
        slug = resource[len("/mcp/") :] if resource.startswith("/mcp/") else None
        known = resource in ("", "/mcp") or (
            slug is not None and revision is not None and slug in revision.mcp.products
        )
        if oauth is None or not known:
            await send_error(send, _unknown_url("GET", _METADATA_PATH + resource), request_id)
            return
        body = orjson.dumps(resource_metadata(oauth.resource_base, oauth.issuer, slug))
        # Public metadata, fetched by browser-based clients from other origins too.
        cors: Headers = [(b"access-control-allow-origin", b"*")]
        await send_body(send, 200, body, request_id.encode(), extra=cors)

    async def _api(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        key: bytes | None = None
        alt_key: bytes | None = None
        client_id: bytes | None = None
        declared: bytes | None = None
        pin: bytes | None = None
        cache: bytes | None = None
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
            elif name == b"x-portico-upstream":
                pin = value
            elif name == b"cache-control" or name == b"x-portico-cache":
                cache = value if cache is None else cache + b"," + value
        call = Call(_request_id(client_id))
        if pin is not None:
            call.pin = pin.decode("latin-1")
        if cache is not None:
            call.cache = directive(cache)
        method = scope["method"]
        try:
            model_api = _MODEL_APIS.get(path) if method == "POST" else None
            if model_api is not None:
                call.route, call.protocol, parse = model_api
                if call.protocol == "anthropic":  # Anthropic's SDKs send x-api-key
                    key, alt_key = alt_key, key
                await self._model_call(call, key or alt_key, declared, receive, send, parse)
            elif path == "/v1/embeddings" and method == "POST":
                call.route = "embeddings"
                await self._embeddings(call, key or alt_key, declared, receive, send)
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
            if call.protocol == "anthropic":
                body = anthropic.error_body(err.status, err.message, call.request_id)
                await send_body(send, err.status, body, call.request_id.encode(), extra=err.headers)
            else:
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

    async def _mcp(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """``/mcp/<product>`` and ``/mcp`` (``gateway.mcp.server``)."""
        call = Call(_request_id(_header(scope, b"x-request-id")))
        call.route = "mcp"
        slug = path[len("/mcp/") :].rstrip("/") or None if path != "/mcp" else None
        try:
            if self.mcp is None or (slug is not None and not _SLUG.match(slug)):
                raise _unknown_url(scope["method"], path)
            await self.mcp.serve(call, scope, receive, send, slug)
        except ApiError as err:
            call.status = err.status
            await send_error(send, err, call.request_id)
        except _ClientGone:
            call.status = 499
        finally:
            self._record(call)

    async def _agents(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        """``/agents/<product>`` and below (``gateway.a2a.server``)."""
        call = Call(_request_id(_header(scope, b"x-request-id")))
        call.route = "a2a"
        slug, _, rest = path[len("/agents/") :].partition("/")
        pin = _header(scope, b"x-portico-upstream")
        if pin is not None:
            call.pin = pin.decode("latin-1")
        try:
            if self.a2a is None or not _SLUG.match(slug):
                raise _unknown_url(scope["method"], path)
            await self.a2a.serve(call, scope, receive, send, slug, rest and "/" + rest)
        except ApiError as err:
            call.status = err.status
            await send_error(send, err, call.request_id)
        except _ClientGone:
            call.status = 499
        except Exception:
            log.exception("unexpected error serving request %s", call.request_id)
            call.status = 500
            with contextlib.suppress(RuntimeError):
                await send_error(
                    send,
                    ApiError(500, "The gateway failed unexpectedly.", type="server_error"),
                    call.request_id,
                )
        finally:
            self._record(call)

    def record_target(self, call: Call, label: str) -> None:
        """Which target served the call, for its usage event (``gateway.a2a``)."""
        call.outcome.target = label

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
                prompt_tokens=call.outcome.tokens.prompt,
                completion_tokens=call.outcome.tokens.completion,
                stream=call.stream,
                target=(call.outcome.target or "")[:300],
                cached=call.cached,
                estimated=call.outcome.tokens.estimated,
            )
        )

    def current(self) -> AppliedRevision | None:
        """The applied revision, if any (``gateway.mcp.server.Host``)."""
        return self.store.current

    def applied(self) -> AppliedRevision:
        """The applied revision; raises 503 when there is none yet."""
        revision = self.store.current
        if revision is None:
            raise ApiError(
                503,
                "The gateway has no configuration yet; try again shortly.",
                type="server_error",
                code="gateway_not_ready",
            )
        return revision

    def authenticate(self, call: Call, key: bytes | None) -> tuple[AppliedRevision, Consumer]:
        """The applied revision and the key's consumer; raises 503 or 401 otherwise."""
        revision = self.applied()
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

    async def _model_call(
        self,
        call: Call,
        key: bytes | None,
        declared: bytes | None,
        receive: Receive,
        send: Send,
        parse: Parser,
    ) -> None:
        """A chat call in any of the APIs: parse it into the OpenAI shape, route it, and
        serve it under the plan's limits (reserve the estimate, settle the real count)."""
        revision, consumer = self.authenticate(call, key)
        body = await self.read_body(receive, declared)
        parsed = parse(body)
        request = parsed.request
        route, subscription = self._route(call, revision, consumer, request["model"], "chat")
        call.stream = request.get("stream") is True
        decision = await self.acquire(subscription, lambda: _estimate(request, parsed.raw))
        upstreams = self._upstreams()
        outcome = call.outcome
        try:
            cached = await self._cached(call, route, body, decision, send)
            if cached is None:
                return
            await serve_chat(
                upstreams,
                revision.models,
                route,
                request=request,
                body=parsed.raw,
                client=parsed.client,
                stream=call.stream,
                include_usage=parsed.include_usage,
                call=call,
                outcome=outcome,
                request_id=call.request_id,
                extra_headers=self._headers_for(call, decision),
                send=cached.send,
                receive=receive,
            )
            call.status = outcome.status
            await cached.keep(outcome)
        finally:
            await self.settle(decision, outcome.tokens.total or 0)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The Realtime API (``/v1/realtime?model=...``), relayed to an OpenAI-wire target."""
        call = Call(_request_id(_header(scope, b"x-request-id")))
        call.route, call.stream = "realtime", True
        pin = _header(scope, b"x-portico-upstream")
        call.pin = pin.decode("latin-1") if pin is not None else None
        decision: Decision | None = None
        try:
            if scope["path"] != "/v1/realtime":
                raise _unknown_url("GET", scope["path"])
            revision, consumer = self.authenticate(call, realtime.client_key(scope))
            model = realtime.requested_model(scope)
            if not model:
                raise _param_error("model", "a model name in the query string (?model=...)")
            route, subscription = self._route(call, revision, consumer, model, "chat")
            planned = next(
                self.router.plan(route, revision.models, pin=call.pin, consumer=call.consumer),
                None,
            )
            if planned is None or planned.target.upstream.vendor not in _REALTIME_VENDORS:
                raise ApiError(
                    400,
                    f"The model {model!r} is not served over the Realtime API.",
                    code="model_not_supported",
                    param="model",
                )
            decision = await self.acquire(subscription, lambda: 1)
            upstreams = self._upstreams()
            prepared = upstreams.prepared.get(revision.models, planned, "realtime")
            call.status = await realtime.relay(
                scope,
                receive,
                send,
                session=upstreams.session,
                url=realtime.upstream_url(prepared.url, planned.target.model),
                headers=dict(prepared.headers),
                upstream_model=planned.target.model,
                public_model=model,
                tokens=call.outcome.tokens,
                request_id=call.request_id,
                response_headers=self._headers_for(call, decision)(planned.target),
                connect_seconds=planned.target.upstream.timeout_seconds,
            )
            call.outcome.target = planned.target.label
        except ApiError as err:
            call.status = err.status
            await realtime.refuse(
                scope,
                send,
                err.status,
                err.message,
                call.request_id,
                code=err.code,
                error_type=err.type,
                headers=err.headers,
            )
        finally:
            await self.settle(decision, call.outcome.tokens.total or 0)
            self._record(call)

    async def _embeddings(
        self,
        call: Call,
        key: bytes | None,
        declared: bytes | None,
        receive: Receive,
        send: Send,
    ) -> None:
        revision, consumer = self.authenticate(call, key)
        body = await self.read_body(receive, declared)
        request = _json_object(body)
        model = request.get("model")
        if not isinstance(model, str) or not model:
            raise _param_error("model", "a model name (string)")
        given = request.get("input")
        if not (isinstance(given, str) or (isinstance(given, list) and given)):
            raise _param_error("input", "a string or a non-empty list")
        route, subscription = self._route(call, revision, consumer, model, "embeddings")
        decision = await self.acquire(subscription, lambda: len(body) // 4 + 1)
        try:
            cached = await self._cached(call, route, body, decision, send)
            if cached is None:
                return
            await serve_embeddings(
                self._upstreams(),
                revision.models,
                route,
                request=request,
                body=body,
                call=call,
                outcome=call.outcome,
                extra_headers=self._headers_for(call, decision),
                send=cached.send,
            )
            call.status = call.outcome.status
            await cached.keep(call.outcome)
        finally:
            await self.settle(decision, call.outcome.tokens.total or 0)

    async def _cached(
        self, call: Call, route: Route, body: bytes, decision: Decision | None, send: Send
    ) -> _Caching | None:
        """Answer from the product's response cache if it can (then ``None``), else how
        to send the answer so that it is kept (see ``gateway.cache``)."""
        policy = route.product.cache
        if policy is None:
            return _Caching(send)
        if call.cache == Directive.SKIP:
            call.cache_state = b"skip"
            return _Caching(send)
        scope = f"product:{route.product.id}" if policy.shared else f"consumer:{call.consumer}"
        key = cache_key(scope, call.route, call.pin, body)
        if call.cache == Directive.USE:
            entry = await self.cache.get(key)
            if entry is not None:
                await self._send_cached(call, entry, decision, send)
                return None
        call.cache_state = b"miss"
        return _Caching(Recorder(send), self, key, policy.ttl_seconds)

    async def _send_cached(
        self, call: Call, entry: Entry, decision: Decision | None, send: Send
    ) -> None:
        call.cached = True
        call.status = call.outcome.status = 200
        call.outcome.target = entry.target
        call.outcome.tokens.prompt = call.outcome.tokens.completion = 0
        age = max(0, int(time.time() - entry.stored_at))
        headers = [
            (b"content-type", entry.content_type),
            (b"content-length", str(len(entry.body)).encode()),
            (b"x-request-id", call.request_id.encode()),
            (b"x-portico-target", entry.target.encode()),
            (b"x-portico-cache", b"hit"),
            (b"age", str(age).encode()),
        ]
        if decision is not None:
            headers.extend(decision.headers)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": entry.body})

    def _route(
        self,
        call: Call,
        revision: AppliedRevision,
        consumer: Consumer,
        model: str,
        kind: str,
    ) -> tuple[Route, Subscription]:
        """The route of ``model`` and the consumer's subscription that allows it."""
        call.model = model[:_MAX_RECORDED_MODEL]
        route = revision.models.get(model)
        if route is None:
            raise ApiError(
                404,
                f"The model {model[:_MAX_RECORDED_MODEL]!r} does not exist or is not "
                "published; GET /v1/models lists the models your key can use.",
                code="model_not_found",
                param="model",
            )
        call.product = route.product.id
        subscription = consumer.subscriptions.get(route.product.slug)
        if subscription is None:
            raise ApiError(
                403,
                f"Your key's app is not subscribed to the product {route.product.slug!r}, "
                f"which serves the model {model!r}. Subscribe to it in the developer portal.",
                type="permission_error",
                code="permission_denied",
                param="model",
            )
        if route.spec.kind != kind:
            endpoint = (
                "/v1/embeddings" if route.spec.kind == "embeddings" else "/v1/chat/completions"
            )
            raise ApiError(
                400,
                f"The model {model!r} is a {route.spec.kind} model; call it at {endpoint}.",
                code="model_not_supported",
                param="model",
            )
        return route, subscription

    async def acquire(
        self, subscription: Subscription, estimate: Callable[[], int]
    ) -> Decision | None:
        """Count the call against the subscription's own limit (an admin's, for this
        app) and its plan's; raises 429 when over one.

        ``estimate`` gives the tokens to reserve; it is only worked out when the plan
        has limits, which most calls' plans do not.
        """
        if subscription.requests_per_minute is not None:
            await self.acquire_rate(
                f"sub-own:{subscription.id}",
                subscription.requests_per_minute,
                "the limit the portal's administrators set for this app",
            )
        limits = self._limits_of(subscription.plan)
        if limits is None:
            return None
        decision = await self.limiter.acquire(str(subscription.id), limits, estimate())
        if not decision.allowed:
            raise _refusal(decision, "your subscription's plan allows no more")
        return decision

    async def acquire_rate(self, key: str, per_minute: int, what: str) -> Decision:
        """Count a request against a limit of ``per_minute`` under ``key`` (a product's
        global limit, a subscription's own; ``what`` says which); raises 429 when over
        it."""
        decision = await self.limiter.acquire(key, self._shaped((per_minute, None, None, None)), 1)
        if not decision.allowed:
            raise _refusal(decision, f"{what} allows no more")
        return decision

    async def settle(self, decision: Decision | None, tokens: int) -> None:
        """Replace a call's reservation by the tokens it used (0 if it failed or used
        none). The MCP endpoints (``gateway.mcp.server.Host``) use it as calls do."""
        if decision is not None and decision.ticket is not None:
            # Shielded: a client that leaves must not cancel the settling.
            await asyncio.shield(self.limiter.settle(decision.ticket, tokens))

    def _limits_of(self, plan: Plan) -> Limits | None:
        limits = self._shaped(
            (
                plan.requests_per_minute,
                plan.tokens_per_minute,
                plan.tokens_per_day,
                plan.token_quota,
            )
        )
        return None if limits.unlimited else limits

    def _shaped(self, shape: tuple[int | None, ...]) -> Limits:
        limits = self._limits.get(shape)
        if limits is None:
            if len(self._limits) > 10_000:
                self._limits.clear()
            limits = self._limits[shape] = Limits(*shape)
        return limits

    def _headers_for(
        self, call: Call, decision: Decision | None
    ) -> Callable[[RouteTarget], Headers]:
        def headers(target: RouteTarget) -> Headers:
            outcome = call.outcome
            overhead = outcome.attempt_started - call.started - outcome.upstream_seconds
            extra: Headers = [
                (b"x-request-id", call.request_id.encode()),
                (b"x-portico-target", target.label.encode()),
                (b"x-portico-overhead-ms", f"{max(overhead, 0.0) * 1000.0:.3f}".encode()),
            ]
            if call.cache_state is not None:
                extra.append((b"x-portico-cache", call.cache_state))
            if decision is not None:
                extra.extend(decision.headers)
            return extra

        return headers

    def _upstreams(self) -> Upstreams:
        if self.upstreams is None:  # only between the lifespan's steps
            raise ApiError(503, "The gateway is starting.", type="server_error")
        return self.upstreams

    async def _models(self, call: Call, key: bytes | None, send: Send) -> None:
        revision, consumer = self.authenticate(call, key)
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
        revision, consumer = self.authenticate(call, key)
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

    async def read_body(self, receive: Receive, declared: bytes | None) -> bytes:
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


class _Caching:
    """How a call's answer is sent: straight on, or through a :class:`Recorder` whose
    copy is kept in the response cache once the call has succeeded."""

    __slots__ = ("gateway", "key", "send", "ttl")

    def __init__(
        self, send: Send, gateway: Gateway | None = None, key: str = "", ttl: int = 0
    ) -> None:
        self.send = send
        self.gateway = gateway
        self.key = key
        self.ttl = ttl

    async def keep(self, outcome: Outcome) -> None:
        if self.gateway is None or not isinstance(self.send, Recorder) or outcome.status != 200:
            return
        entry = self.send.entry(outcome.target or "")
        if entry is not None:
            await self.gateway.cache.put(self.key, entry, self.ttl)


class Parsed(NamedTuple):
    """A model call's request in the OpenAI shape, and how to answer it."""

    request: dict[str, Any]
    raw: bytes | None  # the client's body, when it may pass through to OpenAI-wire targets
    client: ClientProtocol
    include_usage: bool


Parser = Callable[[bytes], Parsed]


def _parse_chat(body: bytes) -> Parsed:
    request = _json_object(body)
    model = request.get("model")
    if not isinstance(model, str) or not model:
        raise _param_error("model", "a model name (string)")
    if not isinstance(request.get("messages"), list):
        raise _param_error("messages", "a list of messages")
    stream = request.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _param_error("stream", "a boolean")
    options = request.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _param_error("stream_options", "an object")
    include_usage = bool(options and options.get("include_usage") is True)
    return Parsed(request, body, OPENAI_CLIENT, include_usage)


def _parse_messages(body: bytes) -> Parsed:
    """Anthropic's Messages API, served by any routed model through conversion."""
    try:
        request = anthropic.messages_to_chat(_json_object(body))
    except anthropic.MessagesError as exc:
        raise ApiError(400, str(exc), code="invalid_request_error", param=exc.param) from None
    return Parsed(request, None, anthropic.CLIENT, True)


def _parse_responses(body: bytes) -> Parsed:
    """OpenAI's Responses API, served by any routed model through conversion."""
    original = _json_object(body)
    try:
        request = openai_responses.responses_to_chat(original)
    except openai_responses.ResponsesError as exc:
        raise ApiError(400, str(exc), code="invalid_request_error", param=exc.param) from None
    return Parsed(request, None, openai_responses.ResponsesClient(original), True)


# path -> (usage route name, error format, parser)
_MODEL_APIS: dict[str, tuple[str, str, Parser]] = {
    "/v1/chat/completions": ("chat.completions", "openai", _parse_chat),
    "/v1/messages": ("messages", "anthropic", _parse_messages),
    "/v1/responses": ("responses", "openai", _parse_responses),
}


def _model_object(name: str, route: Route) -> dict[str, object]:
    model: dict[str, object] = {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": route.product.slug,
    }
    if route.spec.context_window is not None:
        model["context_window"] = route.spec.context_window
    return model


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(request, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_body")
    return request


def _header(scope: Scope, name: bytes) -> bytes | None:
    """One header's value, for the paths that need only one or two (not ``/v1/``)."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _estimate(request: dict[str, Any], body: bytes | None) -> int:
    """Tokens to reserve before a call: about a token per 4 bytes of prompt, plus the
    output the request allows (settled to the real count afterwards)."""
    prompt = (len(body) if body is not None else len(orjson.dumps(request.get("messages")))) // 4
    output = request.get("max_completion_tokens") or request.get("max_tokens")
    return prompt + 1 + (output if type(output) is int and output > 0 else 0)


def _request_id(client_id: bytes | None) -> str:
    """The client's request id when it is safe to echo and log, else a fresh one."""
    if client_id is not None and _CLIENT_REQUEST_ID.match(client_id):
        accepted: str = client_id.decode()
        return accepted
    return os.urandom(16).hex()


def _unknown_url(method: str, path: str) -> ApiError:
    return ApiError(
        404,
        f"Invalid URL ({method} {path[:200]}). This gateway serves GET /v1/models, "
        "POST /v1/chat/completions, /v1/responses, /v1/embeddings and /v1/messages, "
        "the Realtime API at /v1/realtime, MCP at /mcp and /mcp/<product>, and A2A "
        "agents at /agents/<product>.",
        code="unknown_url",
    )


def _param_error(param: str, expected: str) -> ApiError:
    return ApiError(
        400,
        f"The request body needs '{param}' to be {expected}.",
        code="invalid_request_parameter",
        param=param,
    )


def _refusal(decision: Decision, what: str) -> ApiError:
    """The 429 for a refused ``decision`` (``what`` says which limit)."""
    name = (decision.limit_name or "rate_limit").replace("_", " ")
    wait = (
        f" Retry after {max(1, int((decision.retry_after or 0) + 0.999))} second(s)."
        if decision.retry_after is not None
        else " The quota does not renew; ask the portal's administrators for more."
    )
    if decision.limit_name == "token_quota":
        kind, code, label = "insufficient_quota", "insufficient_quota", "Quota"
    else:
        kind = "requests" if "request" in name else "tokens"
        code, label = "rate_limit_exceeded", "Rate limit"
    return ApiError(
        429,
        f"{label} reached: {what} ({name}).{wait}",
        type=kind,
        code=code,
        headers=decision.headers,
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
