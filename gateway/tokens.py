"""Token estimates, for the rare answers whose vendor reports no usage.

Vendors count tokens with their own tokenizers and say so in every answer the gateway
asks them for; these estimates stand in only where an upstream says nothing (an
OpenAI-compatible server that ignores ``stream_options``, say), so that the call is still
metered and counted against the plan. Usage events mark such counts ``estimated``.

No tokenizer's vocabulary ships here (they are downloaded at run time, and the gateway
runs without internet), so the estimate follows the shape of byte-pair encodings: a
word is one token up to about six letters and one more for each six after; a number
takes a token per three digits; punctuation a token per character; each character of a
script written without spaces (Chinese, Japanese, Korean) about a token. It is an
estimate, not any vendor's count, and is never used where a vendor's count exists.
"""

from __future__ import annotations

import re
from typing import Any

_PIECES = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]"  # one CJK char
    r"|[^\W\d_]+"  # letters
    r"|\d+"  # digits
    r"|[^\w\s]",  # one punctuation mark
)
# Tokens a chat format adds around each message (role, separators), and per reply.
_PER_MESSAGE = 4
_PER_REPLY = 3


def count_text(text: str) -> int:
    """Estimated tokens of ``text``."""
    tokens = 0
    for piece in _PIECES.findall(text):
        size = len(piece)
        if size == 1:
            tokens += 1
        elif piece[0].isdigit():
            tokens += (size + 2) // 3
        else:
            tokens += (size + 5) // 6
    return tokens


def count_prompt(request: dict[str, Any]) -> int:
    """Estimated prompt tokens of an OpenAI-shaped chat request (messages and tools)."""
    tokens = _PER_REPLY
    messages = request.get("messages")
    if isinstance(messages, list):
        for message in messages:
            tokens += _PER_MESSAGE
            if isinstance(message, dict):
                tokens += count_value(message.get("content"))
                tokens += count_value(message.get("tool_calls"))
    tools = request.get("tools")
    if tools:
        tokens += count_value(tools)
    return tokens


def count_value(value: object) -> int:
    """Estimated tokens of the text in a JSON value: strings, and text parts of lists and
    objects (an image part counts as its URL, which understates it); a number counts as
    one (embeddings take prompts as lists of token ids)."""
    if isinstance(value, str):
        return count_text(value)
    if isinstance(value, (int, float)):
        return 1
    if isinstance(value, list):
        return sum(count_value(item) for item in value)
    if isinstance(value, dict):
        return sum(count_value(item) for item in value.values())
    return 0


def count_completion(answer: dict[str, Any]) -> int:
    """Estimated completion tokens of a ``chat.completion``: its text and tool calls."""
    tokens = 0
    choices = answer.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict):
                message = choice.get("message") or choice.get("delta")
                if isinstance(message, dict):
                    tokens += count_value(message.get("content"))
                    tokens += count_value(message.get("tool_calls"))
    return tokens
