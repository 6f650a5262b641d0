"""The Realtime relay (``gateway.realtime``) against the fake Realtime API.

The fake (``devstack.fakes.realtime``) runs as its own process and speaks the Realtime
WebSocket protocol; a small ASGI app in this process, served by uvicorn as the gateway
is, authenticates one key and calls :func:`gateway.realtime.relay` towards the fake, so
that the official client, and plain ``websockets`` clients where the client cannot do
what a test needs, exercise the relay end to end.

:func:`realtime_session_checks` is the official client's whole session, reusable against
any base URL that routes a model to the fake (the gateway itself, for instance).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
import uvicorn
import websockets
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from devstack.procs import Stack, free_port, wait_until
from gateway import realtime
from gateway.proxy import Tokens
from gateway.schema import ModelRoute, Upstream
from gateway.types import Receive, Scope, Send
from tests.gateway.conftest import PYTHON, ROOT, World
from tests.gateway.conftest import Gateway as GatewayProcess
from tests.gateway.test_routing import push, routed

pytestmark = pytest.mark.e2e

UPSTREAM_KEY = "sk-upstream-realtime-canary-0123456789"
CLIENT_KEY = "pk-client-realtime-canary-9876543210"
PUBLIC = "portico-realtime"
# public model -> the upstream's model (knobs of the fake in its name)
MODELS = {
    PUBLIC: "fake-realtime",
    "hangup": "fake-realtime-hangup-4001",
    "limited": "fake-realtime-error-429",
    "refused": "fake-realtime-error-401",
    "down": "fake-realtime",
}


@contextlib.contextmanager
def serve(app: Any, **config: Any) -> Iterator[str]:
    """Serve ``app`` on a loopback port from a thread, as the gateway's uvicorn would;
    yields its ``http://`` base URL."""
    port = free_port()
    settings = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", **{"lifespan": "off", **config}
    )
    server = uvicorn.Server(settings)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "the test server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@dataclass
class Fake:
    base_url: str  # http://127.0.0.1:<port>/v1
    record: Path

    def records(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [orjson.loads(line) for line in self.record.read_bytes().splitlines() if line]


@dataclass
class Session:
    """What the relay app saw of one session."""

    request_id: str
    status: int | None = None
    tokens: Tokens = field(default_factory=Tokens)


class RelayApp:
    """The gateway's part, reduced: one key, a fixed model map, one aiohttp session."""

    def __init__(self, fake: Fake, down_url: str) -> None:
        self.fake = fake
        self.down_url = down_url
        self.sessions: list[Session] = []
        self.http: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.http = aiohttp.ClientSession(trust_env=False)
                    await send({"type": "lifespan.startup.complete"})
                else:
                    assert self.http is not None
                    await self.http.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert scope["type"] == "websocket"
        assert self.http is not None
        session = Session(request_id=f"req_{len(self.sessions) + 1}")
        self.sessions.append(session)
        model = realtime.requested_model(scope)
        if realtime.client_key(scope) != CLIENT_KEY.encode():
            session.status = 401
            await realtime.refuse(scope, send, 401, "Invalid API key.", session.request_id)
            return
        if model not in MODELS:
            session.status = 404
            await realtime.refuse(scope, send, 404, "No such model.", session.request_id)
            return
        base = self.down_url if model == "down" else self.fake.base_url
        session.status = await realtime.relay(
            scope,
            receive,
            send,
            session=self.http,
            url=realtime.upstream_url(base + "/realtime", MODELS[model]),
            headers={"Authorization": f"Bearer {UPSTREAM_KEY}", "Content-Type": "application/json"},
            upstream_model=MODELS[model],
            public_model=model,
            tokens=session.tokens,
            request_id=session.request_id,
            response_headers=[(b"x-portico-target", b"fake/" + MODELS[model].encode())],
        )

    def finished(self, count: int) -> list[Session]:
        """The first ``count`` sessions, once their relays have returned."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done = [s for s in self.sessions[:count] if s.status is not None]
            if len(done) == count:
                return done
            time.sleep(0.02)
        raise AssertionError(f"sessions did not finish: {self.sessions}")


@pytest.fixture(scope="module")
def fake(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Fake:
    port = free_port()
    record = tmp_path_factory.mktemp("fake-realtime") / "events.jsonl"
    argv = [PYTHON, "-m", "devstack.fakes.realtime", "--port", str(port)]
    argv += ["--require-key", UPSTREAM_KEY, "--record", str(record)]
    stack.start(
        "fake-realtime",
        argv,
        ready_url=f"http://127.0.0.1:{port}/healthz",
        ready_timeout=20,
        cwd=ROOT,
    )
    return Fake(f"http://127.0.0.1:{port}/v1", record)


@pytest.fixture
def relay(fake: Fake) -> Iterator[tuple[str, RelayApp]]:
    """The relay app's base URL (``http://.../v1``) and the app."""
    app = RelayApp(fake, down_url=f"http://127.0.0.1:{free_port()}/v1")
    with serve(app, ws="websockets-sansio", lifespan="on") as url:
        yield url + "/v1", app


def ws_url(base_url: str, model: str) -> str:
    return base_url.replace("http://", "ws://", 1) + "/realtime?model=" + model


# The official client, reusable against any base URL ---------------------------------------


def realtime_session_checks(url: str, key: str, model: str) -> dict[str, int]:
    """One session with the official client at ``url`` (an OpenAI ``base_url``) with
    ``key``, on a ``model`` routed to the fake Realtime API: the session names ``model``,
    two text turns come back as the fake's "You said: ..." deltas, and each
    ``response.done`` carries the fake's usage. Returns the usage the turns added up to
    (``input_tokens``, ``output_tokens``), for the caller to compare with what it metered.
    """
    return asyncio.run(asyncio.wait_for(_session_checks(url, key, model), 20))


async def _session_checks(url: str, key: str, model: str) -> dict[str, int]:
    client = openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0)
    totals = {"input_tokens": 0, "output_tokens": 0}
    try:
        async with client.realtime.connect(model=model) as connection:
            created = await connection.recv()
            assert created.type == "session.created", created
            # A realtime (not transcription) session, named by the public model.
            assert getattr(created.session, "model", None) == model
            await connection.session.update(
                session={"type": "realtime", "output_modalities": ["text"]}
            )
            for said in ("hello there", "one two three four"):
                await connection.conversation.item.create(
                    item={
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": said}],
                    }
                )
                await connection.response.create()
                text = ""
                async for event in connection:
                    if event.type == "error":
                        raise AssertionError(f"error event: {event.error}")
                    if event.type == "response.output_text.delta":
                        text += event.delta
                    elif event.type == "response.done":
                        usage = event.response.usage
                        assert usage is not None
                        assert usage.input_tokens == len(said.split())
                        assert usage.output_tokens == len(f"You said: {said}".split())
                        assert usage.total_tokens == usage.input_tokens + usage.output_tokens
                        totals["input_tokens"] += usage.input_tokens
                        totals["output_tokens"] += usage.output_tokens
                        break
                assert text == f"You said: {said}"
    finally:
        await client.close()
    return totals


