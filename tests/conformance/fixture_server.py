"""The MCP server the conformance suite expects behind the endpoint under test.

The server scenarios of ``@modelcontextprotocol/conformance`` call fixtures by name
(``test_simple_text``, ``test://static-text``, ``test_simple_prompt``, ...) and check
what comes back; each scenario's description in the suite says what it wants. This is
Portico's own implementation of them on the official SDK (``MCPServer``), serving both
protocol eras from one ``/mcp``: 2026-07-28 (stateless, multi-round-trip
``InputRequiredResult``) and 2025-11-25 (sessions, server-to-client requests on the
POST's stream, resumable SSE).

Run on its own, the suite passes against it in full (see ``test_conformance.py``), so a
check that fails through the gateway fails because of the gateway.

    python -m tests.conformance.fixture_server --port 3001   # then .../mcp
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import struct
import warnings
import zlib
from typing import Annotated, Any

import uvicorn
from mcp.server import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.prompts.base import Prompt, UserMessage
from mcp.server.mcpserver.tools.base import Tool
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.types import (
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    CallToolResult,
    Completion,
    CompletionArgument,
    CompletionContext,
    ContentBlock,
    EmptyResult,
    InputRequiredResult,
    JSONRPCMessage,
    PromptReference,
    ResourceTemplateReference,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    UnsubscribeRequestParams,
)
from pydantic import Field, TypeAdapter
from starlette.requests import Request
from starlette.responses import PlainTextResponse

NAME = "portico-conformance-fixture"
INSTRUCTIONS = "Fixtures of the MCP conformance suite's server scenarios."


def _png() -> bytes:
    """A 1x1 opaque red PNG, built here rather than pasted in."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\xff\x00\x00")  # filter byte, then one red pixel
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def _wav() -> bytes:
    """A WAV of one silent 16-bit mono sample at 8 kHz."""
    samples = b"\x00\x00"
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(samples)) + samples
    return b"RIFF" + struct.pack("<I", len(body)) + body


PNG_B64 = base64.b64encode(_png()).decode()
WAV_B64 = base64.b64encode(_wav()).decode()

IMAGE = {"type": "image", "data": PNG_B64, "mimeType": "image/png"}

# JSON Schema 2020-12 keywords the json-schema-2020-12 scenario looks for in tools/list.
SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}

# Elicitation forms (2025-11-25 tools ask these mid-call; 2026 tools return them).
USER_FORM = {
    "type": "object",
    "properties": {
        "username": {"type": "string", "description": "User's response"},
        "email": {"type": "string", "description": "User's email address"},
    },
    "required": ["username", "email"],
}
DEFAULTS_FORM = {  # SEP-1034: a default for every primitive type
    "type": "object",
    "properties": {
        "name": {"type": "string", "default": "John Doe"},
        "age": {"type": "integer", "default": 30},
        "score": {"type": "number", "default": 95.5},
        "status": {
            "type": "string",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "default": True},
    },
}
ENUMS_FORM = {  # SEP-1330: the five enum shapes
    "type": "object",
    "properties": {
        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
        "titledSingle": {
            "type": "string",
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ],
        },
        "legacyEnum": {
            "type": "string",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {
            "type": "array",
            "items": {"type": "string", "enum": ["option1", "option2", "option3"]},
        },
        "titledMulti": {
            "type": "array",
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            },
        },
    },
}


def _form(message: str, field: str, kind: str = "string") -> dict[str, Any]:
    """An ``elicitation/create`` input request for one required field."""
    schema = {"type": "object", "properties": {field: {"type": kind}}, "required": [field]}
    return {
        "method": "elicitation/create",
        "params": {"message": message, "requestedSchema": schema},
    }


def _sample(text: str, max_tokens: int) -> dict[str, Any]:
    message = {"role": "user", "content": {"type": "text", "text": text}}
    return {
        "method": "sampling/createMessage",
        "params": {"messages": [message], "maxTokens": max_tokens},
    }


ROOTS: dict[str, Any] = {"method": "roots/list", "params": {}}


def _ask(requests: dict[str, Any], state: str | None = None) -> InputRequiredResult:
    """An ``InputRequiredResult`` written as it travels (camelCase wire form)."""
    wire: dict[str, Any] = {"inputRequests": requests}
    if state is not None:
        wire["requestState"] = state
    return InputRequiredResult.model_validate(wire)


