"""Ranking tools by relevance to a task description (``find_tools``, ``/mcp?q=``).

Lexical by default: BM25 over each tool's name (split at ``_``, ``-``, ``.`` and case
changes), title, description and parameter names and descriptions, with the name
weighted up. Another ranking (embeddings, say) plugs in as a :class:`Ranker`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol

_WORD = re.compile(r"[A-Za-z][a-z]*|[a-z]+|\d+")
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "in",
        "into",
        "is",
        "it",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "with",
        "i",
        "me",
        "my",
        "we",
        "you",
        "your",
        "please",
        "can",
        "could",
        "would",
        "should",
        "will",
    ]
)
_K1 = 1.2
_B = 0.75
_NAME_WEIGHT = 3


def words(text: str) -> list[str]:
    return [w for w in (m.lower() for m in _WORD.findall(text)) if w not in _STOP]


def tool_text(definition: dict[str, Any]) -> list[str]:
    """The words a tool is found by, its name's counted several times."""
    found: list[str] = []
    name = str(definition.get("name", ""))
    found += words(name) * _NAME_WEIGHT
    found += words(str(definition.get("title", "")))
    found += words(str(definition.get("description", "")))
    schema = definition.get("inputSchema")
    if isinstance(schema, dict) and isinstance(schema.get("properties"), dict):
        for param, spec in schema["properties"].items():
            found += words(str(param))
            if isinstance(spec, dict):
                found += words(str(spec.get("description", "")))
    return found


class Ranker(Protocol):
    def rank(self, query: str, documents: Sequence[list[str]], limit: int) -> list[int]:
        """Indexes of the ``limit`` best documents for ``query``, best first (only
        those that match at all)."""
        ...


class Bm25:
    def rank(self, query: str, documents: Sequence[list[str]], limit: int) -> list[int]:
        terms = set(words(query))
        if not terms or not documents:
            return []
        count = len(documents)
        average = sum(len(d) for d in documents) / count or 1.0
        frequencies = [Counter(d) for d in documents]
        holding = Counter(term for f in frequencies for term in terms if term in f)
        scored = []
        for index, (document, frequency) in enumerate(zip(documents, frequencies, strict=True)):
            score = 0.0
            for term in terms:
                tf = frequency.get(term, 0)
                if not tf:
                    continue
                idf = math.log(1 + (count - holding[term] + 0.5) / (holding[term] + 0.5))
                score += idf * tf * (_K1 + 1) / (tf + _K1 * (1 - _B + _B * len(document) / average))
            if score > 0:
                scored.append((-score, index))
        scored.sort()
        return [index for _, index in scored[:limit]]
