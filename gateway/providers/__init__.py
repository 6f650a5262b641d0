"""Vendor adapters, by the ``vendor`` name an upstream has in a revision.

See :mod:`gateway.providers.base` for what an adapter does. Adapters are imported when a
revision first names their vendor, so a gateway that serves only OpenAI-wire vendors
never loads the others.
"""

from __future__ import annotations

import importlib

from gateway.providers.base import Adapter

# vendor -> (module, attribute)
_ADAPTERS: dict[str, tuple[str, str]] = {
    "openai": ("gateway.providers.openai", "OPENAI"),
    "azure_openai": ("gateway.providers.openai", "AZURE_OPENAI"),
    "deepseek": ("gateway.providers.openai", "DEEPSEEK"),
    "mistral": ("gateway.providers.openai", "MISTRAL"),
    "dashscope": ("gateway.providers.openai", "DASHSCOPE"),
    "ollama": ("gateway.providers.openai", "OLLAMA"),
    "vllm": ("gateway.providers.openai", "VLLM"),
    "openai_compatible": ("gateway.providers.openai", "OPENAI_COMPATIBLE"),
    "anthropic": ("gateway.providers.anthropic", "ADAPTER"),
    "gemini": ("gateway.providers.gemini", "ADAPTER"),
    "bedrock": ("gateway.providers.bedrock", "ADAPTER"),
}

VENDORS = tuple(_ADAPTERS)


def adapter_for(vendor: str) -> Adapter | None:
    """The adapter of ``vendor``, or ``None`` for a vendor this gateway does not know."""
    found = _ADAPTERS.get(vendor)
    if found is None:
        return None
    module, attribute = found
    adapter: Adapter = getattr(importlib.import_module(module), attribute)
    return adapter