def _answers(ctx: Context) -> dict[str, dict[str, Any]]:
    """The client's ``inputResponses``, as plain JSON objects."""
    return {
        key: response.model_dump(mode="json", by_alias=True, exclude_none=True)
        for key, response in (ctx.input_responses or {}).items()
    }


def _text(*parts: str) -> CallToolResult:
    return CallToolResult.model_validate(
        {"content": [{"type": "text", "text": part} for part in parts]}
    )


def _blocks(*blocks: dict[str, Any]) -> CallToolResult:
    return CallToolResult.model_validate({"content": list(blocks)})


class _Events(EventStore):
    """Every SSE event kept in memory, so a 2025-11-25 client that lost its stream
    (``test_reconnection`` closes it on purpose) resumes with ``Last-Event-ID``."""

    def __init__(self) -> None:
        self._log: list[tuple[str, int, JSONRPCMessage | None]] = []
        self._ids = itertools.count(1)

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        number = next(self._ids)
        self._log.append((stream_id, number, message))
        return str(number)

    async def replay_events_after(
        self, last_event_id: str, send_callback: EventCallback
    ) -> str | None:
        if not last_event_id.isdigit():
            return None
        after = int(last_event_id)
        streams = [stream for stream, number, _ in self._log if number == after]
        if not streams:
            return None
        for stream, number, message in self._log:
            if stream == streams[0] and number > after and message is not None:
                await send_callback(EventMessage(message, str(number)))
        return streams[0]


def _simple_text() -> CallToolResult:
    return _text("This is a simple text response for testing.")


def _json_schema_tool() -> str:
    return "json_schema_2020_12_tool"


