"""What every fake vendor answers, independent of wire format.

The behaviour is chosen by the model name (knobs, as in ``devstack.mock_llm``, which
follows the same script for the OpenAI wire format) and by the conversation:

- the reply is ``"You said: <last user text>"``, streamed one word per chunk (or
  ``chunks-<n>`` chunks);
- when the request offers tools and the conversation's last message is the user's,
  the fake calls the first tool offered with the arguments ``{"query": <user text>}``;
  once the last message is a tool result, it replies ``"Tool said: <result text>"``;
- token counts are word counts: prompt = words of every message's text (at least 1),
  completion = number of chunks (1 for a tool call);
- knobs in the model name: ``delay-<ms>`` (before answering), ``error-<status>``
  (answer with that status in the vendor's error format; 429 adds ``retry-after: 1``),
  ``context`` (the vendor's own "prompt too long" error), ``break-<n>`` (stream ``n``
  chunks, then drop the connection without finishing), ``stream-delay-<ms>`` (between
  chunks), ``chunks-<n>``, ``echo-key`` (error messages quote the credential received,
  as some vendors' do), ``no-usage`` (no token counts in any answer, as some
  OpenAI-compatible servers do).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_KNOB = re.compile(r"(stream-delay|delay|error|chunks|break)-(\d+)")


@dataclass(frozen=True, slots=True)
class Knobs:
    delay: float = 0.0
    error: int | None = None
    chunks: int | None = None
    stream_delay: float = 0.0
    break_after: int | None = None
    context: bool = False
    echo_key: bool = False  # error messages quote the credential received
    no_usage: bool = False  # answers carry no token counts


@functools.lru_cache(maxsize=1024)
def knobs_for(model: str) -> Knobs:
    values = {name: int(number) for name, number in _KNOB.findall(model)}
    return Knobs(
        delay=values.get("delay", 0) / 1000.0,
        error=values.get("error"),
        chunks=values.get("chunks"),
        stream_delay=values.get("stream-delay", 0) / 1000.0,
        break_after=values.get("break"),
        context="context" in model,
        echo_key="echo-key" in model,
        no_usage="no-usage" in model,
    )


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, str]


@dataclass(frozen=True, slots=True)
class Answer:
    """What the fake says: text pieces or one tool call, and the token counts."""

    pieces: list[str]
    tool_call: ToolCall | None
    prompt_tokens: int
    completion_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def words(text: str) -> int:
    return len(text.split())


def answer(
    *,
    model: str,
    texts: list[str],
    last_user_text: str,
    last_is_tool_result: bool,
    tool_result_text: str,
    first_tool: str | None,
    call_id: str,
) -> Answer:
    """The script. ``texts`` are the text of every message (system included), for the
    prompt count; ``first_tool`` is the name of the first tool offered, if any."""
    knobs = knobs_for(model)
    prompt_tokens = max(1, sum(words(text) for text in texts))
    if first_tool is not None and not last_is_tool_result:
        call = ToolCall(id=call_id, name=first_tool, arguments={"query": last_user_text})
        return Answer(pieces=[], tool_call=call, prompt_tokens=prompt_tokens, completion_tokens=1)
    reply = (
        f"Tool said: {tool_result_text}" if last_is_tool_result else f"You said: {last_user_text}"
    )
    split = reply.split()
    count = knobs.chunks if knobs.chunks is not None else len(split)
    pieces = [split[i % len(split)] + (" " if i < count - 1 else "") for i in range(count)]
    return Answer(
        pieces=pieces, tool_call=None, prompt_tokens=prompt_tokens, completion_tokens=count
    )
