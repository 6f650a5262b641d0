"""The A2A gateway (``gateway.a2a``) with the official ``a2a-sdk`` clients against agents
served by the SDK's own server: v1.0 and v0.3 clients, JSON-RPC and HTTP+JSON, streaming,
task retrieval and cancelation, a REST agent wrapped as A2A, and bad input."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
import orjson
import pytest
from a2a.client import ClientConfig, create_client
from a2a.client.client import Client
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    TaskState,
)
from a2a.utils.errors import TaskNotFoundError

from devstack.procs import Stack
from gateway.schema import RestAgentCall
from tests.gateway.a2a_support import (
    BACKEND_TOKEN,
    AgentServer,
    a2a_revision,
    agent_server,
    target,
)
from tests.gateway.conftest import Gateway, World, start_redis_gateways
from tests.gateway.test_rate_limits import _inside_one_minute

T = TypeVar("T")


@pytest.fixture(scope="module")
def agent_a() -> Iterator[AgentServer]:
    yield from agent_server("A")


@pytest.fixture
def agw(gw: Gateway, world: World, agent_a: AgentServer) -> Gateway:
    """The shared gateway serving ``agent_a`` as the agent product ``agent``."""
    agent_a.seen.clear()
    response = gw.push(a2a_revision(world, [target("a", agent_a)]))
    assert response.status_code == 200, response.text
    return gw


def _run(
    gw: Gateway,
    key: str,
    body: Callable[[Client], Awaitable[T]],
    *,
    streaming: bool = True,
    bindings: list[str] | None = None,
    card: AgentCard | None = None,
) -> T:
    async def main() -> T:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as http:
            config = ClientConfig(
                httpx_client=http,
                streaming=streaming,
                supported_protocol_bindings=bindings or ["JSONRPC"],
            )
            client = await create_client(card or f"{gw.url}/agents/agent", client_config=config)
            try:
                return await body(client)
            finally:
                await client.close()

    return asyncio.run(main())


def _message(text: str, **fields: Any) -> SendMessageRequest:
    return SendMessageRequest(
        message=Message(
            role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[Part(text=text)], **fields
        ),
        configuration=SendMessageConfiguration(),
    )


async def _events(client: Client, request: SendMessageRequest) -> list[Any]:
    return [event async for event in client.send_message(request)]


def _rpc(gw: Gateway, key: str | None, body: object, **headers: str) -> httpx.Response:
    sent = {"Content-Type": "application/json", "A2A-Version": "1.0", **headers}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return gw.http.post(f"{gw.url}/agents/agent", content=raw, headers=sent)


def _send_body(text: str, method: str = "SendMessage", **message: Any) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 1,
        "method": method,
        "params": {
            "message": {
                "messageId": uuid.uuid4().hex,
                "role": "ROLE_USER",
                "parts": [{"text": text}],
                **message,
            }
        },
    }


# The card -------------------------------------------------------------------------------


def test_the_card_names_the_gateway_and_its_key_scheme_not_the_agent(agw: Gateway) -> None:
    response = agw.http.get(f"{agw.url}/agents/agent/.well-known/agent-card.json")
    assert response.status_code == 200
    card = response.json()
    endpoint = f"{agw.url}/agents/agent"
    assert card["name"] == "Trip helper"
    assert card["version"] == "2.1.0"
    assert [
        (i["url"], i["protocolBinding"], i["protocolVersion"]) for i in card["supportedInterfaces"]
    ] == [
        (endpoint, "JSONRPC", "1.0"),
        (endpoint, "HTTP+JSON", "1.0"),
        (endpoint, "JSONRPC", "0.3"),
    ]
    assert card["url"] == endpoint
    assert card["protocolVersion"] == "0.3"
    assert list(card["securitySchemes"]) == ["portico"]
    assert card["securityRequirements"] == [{"schemes": {"portico": {"list": []}}}]
    assert "signatures" not in card
    assert "agent.internal" not in response.text
    assert card["capabilities"]["pushNotifications"] is False
    assert card["skills"][0]["id"] == "plan"
    again = agw.http.get(
        f"{agw.url}/agents/agent/.well-known/agent-card.json",
        headers={"If-None-Match": response.headers["etag"]},
    )
    assert again.status_code == 304


def test_an_unknown_agent_has_no_card(agw: Gateway) -> None:
    response = agw.http.get(f"{agw.url}/agents/nope/.well-known/agent-card.json")
    assert response.status_code == 404
    assert response.json()["error"]["status"] == "NOT_FOUND"


# v1.0 clients ---------------------------------------------------------------------------


def test_a_v1_client_streams_a_task_and_gets_it_back_by_id(
    agw: Gateway, world: World, agent_a: AgentServer
) -> None:
    async def body(client: Client) -> tuple[list[Any], Any, Any]:
        events = await _events(client, _message("to Lisbon"))
        task_id = events[0].task.id
        task = await client.get_task(GetTaskRequest(id=task_id))
        listed = await client.list_tasks(ListTasksRequest(page_size=10))
        return events, task, listed

    events, task, listed = _run(agw, world.alice_key, body)
    kinds = [event.WhichOneof("payload") for event in events]
    assert kinds == ["task", "status_update", "artifact_update", "artifact_update", "status_update"]
    first = events[0].task
    assert first.id.startswith("pt1.")
    assert first.context_id.startswith("pt1.")
    assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    assert events[-1].status_update.task_id == first.id
    assert task.id == first.id
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert "".join(p.text for p in task.artifacts[0].parts) == "A: to Lisbon"
    assert first.id in [t.id for t in listed.tasks]
    # The agent saw the gateway's backend credential, never the app's key.
    seen = agent_a.seen
    assert {entry["method"] for entry in seen} == {"SendStreamingMessage", "GetTask"}
    for entry in seen:
        assert entry["headers"]["authorization"] == f"Bearer {BACKEND_TOKEN}"
        assert entry["headers"]["a2a-version"] == "1.0"
        assert world.alice_key not in str(entry["headers"])


def test_a_v1_client_without_streaming_gets_a_message_or_a_task(agw: Gateway, world: World) -> None:
    async def body(client: Client) -> tuple[list[Any], list[Any]]:
        return await _events(client, _message("hello")), await _events(client, _message("x"))

    hello, task = _run(agw, world.alice_key, body, streaming=False)
    assert hello[0].message.parts[0].text == "hello from A"
    assert hello[0].message.role == Role.ROLE_AGENT
    assert task[0].task.status.state == TaskState.TASK_STATE_COMPLETED


def test_the_rest_binding_serves_the_same(agw: Gateway, world: World) -> None:
    async def body(client: Client) -> tuple[list[Any], Any]:
        events = await _events(client, _message("by REST"))
        return events, await client.get_task(GetTaskRequest(id=events[0].task.id))

    events, task = _run(agw, world.alice_key, body, bindings=["HTTP+JSON"])
    assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    assert task.id == events[0].task.id


def test_a_task_is_canceled_at_the_agent_that_owns_it(agw: Gateway, world: World) -> None:
    async def body(client: Client) -> Any:
        request = _message("slow")
        request.configuration.return_immediately = True
        events = await _events(client, request)
        return await client.cancel_task(CancelTaskRequest(id=events[0].task.id))

    canceled = _run(agw, world.alice_key, body, streaming=False)
    assert canceled.status.state == TaskState.TASK_STATE_CANCELED


def test_a_follow_up_message_continues_the_context(agw: Gateway, world: World) -> None:
    async def body(client: Client) -> tuple[Any, Any]:
        first = (await _events(client, _message("one")))[0].task
        follow = await _events(client, _message("two", context_id=first.context_id))
        return first, follow[0].task

    first, second = _run(agw, world.alice_key, body, streaming=False)
    assert second.context_id == first.context_id
    assert second.id != first.id


# v0.3 -----------------------------------------------------------------------------------


def _v03_card(gw: Gateway) -> AgentCard:
    return AgentCard(
        name="agent",
        description="v0.3 view",
        version="1",
        supported_interfaces=[
            AgentInterface(
                url=f"{gw.url}/agents/agent", protocol_binding="JSONRPC", protocol_version="0.3"
            )
        ],
        capabilities=AgentCapabilities(streaming=True),
    )


def test_a_v03_client_streams_and_gets_tasks(
    agw: Gateway, world: World, agent_a: AgentServer
) -> None:
    async def body(client: Client) -> tuple[list[Any], Any, list[Any]]:
        events = await _events(client, _message("old client"))
        task = await client.get_task(GetTaskRequest(id=events[0].task.id))
        return events, task, await _events(client, _message("hello"))

    events, task, hello = _run(agw, world.alice_key, body, card=_v03_card(agw))
    assert events[0].task.id.startswith("pt1.")
    assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert "".join(p.text for p in task.artifacts[0].parts) == "A: old client"
    assert hello[0].message.parts[0].text == "hello from A"
    # The v1.0 agent was spoken to in v1.0.
    assert set(agent_a.methods()) == {"SendStreamingMessage", "GetTask"}


def test_a_v03_agent_is_spoken_to_in_v03_for_a_v1_client(
    gw: Gateway, world: World, agent_a: AgentServer
) -> None:
    agent_a.seen.clear()
    assert gw.push(a2a_revision(world, [target("a", agent_a, version="0.3")])).status_code == 200

    async def body(client: Client) -> tuple[list[Any], Any, list[Any]]:
        events = await _events(client, _message("translated"))
        task = await client.get_task(GetTaskRequest(id=events[0].task.id))
        return events, task, await _events(client, _message("hello"))

    events, task, hello = _run(gw, world.alice_key, body)
    kinds = [event.WhichOneof("payload") for event in events]
    assert kinds == ["task", "status_update", "artifact_update", "artifact_update", "status_update"]
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert hello[0].message.parts[0].text == "hello from A"
    assert set(agent_a.methods()) == {"message/stream", "tasks/get"}
    assert {entry["headers"]["a2a-version"] for entry in agent_a.seen} == {"0.3"}


def test_raw_v03_json_rpc_gets_v03_shapes(agw: Gateway, world: World) -> None:
    body = {
        "jsonrpc": "2.0",
        "id": "r1",
        "method": "message/send",
        "params": {
            "message": {
                "kind": "message",
                "messageId": "m1",
                "role": "user",
                "parts": [{"kind": "text", "text": "raw"}],
            }
        },
    }
    response = _rpc(agw, world.alice_key, body, **{"A2A-Version": ""})
    result = response.json()["result"]
    assert result["kind"] == "task"
    assert result["status"]["state"] == "completed"
    assert result["artifacts"][0]["parts"][0] == {"kind": "text", "text": "A: "}
    missing = _rpc(
        agw,
        world.alice_key,
        {"jsonrpc": "2.0", "id": 2, "method": "tasks/get", "params": {"id": "nope"}},
    ).json()
    assert missing["error"]["code"] == -32001
    assert missing["error"]["data"] is None


# A REST agent wrapped as A2A --------------------------------------------------------------


def test_a_rest_agent_answers_the_sdk_client(gw: Gateway, world: World) -> None:
    chat = RestAgentCall(
        path="/chat/completions",
        request={"model": "mock", "messages": [{"role": "user", "content": "{{text}}"}]},
        reply="choices.0.message.content",
    )
    as_task = msgspec.structs.replace(chat, reply_as="task")
    doc = a2a_revision(world, [target("rest", rest=chat)])
    assert gw.push(doc).status_code == 200
    before = len(world.mock.records())

    async def body(client: Client) -> list[Any]:
        return await _events(client, _message("what is A2A?"))

    reply = _run(gw, world.alice_key, body)
    assert len(reply) == 1
    text = reply[0].message.parts[0].text
    assert "what is A2A?" in text  # the mock model echoes the prompt
    calls = world.mock.records()[before:]
    assert [(c["path"], c["model"]) for c in calls] == [("/v1/chat/completions", "mock")]
    # With the REST agent's own credential, never the app's key.
    assert calls[0]["headers"]["authorization"] == f"Bearer {world.mock.upstream_secret}"
    assert world.alice_key not in orjson.dumps(calls[0]).decode()

    assert gw.push(a2a_revision(world, [target("rest", rest=as_task)])).status_code == 200

    async def task_body(client: Client) -> tuple[list[Any], Any]:
        events = await _events(client, _message("as a task"))
        return events, await client.get_task(GetTaskRequest(id=events[0].task.id))

    events, task = _run(gw, world.alice_key, task_body, streaming=False)
    assert events[0].task.status.state == TaskState.TASK_STATE_COMPLETED
    assert task.id == events[0].task.id
    assert "as a task" in task.artifacts[0].parts[0].text


# Bad input -------------------------------------------------------------------------------


def test_bad_input_gets_a2a_errors_and_reaches_no_agent(
    agw: Gateway, world: World, agent_a: AgentServer
) -> None:
    key = world.alice_key
    unknown = _rpc(agw, key, {"jsonrpc": "2.0", "id": 1, "method": "DoThings", "params": {}})
    assert unknown.status_code == 200
    assert unknown.json()["error"]["code"] == -32601
    assert _rpc(agw, key, b"{not json").json()["error"]["code"] == -32700
    no_parts = _send_body("x")
    no_parts["params"]["message"]["parts"] = []
    assert _rpc(agw, key, no_parts).json()["error"]["code"] == -32602
    two_kinds = _send_body("x")
    two_kinds["params"]["message"]["parts"] = [{"text": "a", "url": "http://x"}]
    error = _rpc(agw, key, two_kinds).json()["error"]
    assert error["code"] == -32602
    assert error["data"][0]["reason"] == "INVALID_PARAMS"
    v03_bad = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "message/send",
        "params": {"message": {"messageId": "m", "role": "user", "parts": [{"kind": "video"}]}},
    }
    assert _rpc(agw, key, v03_bad, **{"A2A-Version": "0.3"}).json()["error"]["code"] == -32602
    forged = _rpc(
        agw, key, {"jsonrpc": "2.0", "id": 4, "method": "GetTask", "params": {"id": "t-1"}}
    )
    assert forged.json()["error"]["code"] == -32001
    version = _rpc(agw, key, _send_body("x"), **{"A2A-Version": "2.0"})
    assert version.json()["error"]["code"] == -32009
    huge = _rpc(agw, key, _send_body("x" * 100_000))
    assert huge.status_code == 413
    assert huge.json()["error"]["code"] == -32600
    wrong_method = agw.http.get(
        f"{agw.url}/agents/agent", headers={"Authorization": f"Bearer {key}"}
    )
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert wrong_method.json()["error"]["code"] == -32601
    assert agent_a.seen == []


def test_another_consumers_task_id_is_not_found_and_reaches_no_agent(
    agw: Gateway, world: World, agent_a: AgentServer
) -> None:
    alices = _rpc(agw, world.alice_key, _send_body("mine")).json()["result"]["task"]
    before = len(agent_a.seen)
    for method, params in (
        ("GetTask", {"id": alices["id"]}),
        ("CancelTask", {"id": alices["id"]}),
    ):
        answer = _rpc(
            agw, world.bob_key, {"jsonrpc": "2.0", "id": 9, "method": method, "params": params}
        )
        assert answer.json()["error"]["code"] == -32001
    hijack = _send_body("continue yours", taskId=alices["id"])
    assert _rpc(agw, world.bob_key, hijack).json()["error"]["code"] == -32001
    their_context = _send_body("join", contextId=alices["contextId"])
    assert _rpc(agw, world.bob_key, their_context).json()["error"]["code"] == -32001
    assert len(agent_a.seen) == before
    # And through the REST binding, as google.rpc.Status with the HTTP status.
    rest = agw.http.get(
        f"{agw.url}/agents/agent/tasks/{alices['id']}",
        headers={"Authorization": f"Bearer {world.bob_key}", "A2A-Version": "1.0"},
    )
    assert rest.status_code == 404
    assert rest.json()["error"]["details"][0]["reason"] == "TASK_NOT_FOUND"
    # Bob's SDK client gets the SDK's own exception.
    with pytest.raises(TaskNotFoundError):
        _run(agw, world.bob_key, lambda c: c.get_task(GetTaskRequest(id=alices["id"])))


def test_keys_and_subscriptions_are_checked(
    agw: Gateway, world: World, agent_a: AgentServer
) -> None:
    missing = _rpc(agw, None, _send_body("x"))
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == -32040
    assert _rpc(agw, world.expired_key, _send_body("x")).status_code == 401
    doc = a2a_revision(world, [target("a", agent_a)])
    bob = doc.consumers.get("2", None)
    assert bob is not None
    unsubscribed = msgspec.structs.replace(
        doc,
        consumers={
            **doc.consumers,
            "2": msgspec.structs.replace(
                bob, subscriptions={k: v for k, v in bob.subscriptions.items() if k != "agent"}
            ),
        },
    )
    assert agw.push(unsubscribed).status_code == 200
    refused = _rpc(agw, world.bob_key, _send_body("x"))
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == -32043
    assert agent_a.seen == []


def test_an_agent_failure_is_the_calls_error(agw: Gateway, world: World) -> None:
    answer = _rpc(agw, world.alice_key, _send_body("fail")).json()
    assert answer["error"]["code"] == -32603
    assert "kaboom" in answer["error"]["message"]


# Limits -----------------------------------------------------------------------------------


def test_the_product_and_the_app_have_their_own_limits(
    gw: Gateway, world: World, agent_a: AgentServer
) -> None:
    doc = a2a_revision(world, [target("a", agent_a)], requests_per_minute=3)
    assert gw.push(doc).status_code == 200
    _inside_one_minute(5)  # limits count in clock-aligned minutes
    statuses = [
        _rpc(gw, key, _send_body("hello")).status_code
        for key in (world.alice_key, world.bob_key, world.alice_key, world.bob_key)
    ]
    assert statuses == [200, 200, 200, 429]
    doc = a2a_revision(world, [target("a", agent_a)], own_limit=1)
    assert gw.push(doc).status_code == 200
    _inside_one_minute(5)
    assert _rpc(gw, world.alice_key, _send_body("hello")).status_code == 200
    over = _rpc(gw, world.alice_key, _send_body("hello"))
    assert over.status_code == 429
    assert over.json()["error"]["code"] == -32029
    assert "retry-after" in over.headers
    assert _rpc(gw, world.bob_key, _send_body("hello")).status_code == 200


def test_a_client_that_leaves_a_stream_ends_it(agw: Gateway, world: World) -> None:
    body = orjson.dumps(_send_body("slow", method="SendStreamingMessage"))
    headers = {
        "Authorization": f"Bearer {world.alice_key}",
        "A2A-Version": "1.0",
        "x-request-id": "a2a-leaves-1",
    }
    with agw.http.stream("POST", f"{agw.url}/agents/agent", content=body, headers=headers) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        first = next(r.iter_lines())
        assert first.startswith("data: ")
        assert orjson.loads(first[6:])["result"]["task"]["id"].startswith("pt1.")
    event = agw.wait_for_spooled("a2a-leaves-1")
    assert event["status"] == 499
    assert event["stream"] is True


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ({"auth": "basic", "username": "portico"}, "authorization"),
        ({"auth": "header", "header": "X-Agent-Key"}, "x-agent-key"),
    ],
)
def test_the_backend_credential_goes_in_the_agents_style(
    gw: Gateway, world: World, agent_a: AgentServer, auth: dict[str, str], expected: str
) -> None:
    agent_a.seen.clear()
    assert gw.push(a2a_revision(world, [target("a", agent_a)], auth=auth)).status_code == 200
    answer = _rpc(gw, world.alice_key, _send_body("hello")).json()
    assert answer["result"]["message"]["parts"][0]["text"] == "hello from A"
    sent = agent_a.seen[-1]["headers"]
    assert expected in sent
    assert world.alice_key not in orjson.dumps(sent).decode()
    if auth["auth"] == "basic":
        assert sent["authorization"].startswith("Basic ")


@pytest.mark.e2e
def test_tasks_are_found_and_listed_from_any_gateway_process(
    stack: Stack,
    http: httpx.Client,
    world: World,
    redis_url: str,
    tmp_path: Path,
    agent_a: AgentServer,
) -> None:
    """Two processes sharing only the secret and Redis: a task created through one is
    read, listed and canceled through the other (the ids carry their owner; the list of
    an app's tasks is in Redis), and a REST agent's task is found there too."""
    first, second = start_redis_gateways(stack, http, "gateway-a2a", tmp_path, world, redis_url)
    chat = RestAgentCall(
        path="/chat/completions",
        request={"model": "mock", "messages": [{"role": "user", "content": "{{text}}"}]},
        reply="choices.0.message.content",
        reply_as="task",
    )
    doc = a2a_revision(world, [target("a", agent_a), target("rest", rest=chat, weight=0)])
    for gateway in (first, second):
        assert gateway.push(doc).status_code == 200
    slow = _send_body("slow")
    slow["params"]["configuration"] = {"returnImmediately": True}
    task = _rpc(first, world.alice_key, slow).json()["result"]["task"]
    got = _rpc(
        second,
        world.alice_key,
        {"jsonrpc": "2.0", "id": 2, "method": "GetTask", "params": {"id": task["id"]}},
    ).json()["result"]
    assert got["id"] == task["id"]
    assert got["contextId"] == task["contextId"]
    listed = _rpc(
        second,
        world.alice_key,
        {"jsonrpc": "2.0", "id": 3, "method": "ListTasks", "params": {"pageSize": 10}},
    ).json()["result"]
    assert task["id"] in [t["id"] for t in listed["tasks"]]
    assert (
        _rpc(
            second, world.bob_key, {"jsonrpc": "2.0", "id": 4, "method": "ListTasks", "params": {}}
        ).json()["result"]["tasks"]
        == []
    )
    canceled = _rpc(
        second,
        world.alice_key,
        {"jsonrpc": "2.0", "id": 5, "method": "CancelTask", "params": {"id": task["id"]}},
    ).json()["result"]
    assert canceled["status"]["state"] == "TASK_STATE_CANCELED"
    made = _rpc(first, world.alice_key, _send_body("wrapped"), **{"x-portico-upstream": "rest"})
    made_task = made.json()["result"]["task"]
    stored = _rpc(
        second,
        world.alice_key,
        {"jsonrpc": "2.0", "id": 6, "method": "GetTask", "params": {"id": made_task["id"]}},
    ).json()["result"]
    assert stored["status"]["state"] == "TASK_STATE_COMPLETED"
    assert "wrapped" in stored["artifacts"][0]["parts"][0]["text"]