def test_official_client_session_round_trips_text_and_is_metered(
    relay: tuple[str, RelayApp],
) -> None:
    url, app = relay
    totals = realtime_session_checks(url, CLIENT_KEY, PUBLIC)
    assert totals == {"input_tokens": 2 + 4, "output_tokens": 4 + 6}
    (session,) = app.finished(1)
    assert session.status == 101
    assert (session.tokens.prompt, session.tokens.completion) == (6, 10)


def test_upstream_sees_the_gateways_key_never_the_clients(
    relay: tuple[str, RelayApp], fake: Fake
) -> None:
    url, app = relay
    before = len(fake.records())
    protocols = [Subprotocol("realtime"), Subprotocol(f"{realtime.KEY_PROTOCOL}{CLIENT_KEY}")]

    async def browser_style() -> str | None:
        async with connect(ws_url(url, PUBLIC), subprotocols=protocols) as ws:
            created = orjson.loads(await ws.recv())
            assert created["type"] == "session.created"
            assert ws.response is not None
            assert ws.response.headers["x-request-id"] == "req_1"
            assert ws.response.headers["x-portico-target"] == "fake/fake-realtime"
            return ws.subprotocol

    # The browser's way: the key in a subprotocol entry, of which only "realtime" returns.
    assert asyncio.run(browser_style()) == "realtime"
    realtime_session_checks(url, CLIENT_KEY, PUBLIC)  # the SDK's way: a bearer header
    handshakes = [r for r in fake.records()[before:] if "headers" in r]
    assert len(handshakes) == 2
    for handshake in handshakes:
        assert handshake["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert handshake["query"] == "model=fake-realtime"
        assert "content-type" not in handshake["headers"]
        assert CLIENT_KEY not in orjson.dumps(handshake).decode()
    assert [s.status for s in app.finished(2)] == [101, 101]


def test_client_close_closes_the_upstream_with_its_code(
    relay: tuple[str, RelayApp], fake: Fake
) -> None:
    url, app = relay
    before = len(fake.records())

    async def session() -> None:
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        async with connect(ws_url(url, PUBLIC), additional_headers=headers) as ws:
            assert orjson.loads(await ws.recv())["type"] == "session.created"
            await ws.close(code=4000, reason="done here")

    asyncio.run(session())
    (finished,) = app.finished(1)
    assert finished.status == 101
    deadline = time.monotonic() + 5
    while {"closed": 4000} not in fake.records()[before:] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert {"closed": 4000} in fake.records()[before:]


def test_upstream_close_reaches_the_client_with_its_code(relay: tuple[str, RelayApp]) -> None:
    url, app = relay

    async def session() -> tuple[int | None, list[str]]:
        headers = {"api-key": CLIENT_KEY}
        seen = []
        async with connect(ws_url(url, "hangup"), additional_headers=headers) as ws:
            await ws.send(
                orjson.dumps({"type": "conversation.item.create", "item": USER_HI}).decode()
            )
            await ws.send('{"type": "response.create"}')
            with contextlib.suppress(websockets.ConnectionClosed):
                async for frame in ws:
                    seen.append(orjson.loads(frame)["type"])
            return ws.close_code, seen

    code, seen = asyncio.run(session())
    assert code == 4001
    assert seen[-1] == "response.done"
    (finished,) = app.finished(1)
    assert finished.status == 101
    assert (finished.tokens.prompt, finished.tokens.completion) == (1, 3)


USER_HI = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}


