"""Injection markers in MCP tool definitions ("tool poisoning").

A tool's description is read by the model that decides which tool to call, never by
the person approving it in full, so a malicious server hides instructions there: an
``<IMPORTANT>`` block asking to read ``~/.ssh/id_rsa`` first, text made invisible with
zero-width or Unicode tag characters, "ignore previous instructions". This module
finds such markers in every string of a definition (description, title, annotations,
argument names and descriptions, defaults, enums) so the admin can see them before
approving. It is a tripwire for review, not a verdict: a finding holds nothing back.

Pure functions, no Django: :func:`scan_tool` takes the MCP ``Tool`` object as JSON.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

# The longest excerpt kept per finding: enough to locate it, short enough for a table.
EXCERPT_CHARS = 80
# A definition is not walked deeper than this (a schema nested deeper is itself odd).
MAX_DEPTH = 32


@dataclass(frozen=True, slots=True)
class Finding:
    """One marker: ``code`` names the kind, ``reason`` says why it matters, ``where`` is
    the JSON path of the string it was found in, ``excerpt`` the text around it (with
    invisible characters spelled out as ``<U+200B>``)."""

    code: str
    reason: str
    where: str
    excerpt: str

    def as_json(self) -> dict[str, str]:
        return asdict(self)


# Characters that render as nothing (or reorder text) and so hide text from a reviewer:
# zero-width and joiners, bidirectional controls (the "Trojan Source" trick), word
# joiners and invisible operators, the byte-order mark, soft hyphen, Mongolian vowel
# separator, Unicode tags (U+E0000..E007F, which smuggle ASCII invisibly) and the
# supplementary variation selectors (U+E0100..E01EF, used the same way).
# The zero-width joiner also glues emoji sequences together (👨‍👩‍👧): it counts only
# beside a letter or digit, where it hides nothing but text.
_INVISIBLE = re.compile(
    "[\u00ad\u180e\u200b\u200c\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f"
    "\ufeff\U000e0000-\U000e007f\U000e0100-\U000e01ef]|(?<=\\w)\u200d|\u200d(?=\\w)"
)
_SPELLED_OUT = re.compile(
    "[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff"
    "\U000e0000-\U000e007f\U000e0100-\U000e01ef]"
)
_ANSI_ESCAPE = re.compile(r"\x1b[\[\]()]|\x9b")

_PATTERNS: list[tuple[str, str, re.Pattern[str]]] = [
    (
        "hidden-tag",
        "A tag such as <IMPORTANT> or <system> that addresses the model, not the user.",
        re.compile(
            r"<\s*/?\s*(?:important|system|instructions?|secret|hidden|admin|override|"
            r"critical|context|assistant|prompt)\b[^>]{0,200}>"
            r"|<\|im_(?:start|end)\|>|\[/?INST\]|<<\s*/?SYS\s*>>",
            re.IGNORECASE,
        ),
    ),
    (
        "override",
        "Words that try to override the model's instructions.",
        re.compile(
            r"\b(?:ignore|disregard|forget|override|bypass)\s+(?:all\s+|any\s+|the\s+|your\s+)?"
            r"(?:previous|prior|above|earlier|preceding|other|existing|system|original)\s+"
            r"(?:instructions?|prompts?|messages?|rules|directions|guidelines|context)\b"
            r"|\bnew\s+instructions\s*:"
            r"|\byou\s+are\s+now\s+(?:in\s+)?(?:developer|admin|god|jailbreak|dan)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "concealment",
        "Asks the model to keep something from the user.",
        re.compile(
            r"\b(?:do\s+not|don['\u2019]?t|never|must\s+not)\s+"
            r"(?:tell|inform|mention|reveal|show|alert|notify|say\s+(?:this|it)\s+to)\s+"
            r"(?:this\s+to\s+|it\s+to\s+|anything\s+to\s+)?(?:the\s+)?users?\b"
            r"|\b(?:do\s+not|don['\u2019]?t|never)\s+(?:mention|reveal|disclose)\s+"
            r"(?:that|this|it|anything)\b"
            r"|\bwithout\s+(?:telling|informing|notifying|alerting|asking)\s+(?:the\s+)?users?\b"
            r"|\b(?:the\s+)?users?\s+(?:must|should)\s+not\s+(?:know|see|notice|be\s+told)\b",
            re.IGNORECASE,
        ),
    ),
    (
        "secret-path",
        "Names a file that holds secrets (SSH keys, .env, cloud or client credentials).",
        re.compile(
            r"~?/?\.ssh\b|\bid_(?:rsa|dsa|ecdsa|ed25519)\b|(?<![\w.])\.env(?:\.[\w-]+)?\b"
            r"|/etc/(?:passwd|shadow|sudoers)\b|\.aws/credentials\b|\.kube/config\b"
            r"|\.docker/config\.json\b|(?<![\w.])\.(?:netrc|npmrc|pypirc|pgpass|git-credentials)\b"
            r"|\.config/gcloud\b|\bcredentials\.json\b"
            r"|(?<![\w.])\.cursor/mcp\.json\b|\bclaude_desktop_config\.json\b",
            re.IGNORECASE,
        ),
    ),
    (
        "html-comment",
        "An HTML comment: text clients do not show but the model reads.",
        re.compile(r"<!--.*?-->", re.DOTALL),
    ),
    (
        "padding",
        "A long run of blank space or lines, which pushes text out of a reviewer's view.",
        # Linear patterns only: a definition may be large and is scanned on every discovery.
        re.compile(r"[ \t]{40,}|\n(?:[ \t]*\n){7,}"),
    ),
]


def _visible(text: str) -> str:
    """``text`` with invisible and control characters spelled out as ``<U+XXXX>``."""
    return "".join(
        f"<U+{ord(char):04X}>"
        if _SPELLED_OUT.match(char) or (unicodedata.category(char) == "Cc" and char not in "\n\t")
        else char
        for char in text
    )


def _excerpt(text: str, start: int, end: int) -> str:
    room = max(0, (EXCERPT_CHARS - (end - start)) // 2)
    left, right = max(0, start - room), min(len(text), end + room)
    snippet = " ".join(_visible(text[left:right]).split())
    if len(snippet) > EXCERPT_CHARS * 2:
        snippet = snippet[: EXCERPT_CHARS * 2] + "…"
    return ("…" if left > 0 else "") + snippet + ("…" if right < len(text) else "")


def scan_text(text: str, *, where: str = "description") -> list[Finding]:
    """The markers in one string, at most one per kind (the first one found)."""
    findings: list[Finding] = []
    invisible = _INVISIBLE.search(text)
    if invisible is not None:
        count = len(_INVISIBLE.findall(text))
        findings.append(
            Finding(
                "invisible-unicode",
                f"{count} invisible or direction-changing character"
                f"{'s' if count != 1 else ''}: text a reviewer cannot see.",
                where,
                _excerpt(text, invisible.start(), invisible.end()),
            )
        )
    escape = _ANSI_ESCAPE.search(text)
    if escape is not None:
        findings.append(
            Finding(
                "terminal-escape",
                "A terminal escape sequence, which can hide or rewrite text in a console.",
                where,
                _excerpt(text, escape.start(), escape.end()),
            )
        )
    # Invisible characters between the letters must not hide a phrase from the patterns.
    plain = _SPELLED_OUT.sub("", text)
    for code, reason, pattern in _PATTERNS:
        match = pattern.search(plain)
        if match is not None:
            findings.append(
                Finding(code, reason, where, _excerpt(plain, match.start(), match.end()))
            )
    return findings


def _strings(value: Any, path: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    """Every string in ``value`` (keys of objects too) with its JSON path."""
    if depth > MAX_DEPTH:
        return
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{key}" if path else str(key)
            if isinstance(key, str):
                yield f"{child} (name)", key
            yield from _strings(item, child, depth + 1)
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield from _strings(item, f"{path}[{position}]", depth + 1)


# The names the MCP specification recommends (2025-11-25, "Tool names"); clients may
# refuse others, and a name is shown to people and models alike.
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def scan_tool(definition: dict[str, Any]) -> list[Finding]:
    """The markers in a tool definition (an MCP ``Tool`` object), in document order.

    Keys are scanned too: an argument *named* ``ignore previous instructions`` is read
    by the model like any text. A marker found under the same path twice is kept once.
    """
    findings: list[Finding] = []
    name = definition.get("name")
    if isinstance(name, str) and not _TOOL_NAME.match(name):
        findings.append(
            Finding(
                "odd-name",
                "The name is not 1 to 128 of A-Z, a-z, 0-9, _, - and . as the MCP "
                "specification asks: clients may show or treat it unexpectedly.",
                "name",
                _excerpt(name, 0, min(len(name), EXCERPT_CHARS)),
            )
        )
    return findings + scan_value(definition)


def scan_value(value: Any, *, where: str = "") -> list[Finding]:
    """The markers in every string of a JSON value (a server's instructions, its prompts
    and resources), each path's kind of marker once, in document order."""
    findings: list[Finding] = []
    seen: set[tuple[str, str]] = set()
    for path, text in _strings(value, where):
        for finding in scan_text(text, where=path):
            if (finding.code, finding.where) not in seen:
                seen.add((finding.code, finding.where))
                findings.append(finding)
    return findings
