"""What a revision's MCP products offer, indexed for the request path.

Built once per revision (``gateway.revision``): backend credentials opened, tools by
the name each endpoint serves them under, and a JSON Schema validator per tool made on
first use. On the aggregate endpoint ``/mcp`` a tool is ``<product>__<tool>``: product
slugs have no underscores, so the first ``__`` always splits it back, and the name of
a tool never changes when another product is added.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import jsonschema.validators

from gateway.schema import MCP_VENDOR, REST_VENDOR, McpServer, McpTool, Revision, Upstream
from gateway.secrets import GatewayKeys, SecretError

log = logging.getLogger("gateway.mcp")

SEPARATOR = "__"


class McpIndexError(ValueError):
    """A revision's MCP products are inconsistent; the message names the culprit."""


@dataclass(slots=True)
class ServedTool:
    """A tool as served: its pinned definition under the name an endpoint uses."""

    name: str  # the upstream's name for it
    definition: dict[str, Any]
    tool: McpTool
    _validator: Any = None
    _checked: bool = False
    _headers: dict[str, str] | None = None

    def header_arguments(self) -> dict[str, str]:
        """Arguments the pinned input schema marks ``x-mcp-header``, with the header
        name each travels in (``Mcp-Param-<name>``, 2026-07-28)."""
        if self._headers is None:
            schema = self.definition.get("inputSchema")
            properties = schema.get("properties") if isinstance(schema, dict) else None
            self._headers = {
                name: spec["x-mcp-header"]
                for name, spec in (properties or {}).items()
                if isinstance(spec, dict)
                and isinstance(spec.get("x-mcp-header"), str)
                and spec["x-mcp-header"].isascii()
            }
        return self._headers

    def problems(self, arguments: dict[str, Any]) -> str | None:
        """Why ``arguments`` do not fit the pinned input schema (``None``: they do)."""
        validator = self._validator_of()
        if validator is None:
            return None
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
        if error is None:
            return None
        where = "/".join(str(part) for part in error.absolute_path)
        return f"{error.message}" + (f" (at '{where}')" if where else "")

    def _validator_of(self) -> Any:
        if not self._checked:
            self._checked = True
            schema = self.definition.get("inputSchema")
            if isinstance(schema, dict):
                try:
                    cls = jsonschema.validators.validator_for(
                        schema, default=jsonschema.Draft202012Validator
                    )
                    cls.check_schema(schema)
                    self._validator = cls(schema)
                except jsonschema.exceptions.SchemaError:
                    log.warning("tool %s has an invalid input schema; not validated", self.name)
        return self._validator


@dataclass(slots=True)
class ServedProduct:
    """One MCP product: its upstream and its approved tools, prompts and resources."""

    id: int
    slug: str
    server: McpServer
    upstream_id: str
    upstream: Upstream
    secret: str | None
    tools: dict[str, ServedTool] = field(default_factory=dict)
    prompts: dict[str, dict[str, Any]] = field(default_factory=dict)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(slots=True)
class McpIndex:
    products: dict[str, ServedProduct] = field(default_factory=dict)
    # OAuth grants whose access tokens the portal revoked (``Revision.oauth``).
    revoked_grants: frozenset[int] = frozenset()


def served_name(product: ServedProduct, tool: str, aggregate: bool) -> str:
    return f"{product.slug}{SEPARATOR}{tool}" if aggregate else tool


def index_mcp(doc: Revision, keys: GatewayKeys) -> McpIndex:
    """The MCP products of ``doc``; raises :class:`McpIndexError` when inconsistent."""
    index = McpIndex()
    if doc.oauth is not None:
        index.revoked_grants = frozenset(doc.oauth.revoked_grants)
    for slug, product in doc.products.items():
        server = product.mcp
        if product.kind != "mcp" or server is None:
            continue
        upstream = doc.upstreams.get(server.upstream)
        if upstream is None or upstream.vendor not in (MCP_VENDOR, REST_VENDOR):
            raise McpIndexError(f"MCP product {slug!r} names unknown upstream {server.upstream!r}")
        try:
            secret = keys.unseal(upstream.secret) if upstream.secret is not None else None
        except SecretError as exc:
            raise McpIndexError(f"upstream {server.upstream}: {exc}") from exc
        served = ServedProduct(
            id=product.id,
            slug=slug,
            server=server,
            upstream_id=server.upstream,
            upstream=upstream,
            secret=secret,
        )
        for tool in server.tools:
            if upstream.vendor == REST_VENDOR and tool.rest is None:
                raise McpIndexError(f"REST tool {tool.name!r} of {slug!r} has no REST call")
            definition = {**tool.definition, "name": tool.name}
            served.tools[tool.name] = ServedTool(tool.name, definition, tool)
        for prompt in server.prompts:
            name = prompt.get("name")
            if isinstance(name, str):
                served.prompts[name] = prompt
        for resource in server.resources:
            uri = resource.get("uri")
            if isinstance(uri, str):
                served.resources[uri] = resource
        index.products[slug] = served
    return index