def test_frames_pass_unchanged_both_ways(relay: tuple[str, RelayApp]) -> None:
    url, _ = relay

    async def session() -> tuple[bytes, dict[str, Any]]:
        headers = {"x-api-key": CLIENT_KEY}
        async with connect(ws_url(url, PUBLIC), additional_headers=headers) as ws:
            await ws.recv()  # session.created
            await ws.send(b"\x00\x01binary\xff")
            echoed = await ws.recv()
            await ws.send('{"type": "no.such.event", "event_id": "evt_1"}')
            error = orjson.loads(await ws.recv())
            assert isinstance(echoed, bytes)
            return echoed, error

    echoed, error = asyncio.run(session())
    assert echoed == b"\x00\x01binary\xff"
    assert error["type"] == "error"
    assert error["error"]["event_id"] == "evt_1"


def test_session_stays_on_the_routed_model(relay: tuple[str, RelayApp], fake: Fake) -> None:
    url, _ = relay
    before = len(fake.records())

    async def session() -> list[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
        async with connect(ws_url(url, PUBLIC), additional_headers=headers) as ws:
            await ws.recv()  # session.created
            switch = {"type": "session.update", "event_id": "evt_9", "session": {"model": "gpt-x"}}
            await ws.send(orjson.dumps(switch).decode())
            same = {"type": "session.update", "session": {"type": "realtime", "model": PUBLIC}}
            await ws.send(orjson.dumps(same).decode())
            return [orjson.loads(await ws.recv()), orjson.loads(await ws.recv())]

    refused, updated = asyncio.run(session())
    assert refused["type"] == "error"
    assert refused["error"]["code"] == "model_not_supported"
    assert refused["error"]["event_id"] == "evt_9"
    assert updated["type"] == "session.updated"
    assert updated["session"]["model"] == PUBLIC
    # Only the second update went upstream, with the upstream's model name in it.
    assert [r["event"] for r in fake.records()[before:] if "event" in r] == ["session.update"]


def _refused(url: str, model: str, headers: dict[str, str]) -> websockets.InvalidStatus:
    async def attempt() -> None:
        async with connect(ws_url(url, model), additional_headers=headers):
            raise AssertionError("the handshake should have been refused")

    with pytest.raises(websockets.InvalidStatus) as refused:
        asyncio.run(attempt())
    return refused.value


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("down", 502, "upstream_unavailable"),
        ("refused", 502, "upstream_auth_failed"),
        ("limited", 429, "rate_limit_exceeded"),
    ],
)
def test_upstream_that_cannot_be_opened_refuses_the_handshake(
    relay: tuple[str, RelayApp], model: str, status: int, code: str
) -> None:
    url, app = relay
    refusal = _refused(url, model, {"Authorization": f"Bearer {CLIENT_KEY}"})
    response = refusal.response
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = orjson.loads(response.body or b"")["error"]
    assert error["code"] == code
    assert error["type"] == "upstream_error"
    assert error["request_id"] == response.headers["x-request-id"] == "req_1"
    assert UPSTREAM_KEY not in (response.body or b"").decode()
    if status == 429:
        assert response.headers["retry-after"] == "1"
    assert [s.status for s in app.finished(1)] == [status]


def test_official_client_without_a_valid_key_is_refused(relay: tuple[str, RelayApp]) -> None:
    url, _ = relay
    refusal = _refused(url, PUBLIC, {"Authorization": "Bearer pk-wrong"})
    assert refusal.response.status_code == 401
    assert orjson.loads(refusal.response.body or b"")["error"]["message"] == "Invalid API key."

    async def sdk() -> None:
        client = openai.AsyncOpenAI(base_url=url, api_key="pk-wrong", max_retries=0)
        try:
            async with client.realtime.connect(model=PUBLIC):
                raise AssertionError("the handshake should have been refused")
        finally:
            await client.close()

    with pytest.raises(websockets.InvalidStatus):
        asyncio.run(sdk())