def build() -> MCPServer:
    """A fresh fixture server (its state, e.g. subscriptions, is its own)."""
    # tools/list starts with these two. The header scenarios call the first tool listed
    # with no arguments, so that one takes none. The json-schema-2020-12 scenario wants
    # an exact inputSchema, which no Python signature produces: that tool is made from a
    # no-argument function, then given it.
    first = Tool.from_function(
        _simple_text,
        name="test_simple_text",
        description="Returns one text block.",
        structured_output=False,
    )
    schema_tool = Tool.from_function(
        _json_schema_tool,
        name="json_schema_2020_12_tool",
        description="Tool with JSON Schema 2020-12 features",
        structured_output=False,
    ).model_copy(update={"parameters": SCHEMA_2020_12})
    server = MCPServer(NAME, instructions=INSTRUCTIONS, version="1.0.0", tools=[first, schema_tool])
    subscribed: set[str] = set()

    def tool(description: str) -> Any:
        # Plain content results: no outputSchema derived from the return annotation.
        return server.tool(description=description, structured_output=False)

    # --- tools: content types -------------------------------------------------------
    @tool("Returns one PNG image block.")
    def test_image_content() -> CallToolResult:
        return _blocks(IMAGE)

    @tool("Returns one WAV audio block.")
    def test_audio_content() -> CallToolResult:
        return _blocks({"type": "audio", "data": WAV_B64, "mimeType": "audio/wav"})

    @tool("Returns an embedded text resource.")
    def test_embedded_resource() -> CallToolResult:
        resource = {
            "uri": "test://embedded-resource",
            "mimeType": "text/plain",
            "text": "This is an embedded resource content.",
        }
        return _blocks({"type": "resource", "resource": resource})

    @tool("Returns text, an image and an embedded resource.")
    def test_multiple_content_types() -> CallToolResult:
        resource = {
            "uri": "test://mixed-content-resource",
            "mimeType": "application/json",
            "text": json.dumps({"test": "data", "value": 123}),
        }
        return _blocks(
            {"type": "text", "text": "Multiple content types test:"},
            IMAGE,
            {"type": "resource", "resource": resource},
        )

    @tool("Always fails: the error is the tool's result.")
    def test_error_handling() -> str:
        raise ToolError("This tool intentionally returns an error for testing")

    # --- tools: notifications during a call -------------------------------------------
    @tool("Logs three info messages while it runs.")
    async def test_tool_with_logging(ctx: Context) -> str:
        for step, text in enumerate(
            ("Tool execution started", "Tool processing data", "Tool execution completed")
        ):
            if step:
                await asyncio.sleep(0.05)
            await ctx.session.send_log_message(
                level="info", data=text, related_request_id=ctx.request_id
            )
        return "Tool with logging executed successfully"

    @tool("Reports progress 0, 50 and 100 of 100.")
    async def test_tool_with_progress(ctx: Context) -> str:
        for progress in (0, 50, 100):
            if progress:
                await asyncio.sleep(0.05)
            await ctx.report_progress(progress, 100, f"{progress} of 100")
        return "Progress reported: 0, 50, 100 of 100"

    @tool("Closes its SSE stream mid-call; the client resumes.")
    async def test_reconnection(ctx: Context) -> str:
        await ctx.session.send_log_message(
            level="info", data="Before disconnect", related_request_id=ctx.request_id
        )
        await ctx.close_sse_stream()
        await asyncio.sleep(0.2)
        await ctx.session.send_log_message(
            level="info", data="After reconnect", related_request_id=ctx.request_id
        )
        return "Reconnection test completed"

    # --- tools: server-to-client requests (2025-11-25) ----------------------------------
    @tool("Asks the client's LLM to answer the prompt.")
    async def test_sampling(prompt: str, ctx: Context) -> str:
        message = SamplingMessage(role="user", content=TextContent(type="text", text=prompt))
        try:
            reply = await ctx.session.create_message(
                messages=[message], max_tokens=100, related_request_id=ctx.request_id
            )
        except MCPError as exc:
            raise ToolError(f"Sampling failed: {exc.message}") from None
        text = reply.content.text if isinstance(reply.content, TextContent) else "(not text)"
        return f"LLM response: {text}"

    async def _elicited(ctx: Context, message: str, form: dict[str, Any], label: str) -> str:
        try:
            reply = await ctx.session.elicit_form(message, form, related_request_id=ctx.request_id)
        except MCPError as exc:
            raise ToolError(f"Elicitation failed: {exc.message}") from None
        return f"{label}: action={reply.action}, content={json.dumps(reply.content or {})}"

    @tool("Asks the user for a username and an email.")
    async def test_elicitation(message: str, ctx: Context) -> str:
        return await _elicited(ctx, message, USER_FORM, "User response")

    @tool("Elicits a form with a default for every type.")
    async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
        return await _elicited(
            ctx, "Please provide user information", DEFAULTS_FORM, "Elicitation completed"
        )

    @tool("Elicits a form with the five enum shapes.")
    async def test_elicitation_sep1330_enums(ctx: Context) -> str:
        return await _elicited(ctx, "Please choose", ENUMS_FORM, "Elicitation completed")

    # --- tools: 2026-07-28 envelope and headers ----------------------------------------
    @tool("Echoes a region that also travels as Mcp-Param-Region.")
    def test_x_mcp_header(
        region: Annotated[
            str,
            Field(
                description="Mirrored in the Mcp-Param-Region header.",
                json_schema_extra={"x-mcp-header": "Region"},
            ),
        ] = "none",
    ) -> str:
        return f"region={region}"

    @tool("Needs the client's sampling capability (-32021 without).")
    async def test_missing_capability(ctx: Context) -> str:
        declared = ctx.client_capabilities
        if declared is None or declared.sampling is None:
            raise MCPError(
                code=MISSING_REQUIRED_CLIENT_CAPABILITY,
                message="This tool needs the client's sampling capability.",
                data={"requiredCapabilities": {"sampling": {}}},
            )
        return "The client declared sampling."

    # server-stateless calls these two with a 2026-07-28 envelope and looks at the
    # frames of the reply: no standalone request may ride it, and no log message
    # unless the request's _meta asked for a log level (the SDK drops it otherwise).
    @tool("Reports progress, then asks for input the 2026 way.")
    async def test_streaming_elicitation(ctx: Context) -> str | InputRequiredResult:
        await ctx.report_progress(50, 100, "halfway")
        if "confirmation" in _answers(ctx):
            return "Streaming complete"
        return _ask({"confirmation": _form("Continue?", "ok", "boolean")})

    @tool("Logs one message (sent only if a log level was asked).")
    async def test_logging_tool(ctx: Context) -> str:
        await ctx.session.send_log_message(
            level="info", data="Diagnostic log message", related_request_id=ctx.request_id
        )
        return "Logging evaluated"

    def _scratch() -> str:
        return "scratch"

    @tool("Adds and removes a tool, then says the list changed.")
    async def test_trigger_tool_change(ctx: Context) -> str:
        server.add_tool(_scratch, name="test_scratch_tool", description="Short-lived.")
        server.remove_tool("test_scratch_tool")
        await ctx.notify_tools_changed()
        return "tools changed"

    @tool("Adds and removes a prompt, then says the list changed.")
    async def test_trigger_prompt_change(ctx: Context) -> str:
        server.add_prompt(
            Prompt.from_function(_scratch, name="test_scratch_prompt", description="Short-lived.")
        )
        server.remove_prompt("test_scratch_prompt")
        await ctx.notify_prompts_changed()
        return "prompts changed"

    # --- tools: multi-round-trip requests (2026-07-28, SEP-2322) ------------------------
    @tool("Asks for the user's name, then greets them.")
    async def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
        answer = _answers(ctx).get("user_name")
        if answer is None:
            return _ask({"user_name": _form("What is your name?", "name")})
        return f"Hello, {(answer.get('content') or {}).get('name', 'stranger')}!"

    @tool("Asks the client's LLM for a capital.")
    async def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
        answer = _answers(ctx).get("capital_question")
        if answer is None:
            return _ask({"capital_question": _sample("What is the capital of France?", 100)})
        return f"Model said: {(answer.get('content') or {}).get('text', '?')}"

    @tool("Asks for the client's roots.")
    async def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
        answer = _answers(ctx).get("client_roots")
        if answer is None:
            return _ask({"client_roots": ROOTS})
        roots = [root.get("uri") for root in answer.get("roots", [])]
        return f"Roots: {', '.join(map(str, roots)) or '(none)'}"

    @tool("Asks for a confirmation, with state to echo.")
    async def test_input_required_result_request_state(ctx: Context) -> str | InputRequiredResult:
        nonce = "confirm-round-1"
        if "confirm" in _answers(ctx) and ctx.request_state == nonce:
            return "state-ok: confirmed"
        return _ask({"confirm": _form("Please confirm", "ok", "boolean")}, nonce)

    @tool("Asks for three inputs at once.")
    async def test_input_required_result_multiple_inputs(
        ctx: Context,
    ) -> str | InputRequiredResult:
        wanted = {
            "user_name": _form("What is your name?", "name"),
            "greeting": _sample("Generate a greeting", 50),
            "client_roots": ROOTS,
        }
        if wanted.keys() <= _answers(ctx).keys():
            return "All three inputs received."
        return _ask(wanted, "multiple-inputs")

    @tool("Asks twice, carrying what it learnt in requestState.")
    async def test_input_required_result_multi_round(ctx: Context) -> str | InputRequiredResult:
        state = json.loads(ctx.request_state) if ctx.request_state else {}
        answers = _answers(ctx)
        if state.get("round") == 1 and "step1" in answers:
            name = (answers["step1"].get("content") or {}).get("name")
            return _ask(
                {"step2": _form("Step 2: What is your favorite color?", "color")},
                json.dumps({"round": 2, "name": name}),
            )
        if state.get("round") == 2 and "step2" in answers:
            color = (answers["step2"].get("content") or {}).get("color")
            return f"{state.get('name')} likes {color}."
        return _ask(
            {"step1": _form("Step 1: What is your name?", "name")}, json.dumps({"round": 1})
        )

    @tool("Sealed requestState: a tampered echo is refused.")
    async def test_input_required_result_tampered_state(
        ctx: Context,
    ) -> str | InputRequiredResult:
        # The SDK seals every requestState (RequestStateSecurity) and refuses a
        # modified echo with -32602 before this body runs again.
        if ctx.request_state is None:
            return _ask({"confirm": _form("Please confirm", "ok", "boolean")}, "sealed-round-1")
        return f"state-ok: {ctx.request_state}"

    @tool("Asks only for what the client declared it can answer.")
    async def test_input_required_result_capabilities(ctx: Context) -> InputRequiredResult:
        declared = ctx.client_capabilities
        wanted: dict[str, Any] = {}
        if declared is None or declared.sampling is not None:
            wanted["sample"] = _sample("Say hello", 50)
        if declared is None or declared.elicitation is not None:
            wanted["ask"] = _form("What is your name?", "name")
        return _ask(wanted, "capability-gated")

    # --- resources -----------------------------------------------------------------------
    @server.resource(
        "test://static-text",
        name="static-text",
        description="A static text resource.",
        mime_type="text/plain",
    )
    def static_text() -> str:
        return "This is the content of the static text resource."

    @server.resource(
        "test://static-binary",
        name="static-binary",
        description="A static binary resource (a PNG).",
        mime_type="image/png",
    )
    def static_binary() -> bytes:
        return _png()

    @server.resource(
        "test://watched-resource",
        name="watched-resource",
        description="A resource clients may subscribe to.",
        mime_type="text/plain",
    )
    def watched() -> str:
        return "Watched resource content"

    @server.resource(
        "test://template/{id}/data",
        name="template-data",
        description="Data for an id, through a template.",
        mime_type="application/json",
    )
    def template_data(id: str) -> str:
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    # --- prompts -------------------------------------------------------------------------
    @server.prompt(description="A prompt without arguments.")
    def test_simple_prompt() -> list[UserMessage]:
        return _messages({"type": "text", "text": "This is a simple prompt for testing."})

    @server.prompt(description="A prompt with two required arguments.")
    def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
        text = f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"
        return _messages({"type": "text", "text": text})

    @server.prompt(description="A prompt embedding the resource it is given.")
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:
        resource = {
            "uri": resourceUri,
            "mimeType": "text/plain",
            "text": "Embedded resource content for testing.",
        }
        return _messages(
            {"type": "resource", "resource": resource},
            {"type": "text", "text": "Please process the embedded resource above."},
        )

    @server.prompt(description="A prompt with an image.")
    def test_prompt_with_image() -> list[UserMessage]:
        return _messages(IMAGE, {"type": "text", "text": "Please analyze the image above."})

    @server.prompt(description="A prompt that first asks the user for context.")
    async def test_input_required_result_prompt(ctx: Context) -> Any:
        answer = _answers(ctx).get("user_context")
        if answer is None:
            return _ask({"user_context": _form("What context should the prompt use?", "context")})
        context = (answer.get("content") or {}).get("context", "?")
        return _messages({"type": "text", "text": f"Use the following context: {context}"})

    # --- completion, and the 2025-11-25 methods MCPServer has no decorator for --------
    @server.completion()
    async def complete(
        ref: PromptReference | ResourceTemplateReference,
        argument: CompletionArgument,
        context: CompletionContext | None,
    ) -> Completion:
        return Completion(values=[], total=0, has_more=False)

    async def set_level(ctx: ServerRequestContext[Any], params: SetLevelRequestParams) -> Any:
        return EmptyResult()

    async def subscribe(ctx: ServerRequestContext[Any], params: SubscribeRequestParams) -> Any:
        subscribed.add(str(params.uri))
        return EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[Any], params: UnsubscribeRequestParams) -> Any:
        subscribed.discard(str(params.uri))
        return EmptyResult()

    lowlevel = server._lowlevel_server
    lowlevel.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)
    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)

    @server.custom_route("/healthz", methods=["GET"])
    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return server


_CONTENT: TypeAdapter[ContentBlock] = TypeAdapter(ContentBlock)


def _messages(*contents: dict[str, Any]) -> list[UserMessage]:
    """User messages with these content blocks (in their wire form)."""
    return [UserMessage(_CONTENT.validate_python(content)) for content in contents]


def app(server: MCPServer | None = None) -> Any:
    """The ASGI app: ``/mcp`` (both eras, resumable SSE) and ``/healthz``."""
    return (server or build()).streamable_http_app(event_store=_Events(), retry_interval=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=3001)
    args = parser.parse_args()
    # The 2025-11-25 fixtures use what 2026-07-28 deprecates (logging, sampling, roots).
    warnings.filterwarnings("ignore", category=MCPDeprecationWarning)
    # h11 rather than httptools: h11 strips the optional whitespace around header
    # values (RFC 9110 5.5), which the SDK's Mcp-Name check does not do itself.
    uvicorn.run(app(), host="127.0.0.1", port=args.port, log_level="warning", http="h11")


if __name__ == "__main__":
    main()
