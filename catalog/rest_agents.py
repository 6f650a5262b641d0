"""REST agents: how the gateway calls a plain HTTP agent (``gateway.schema.RestAgentCall``),
as stored in ``AgentTarget.rest``, and presets that fill it in for common agents."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.schema import RestAgentCall

# The request template travels in every revision: a page of JSON is plenty.
MAX_REQUEST_TEMPLATE_BYTES = 16 * 1024

# Starting points an admin edits (the model's name, the reply's path): an OpenAI-style
# chat completions API, and a webhook that takes a message and answers with a reply.
REST_AGENT_PRESETS: dict[str, dict[str, Any]] = {
    "openai-chat": {
        "method": "POST",
        "path": "/chat/completions",
        "request": {
            "model": "<model>",
            "messages": [{"role": "user", "content": "{{text}}"}],
        },
        "reply": "choices.0.message.content",
        "reply_as": "message",
    },
    "webhook": {
        "method": "POST",
        "path": "",
        "request": {"message": "{{text}}", "session": "{{context_id}}"},
        "reply": "reply",
        "reply_as": "message",
    },
}


def rest_agent_preset(name: str) -> dict[str, Any]:
    """A copy of the preset ``name`` (see ``REST_AGENT_PRESETS``), as ``AgentTarget.rest``
    stores it; ``KeyError`` for an unknown name."""
    return msgspec.json.decode(msgspec.json.encode(REST_AGENT_PRESETS[name]))


def rest_agent_call_from_json(value: object) -> RestAgentCall:
    """Decode a stored REST call as the gateway will; ``ValueError`` with a sentence for
    the admin when it would not work."""
    try:
        call = msgspec.convert(value, RestAgentCall)
    except msgspec.ValidationError as exc:
        raise ValueError(
            f"The REST call is not valid: {exc}. It is an object with method, path, request, "
            "reply and reply_as."
        ) from None
    if call.path and not call.path.startswith("/"):
        raise ValueError(
            f"The path {call.path!r} must start with / (it follows the upstream's base URL), "
            "or be empty for the base URL itself."
        )
    if len(msgspec.json.encode(call.request)) > MAX_REQUEST_TEMPLATE_BYTES:
        raise ValueError(
            f"The request template is over {MAX_REQUEST_TEMPLATE_BYTES // 1024} KiB of JSON; "
            "keep it to the fields the agent needs."
        )
    return call