# Pure helpers ---------------------------------------------------------------------------


def scope(headers: list[tuple[bytes, bytes]], **extra: Any) -> Scope:
    return {"type": "websocket", "headers": headers, "query_string": b"", **extra}


@pytest.mark.parametrize(
    ("headers", "subprotocols", "key"),
    [
        ([(b"authorization", b"Bearer  pk-1 ")], [], b"pk-1"),
        ([(b"authorization", b"bearer pk-1")], [], b"pk-1"),
        ([(b"api-key", b"pk-2")], [], b"pk-2"),
        ([(b"x-api-key", b"pk-3")], [], b"pk-3"),
        ([], ["realtime", "openai-insecure-api-key.pk-4"], b"pk-4"),
        ([(b"authorization", b"Bearer pk-1")], ["openai-insecure-api-key.pk-4"], b"pk-1"),
        ([(b"authorization", b"Basic abc")], ["openai-insecure-api-key."], None),
        ([], [], None),
    ],
)
def test_client_key_is_found_where_clients_send_it(
    headers: list[tuple[bytes, bytes]], subprotocols: list[str], key: bytes | None
) -> None:
    assert realtime.client_key(scope(headers, subprotocols=subprotocols)) == key


def test_requested_model_and_upstream_url() -> None:
    assert realtime.requested_model(scope([], query_string=b"model=gpt-rt%2Bx&a=1")) == "gpt-rt+x"
    assert realtime.requested_model(scope([], query_string=b"model=")) is None
    assert realtime.requested_model(scope([])) is None
    assert (
        realtime.upstream_url("https://api.openai.com/v1/realtime", "gpt-realtime")
        == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    )
    assert (
        realtime.upstream_url("http://h:1/openai/realtime?api-version=2025-08-28", "dep 1")
        == "ws://h:1/openai/realtime?api-version=2025-08-28&model=dep+1"
    )


def test_beta_clients_get_the_beta_protocol_upstream() -> None:
    base = {"Authorization": "Bearer up"}
    assert realtime.upstream_headers(scope([]), base) == base
    beta = {**base, "OpenAI-Beta": "realtime=v1"}
    assert realtime.upstream_headers(scope([(b"openai-beta", b"realtime=v1")]), base) == beta
    offered = scope([], subprotocols=["realtime", realtime.BETA_PROTOCOL])
    assert realtime.upstream_headers(offered, base) == beta


def test_refusal_without_the_http_response_extension_is_a_close() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    long = "x" * 300
    asyncio.run(realtime.refuse(scope([]), send, 401, "Invalid API key.", "req_9"))
    asyncio.run(realtime.refuse(scope([], extensions={}), send, 502, long, "req_9"))
    assert sent[0] == {
        "type": "websocket.close",
        "code": 1008,
        "reason": "Invalid API key. (request id req_9)",
    }
    assert sent[1]["code"] == 1011
    assert len(sent[1]["reason"].encode()) <= 123


# Through a real gateway process ------------------------------------------------------------


def test_realtime_through_the_gateway(fake: Fake, gw: GatewayProcess, world: World) -> None:
    upstream = Upstream(
        vendor="openai",
        base_url=fake.base_url,
        secret=world.keys.seal(UPSTREAM_KEY),
        name="realtime-vendor",
    )
    doc = routed(world, {"voice": ModelRoute("rt", "gpt-realtime")}, upstreams={"rt": upstream})
    push(gw, doc)
    before = len(fake.records())
    totals = realtime_session_checks(gw.url + "/v1", world.alice_key, "voice")
    assert totals == {"input_tokens": 6, "output_tokens": 10}
    handshakes = [r for r in fake.records()[before:] if "headers" in r]
    assert len(handshakes) == 1
    assert handshakes[0]["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert world.alice_key not in orjson.dumps(fake.records()[before:]).decode()
    # The session is metered as one call with the usage of every response in it.
    wait_until(
        lambda: any(
            e["route"] == "realtime" and (e["prompt_tokens"], e["completion_tokens"]) == (6, 10)
            for e in gw.spooled_events()
        ),
        timeout=10,
        what="the realtime session's usage event",
    )
    # A key that is not valid never opens a session.
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        realtime_session_checks(gw.url + "/v1", "portico_not_a_key", "voice")
    assert refused.value.response.status_code == 401
    assert b"invalid_api_key" in refused.value.response.body
