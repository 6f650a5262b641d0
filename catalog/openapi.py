"""OpenAPI 3.0/3.1 documents into REST-to-MCP tools.

Pure: no Django, no I/O. :func:`load_document` parses what an admin uploaded or Portico
fetched (JSON or YAML), :func:`tools_from_openapi` turns each operation into an MCP tool
definition and the ``gateway.schema.RestCall`` the gateway makes for it, and
:func:`rest_tool_problems` checks a tool, imported or defined by hand, before it is saved.

The rules, one tool per operation:

- the name is the ``operationId`` cut to ``[A-Za-z0-9_-]`` and 64 characters (else
  ``<method>_<path>``), made unique; the description is the summary and description;
- path, query and header parameters become arguments, with their schema and
  description, required when the parameter is; a JSON request body that is an object
  spreads its properties as ``body`` arguments (a name a parameter has already is
  prefixed ``body_``, its ``field`` keeping the real one), any other JSON body is one
  ``whole_body`` argument named ``body``; an operation whose body is not JSON is left
  out, as are cookie parameters the operation needs;
- references within the document (``#/components/...``) are followed to any depth up
  to :data:`MAX_REF_DEPTH`, a schema that contains itself accepts anything at the
  point where it recurs, and references to other documents are not followed;
- GET is annotated ``readOnlyHint``, DELETE ``destructiveHint``;
- the path template stays relative to the document's first server
  (:attr:`OpenApiImport.server_url`), which is the upstream's base URL.

What could not be imported, and why, is in :attr:`OpenApiImport.warnings`.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, get_args, get_type_hints
from urllib.parse import unquote

import jsonschema
import msgspec
import orjson
import yaml

from gateway.schema import RestArgument, RestCall

MAX_DOCUMENT_BYTES = 5 * 1024 * 1024
MAX_OPERATIONS = 500
MAX_REF_DEPTH = 32  # references followed in a row, or nested inside one another
MAX_NESTING = 100  # levels of the document itself
MAX_SCHEMA_NODES = 20_000  # schema objects one operation may expand to
MAX_DEFINITION_BYTES = 64 * 1024  # as discovery keeps for a hosted server's tool
MAX_TOOL_NAME = 64
MAX_DESCRIPTION = 8000

REST_METHODS: tuple[str, ...] = get_args(get_type_hints(RestCall)["method"])
REST_LOCATIONS: tuple[str, ...] = get_args(get_type_hints(RestArgument)["in_"])
_OPENAPI_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# What models' tool-calling APIs accept as property names (Anthropic's is the strictest).
ARGUMENT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
SELECT_PATH = re.compile(r"^[^.\s]+(?:\.[^.\s]+)*$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
# Headers an argument may not set: HTTP's own, and credentials (the gateway sends the
# upstream's, never a caller's).
FORBIDDEN_HEADERS = frozenset(
    {
        "accept",
        "authorization",
        "connection",
        "content-length",
        "content-type",
        "cookie",
        "host",
        "keep-alive",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# OpenAPI says these header parameters "SHALL be ignored".
_IGNORED_HEADERS = frozenset({"accept", "content-type", "authorization"})

# Keywords whose value is a schema, a map of schemas, or a list of schemas.
_SCHEMA_KEYS = frozenset(
    {
        "items",
        "additionalProperties",
        "not",
        "contains",
        "propertyNames",
        "if",
        "then",
        "else",
        "unevaluatedItems",
        "unevaluatedProperties",
        "additionalItems",
    }
)
_SCHEMA_MAP_KEYS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
_SCHEMA_LIST_KEYS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
# OpenAPI's own words in a schema, which JSON Schema does not know.
_OPENAPI_ONLY = frozenset({"discriminator", "xml", "externalDocs", "nullable", "example"})


class OpenApiError(ValueError):
    """The document cannot be imported at all; ``str(exc)`` says why, for the admin."""


class _Skip(Exception):
    """One operation cannot be imported; the message says why."""


@dataclass(frozen=True, slots=True)
class CredentialPlace:
    """Where the gateway puts an upstream's credential: header names and query
    parameter names (see ``gateway.schema.REST_AUTH_STYLES``). No tool argument may go
    there: a caller's value would stand in for, or beside, the gateway's."""

    headers: frozenset[str] = frozenset()  # lower-case
    params: frozenset[str] = frozenset()

    @classmethod
    def of(cls, options: Mapping[str, str], has_secret: bool) -> CredentialPlace:
        """Where an upstream with ``options`` (and a secret, or not) sends it."""
        auth = options.get("auth") or ("bearer" if has_secret else "")
        if auth == "header" and options.get("header"):
            return cls(headers=frozenset({options["header"].lower()}))
        if auth == "query":
            return cls(params=frozenset({options.get("param") or "api_key"}))
        return cls()

    def covers(self, where: str, name: str) -> bool:
        return (where == "header" and name.lower() in self.headers) or (
            where == "query" and name in self.params
        )


@dataclass(frozen=True, slots=True)
class ImportedTool:
    """One operation as a tool: ``definition`` is the MCP ``Tool`` object, ``rest`` how
    the gateway calls the service for it, ``operation`` e.g. ``GET /pets/{id}``."""

    name: str
    definition: dict[str, Any]
    rest: RestCall
    operation: str


@dataclass(frozen=True, slots=True)
class OpenApiImport:
    """The tools of a document, what was left out (``warnings``), and about the API:
    ``server_url`` is its first server's URL (variables filled with their defaults;
    possibly relative to where the document came from), the upstream's base URL."""

    tools: list[ImportedTool]
    warnings: list[str]
    server_url: str = ""
    title: str = ""
    version: str = ""
    description: str = ""


def rest_call_to_json(call: RestCall) -> dict[str, Any]:
    """The JSON form a REST call is stored in (and compared, for pinning)."""
    result: dict[str, Any] = msgspec.to_builtins(call)
    return result


def rest_call_from_json(value: object) -> RestCall:
    """Decode a stored REST call; raises ``ValueError`` saying what is wrong."""
    try:
        return msgspec.convert(value, RestCall)
    except msgspec.ValidationError as exc:
        raise ValueError(f"Not a REST call: {exc}") from None


# Loading -----------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """Safe YAML without aliases: ``*name`` lets a few lines stand for an exponentially
    large document (the "billion laughs"), and OpenAPI documents do not need them."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise OpenApiError(
                "The YAML uses aliases (*name), which Portico does not expand: write the "
                "document out in full, or as JSON."
            )
        return super().compose_node(parent, index)


def load_document(data: bytes | str) -> dict[str, Any]:
    """Parse an OpenAPI document given as JSON or YAML (at most
    :data:`MAX_DOCUMENT_BYTES`); raises :class:`OpenApiError`."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise OpenApiError(
            f"The document is {len(raw) / (1 << 20):.1f} MiB; Portico imports documents of "
            f"up to {MAX_DOCUMENT_BYTES >> 20} MiB."
        )
    value: Any
    if raw.lstrip()[:1] in (b"{", b"["):
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise OpenApiError(f"The document is not valid JSON: {exc}.") from None
    else:
        try:
            value = yaml.load(raw, Loader=_Loader)  # noqa: S506 (a SafeLoader)
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            line = f" (line {where.line + 1})" if where is not None else ""
            raise OpenApiError(f"The document is neither JSON nor valid YAML{line}.") from None
    value = _plain_json(value, 0)
    if not isinstance(value, dict):
        raise OpenApiError("The document is not an OpenAPI object (a JSON or YAML mapping).")
    return value


def _plain_json(value: Any, depth: int) -> Any:
    """``value`` as JSON types (YAML also makes dates, and keys that are not text)."""
    if depth > MAX_NESTING:
        raise OpenApiError(f"The document nests deeper than {MAX_NESTING} levels.")
    if isinstance(value, dict):
        return {str(key): _plain_json(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain_json(item, depth + 1) for item in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, datetime.date):
        return value.isoformat()
    return str(value)


# Converting ---------------------------------------------------------------------------------


def tools_from_openapi(
    document: Mapping[str, Any], *, credential: CredentialPlace | None = None
) -> OpenApiImport:
    """The tools of an OpenAPI 3.0 or 3.1 ``document`` (see the module docstring).

    ``credential`` names where the gateway puts the upstream's own credential: a
    parameter there is left out (the gateway fills it; a caller must not).

    Raises :class:`OpenApiError` when the document is not one, or has more than
    :data:`MAX_OPERATIONS` operations; an operation that cannot be imported is left out
    with a warning instead.
    """
    version = document.get("openapi")
    if not isinstance(version, str):
        if "swagger" in document:
            raise OpenApiError(
                "This is a Swagger 2.0 document: convert it to OpenAPI 3 first (for example "
                "with swagger2openapi)."
            )
        raise OpenApiError("This is not an OpenAPI document: it has no 'openapi' version.")
    if not re.match(r"^3\.[01](?:\.|$)", version):
        raise OpenApiError(
            f"OpenAPI {version} is not supported: Portico imports OpenAPI 3.0 and 3.1."
        )
    paths = document.get("paths")
    paths = {} if paths is None else paths  # 3.1: a document of webhooks only
    if not isinstance(paths, dict):
        raise OpenApiError("The document's 'paths' is not an object.")
    converter = _Converter(
        document, openapi_30=version.startswith("3.0"), credential=credential or CredentialPlace()
    )
    operations = list(converter.operations(paths))
    if len(operations) > MAX_OPERATIONS:
        raise OpenApiError(
            f"The document has {len(operations)} operations; Portico imports at most "
            f"{MAX_OPERATIONS} into one product. Split it into smaller documents."
        )
    tools: list[ImportedTool] = []
    warnings = list(converter.document_warnings)
    taken: set[str] = set()
    for path, method, item, operation in operations:
        label = f"{method.upper()} {path}"
        converter.notes = []
        try:
            definition, call = converter.operation(path, method, item, operation)
        except _Skip as exc:
            warnings.append(f"{label}: left out: {exc}")
            continue
        name = _unique_name(_tool_name(operation.get("operationId"), method, path), taken)
        wanted = operation.get("operationId")
        if isinstance(wanted, str) and _sanitise(wanted) not in ("", name):
            converter.notes.append(f"named {name} ({_sanitise(wanted)} was taken)")
        definition = {"name": name, **definition}
        if len(orjson.dumps(definition)) > MAX_DEFINITION_BYTES:
            warnings.append(f"{label}: left out: its definition is over 64 KiB.")
            continue
        taken.add(name)
        warnings.extend(f"{label}: {note}" for note in dict.fromkeys(converter.notes))
        tools.append(ImportedTool(name=name, definition=definition, rest=call, operation=label))
    info = document.get("info") if isinstance(document.get("info"), dict) else {}
    assert isinstance(info, dict)
    return OpenApiImport(
        tools=tools,
        warnings=warnings,
        server_url=_server_url(document.get("servers")),
        title=_text(info.get("title"))[:200],
        version=_text(info.get("version"))[:100],
        description=_text(info.get("description"))[:MAX_DESCRIPTION],
    )


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _sanitise(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:MAX_TOOL_NAME].rstrip("_")


def _tool_name(operation_id: object, method: str, path: str) -> str:
    name = _sanitise(operation_id) if isinstance(operation_id, str) else ""
    return name or _sanitise(f"{method} {path}") or method


def _unique_name(name: str, taken: Collection[str], *, limit: int = MAX_TOOL_NAME) -> str:
    candidate, number = name, 2
    while candidate in taken:
        suffix = f"_{number}"
        candidate = name[: limit - len(suffix)] + suffix
        number += 1
    return candidate


def _server_url(servers: object) -> str:
    if not isinstance(servers, list) or not servers or not isinstance(servers[0], dict):
        return ""
    first = servers[0]
    url = _text(first.get("url"))
    variables = first.get("variables")
    if isinstance(variables, dict):
        for name, variable in variables.items():
            default = variable.get("default") if isinstance(variable, dict) else None
            if isinstance(default, str):
                url = url.replace("{" + name + "}", default)
    return url


def _json_media(content: Mapping[str, Any]) -> Any:
    """The JSON media type object of a request body, if it has one (``*/*`` counts:
    the gateway sends JSON, which such an operation takes too)."""
    kinds = {key.split(";", 1)[0].strip().lower(): value for key, value in content.items()}
    if "application/json" in kinds:
        return kinds["application/json"]
    for kind, media in kinds.items():
        if kind.endswith("+json") or kind == "*/*":
            return media
    return None


class _Converter:
    def __init__(
        self, document: Mapping[str, Any], *, openapi_30: bool, credential: CredentialPlace
    ) -> None:
        self.document = document
        self.openapi_30 = openapi_30
        self.credential = credential
        self.document_warnings: list[str] = []
        self.notes: list[str] = []
        self.budget = MAX_SCHEMA_NODES

    def operations(
        self, paths: Mapping[str, Any]
    ) -> Iterable[tuple[str, str, dict[str, Any], dict[str, Any]]]:
        for path, raw_item in paths.items():
            try:
                item = self.resolve(raw_item)
            except _Skip as exc:
                self.document_warnings.append(f"{path}: left out: {exc}")
                continue
            if not isinstance(item, dict):
                self.document_warnings.append(f"{path}: left out: not a path item object.")
                continue
            for method, operation in item.items():  # in the document's order
                if method in _OPENAPI_METHODS and isinstance(operation, dict):
                    yield path, method, item, operation

    # References --------------------------------------------------------------------------

    def lookup(self, ref: str) -> Any:
        if not ref.startswith("#/"):
            raise _Skip(
                f"it refers to {ref[:200]!r} in another document; Portico follows "
                "references within the document only."
            )
        node: Any = self.document
        for token in ref[2:].split("/"):
            key = unquote(token).replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                raise _Skip(f"the reference {ref[:200]} points at nothing.")
        return node

    def resolve(self, node: Any) -> Any:
        """``node`` with its ``$ref`` (and theirs) followed: parameters, request bodies,
        path items."""
        seen: list[str] = []
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if not isinstance(ref, str):
                raise _Skip("a $ref is not text.")
            if ref in seen:
                raise _Skip(f"the reference {ref[:200]} refers to itself.")
            if len(seen) >= MAX_REF_DEPTH:
                raise _Skip(f"references follow one another more than {MAX_REF_DEPTH} deep.")
            seen.append(ref)
            node = self.lookup(ref)
        return node

    def schema(self, schema: Any, stack: tuple[str, ...] = (), depth: int = 0) -> Any:
        """``schema`` with every reference inlined, as JSON Schema 2020-12."""
        self.budget -= 1
        if self.budget < 0:
            raise _Skip("its schemas are too large once references are expanded.")
        if depth > MAX_NESTING:
            raise _Skip(f"its schemas nest deeper than {MAX_NESTING} levels.")
        if not isinstance(schema, dict):
            return schema  # true, false (3.1), or something no schema: left as it is
        ref = schema.get("$ref")
        if isinstance(ref, str):
            if ref in stack:
                self.notes.append(
                    f"the schema {ref[:200]} contains itself; where it recurs, any value "
                    "is accepted."
                )
                return {}
            if len(stack) >= MAX_REF_DEPTH:
                raise _Skip(f"its schemas nest references more than {MAX_REF_DEPTH} deep.")
            resolved = self.schema(self.lookup(ref), (*stack, ref), depth + 1)
            siblings = {key: value for key, value in schema.items() if key != "$ref"}
            if siblings and isinstance(resolved, dict):
                return {**resolved, **self.schema(siblings, stack, depth + 1)}
            return resolved
        out: dict[str, Any] = {}
        for key, value in schema.items():
            if key.startswith("x-") or key in _OPENAPI_ONLY:
                continue
            if key in _SCHEMA_KEYS:
                out[key] = self.schema(value, stack, depth + 1)
            elif key in _SCHEMA_MAP_KEYS and isinstance(value, dict):
                out[key] = {name: self.schema(sub, stack, depth + 1) for name, sub in value.items()}
            elif key in _SCHEMA_LIST_KEYS and isinstance(value, list):
                out[key] = [self.schema(sub, stack, depth + 1) for sub in value]
            else:
                out[key] = value  # enum, const, default, examples...: data, not schemas
        return self._json_schema(schema, out)

    def _json_schema(self, original: Mapping[str, Any], out: dict[str, Any]) -> dict[str, Any]:
        """OpenAPI's schema dialect's differences from JSON Schema 2020-12."""
        if "example" in original and "examples" not in out:
            out["examples"] = [original["example"]]
        if self.openapi_30:
            if original.get("nullable") is True:
                kind = out.get("type")
                if isinstance(kind, str):
                    out["type"] = [kind, "null"]
                if isinstance(out.get("enum"), list) and None not in out["enum"]:
                    out["enum"] = [*out["enum"], None]
            for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
                # 3.0's boolean form: "minimum, but excluded" is 2020-12's number form.
                if isinstance(out.get(bound), bool) and out.pop(bound) and limit in out:
                    out[bound] = out.pop(limit)
        return out

    # Operations ---------------------------------------------------------------------------

    def operation(
        self, path: str, method: str, item: Mapping[str, Any], operation: Mapping[str, Any]
    ) -> tuple[dict[str, Any], RestCall]:
        verb = method.upper()
        if verb not in REST_METHODS:
            raise _Skip(f"REST tools call {', '.join(REST_METHODS)}, not {verb}.")
        self.budget = MAX_SCHEMA_NODES
        if len(path) > 2000 or not path.startswith("/"):
            raise _Skip("its path is not a template like /pets/{id} (at most 2000 characters).")
        if any(part in (".", "..") for part in path.split("/")):
            raise _Skip("its path has a . or .. segment.")
        placeholders = _PLACEHOLDER.findall(path)
        if path.count("{") != len(placeholders) or path.count("}") != len(placeholders):
            raise _Skip("its path has an unmatched { or }.")
        if isinstance(operation.get("servers"), list) or isinstance(item.get("servers"), list):
            self.notes.append(
                "it names servers of its own; it is called at the upstream's base URL."
            )
        properties: dict[str, Any] = {}
        required: list[str] = []
        arguments: list[RestArgument] = []
        for parameter in self.parameters(item, operation):
            self.parameter(parameter, placeholders, properties, required, arguments)
        filled = {arg.field or arg.name for arg in arguments if arg.in_ == "path"}
        for placeholder in placeholders:
            if placeholder not in filled:
                raise _Skip(f"its path's {{{placeholder}}} has no path parameter.")
        body = operation.get("requestBody")
        if body is not None:
            self.body(self.resolve(body), properties, required, arguments)
        input_schema: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            input_schema["required"] = list(dict.fromkeys(required))
        try:
            jsonschema.Draft202012Validator.check_schema(input_schema)
        except jsonschema.exceptions.SchemaError as exc:
            self.notes.append(
                f"its argument schema is not valid JSON Schema ({exc.message[:200]}); the "
                "gateway will not check calls against it."
            )
        definition: dict[str, Any] = {}
        summary, about = _text(operation.get("summary")), _text(operation.get("description"))
        if summary:
            definition["title"] = summary[:200]
        description = summary
        if about and not about.startswith(summary):
            description = f"{summary}\n\n{about}" if summary else about
        elif about:
            description = about
        if operation.get("deprecated") is True:
            description = f"(Deprecated.) {description}".strip()
        definition["description"] = (description or f"{verb} {path}")[:MAX_DESCRIPTION]
        definition["inputSchema"] = input_schema
        annotations: dict[str, Any] = {"readOnlyHint": verb == "GET"}
        if verb == "DELETE":
            annotations["destructiveHint"] = True
        if verb in ("PUT", "DELETE"):
            annotations["idempotentHint"] = True
        definition["annotations"] = annotations
        call = RestCall(method=verb, path=path, arguments=arguments)  # type: ignore[arg-type]
        return definition, call

    def parameters(
        self, item: Mapping[str, Any], operation: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """The path item's parameters, overridden by the operation's (by name and place)."""
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for source in (item.get("parameters"), operation.get("parameters")):
            if not isinstance(source, list):
                continue
            for raw in source:
                parameter = self.resolve(raw)
                name, where = (
                    (parameter.get("name"), parameter.get("in"))
                    if isinstance(parameter, dict)
                    else (None, None)
                )
                if not isinstance(name, str) or not name or not isinstance(where, str):
                    raise _Skip("a parameter has no name or no 'in'.")
                merged[(name, where)] = parameter
        return list(merged.values())

    def parameter(
        self,
        parameter: Mapping[str, Any],
        placeholders: list[str],
        properties: dict[str, Any],
        required: list[str],
        arguments: list[RestArgument],
    ) -> None:
        name, where = parameter["name"], parameter["in"]
        needed = where == "path" or parameter.get("required") is True
        if where == "header" and name.lower() in _IGNORED_HEADERS:
            return
        if self.credential.covers(where, name):
            self.notes.append(
                f"left out the {where} parameter {name!r}: the gateway sends the upstream's "
                "credential there."
            )
            return
        if where == "cookie" or where not in REST_LOCATIONS:
            if needed:
                raise _Skip(f"it needs the {where} parameter {name!r}, which tools cannot send.")
            self.notes.append(f"left out the {where} parameter {name!r}.")
            return
        if where == "header" and (not HEADER_NAME.match(name) or name.lower() in FORBIDDEN_HEADERS):
            if needed:
                raise _Skip(f"it needs the header {name!r}, which a tool argument cannot set.")
            self.notes.append(f"left out the header parameter {name!r}.")
            return
        if where == "path" and name not in placeholders:
            self.notes.append(f"the path parameter {name!r} is not in the path; left out.")
            return
        schema = parameter.get("schema")
        if schema is None and isinstance(parameter.get("content"), dict) and parameter["content"]:
            media = next(iter(parameter["content"].values()))
            schema = media.get("schema") if isinstance(media, dict) else None
        schema = self.schema(schema if schema is not None else {})
        if isinstance(schema, dict):
            schema = dict(schema)
            description = _text(parameter.get("description"))
            if description and "description" not in schema:
                schema["description"] = description[:MAX_DESCRIPTION]
            if parameter.get("deprecated") is True:
                schema["deprecated"] = True
        if where == "query" and (
            parameter.get("style") in ("deepObject", "pipeDelimited", "spaceDelimited")
            or parameter.get("explode") is False
        ):
            self.notes.append(
                f"the query parameter {name!r} is sent as repeated name=value pairs, not in "
                f"its declared style."
            )
        argument = _argument_name(name, where, properties)
        properties[argument] = schema
        if needed:
            required.append(argument)
        arguments.append(
            RestArgument(name=argument, in_=where, field="" if argument == name else name)
        )

    def body(
        self,
        body: Any,
        properties: dict[str, Any],
        required: list[str],
        arguments: list[RestArgument],
    ) -> None:
        if not isinstance(body, dict):
            raise _Skip("its requestBody is not an object.")
        content = body.get("content")
        if not isinstance(content, dict) or not content:
            raise _Skip("its request body names no media type.")
        media = _json_media(content)
        if media is None:
            kinds = ", ".join(sorted(content))[:200]
            raise _Skip(f"its request body is {kinds}, not JSON; tools send JSON bodies.")
        schema = self.schema(media.get("schema", {}) if isinstance(media, dict) else {})
        needed = body.get("required") is True
        spread = _object_properties(schema)
        if spread is None:
            argument = _argument_name("body", "request", properties)
            if isinstance(schema, dict):
                schema = dict(schema)
                description = _text(body.get("description"))
                if description and "description" not in schema:
                    schema["description"] = description[:MAX_DESCRIPTION]
            properties[argument] = schema
            if needed:
                required.append(argument)
            arguments.append(RestArgument(name=argument, in_="whole_body"))
            return
        fields, wanted = spread
        for name, sub in fields.items():
            if isinstance(sub, dict) and sub.get("readOnly") is True:
                continue  # the service's to set: only ever in answers
            argument = _argument_name(name, "body", properties)
            properties[argument] = sub
            if needed and name in wanted:
                required.append(argument)
            arguments.append(
                RestArgument(name=argument, in_="body", field="" if argument == name else name)
            )


def _object_properties(schema: Any) -> tuple[dict[str, Any], set[str]] | None:
    """The properties and required names of an object schema (``allOf`` of objects
    merged), or ``None`` when ``schema`` is not an object with properties."""
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    if kind not in (None, "object") and not (isinstance(kind, list) and "object" in kind):
        return None
    properties: dict[str, Any] = {}
    wanted: set[str] = set()
    parts = schema.get("allOf")
    if isinstance(parts, list):
        for part in parts:
            merged = _object_properties(part)
            if merged is None:
                return None
            properties.update(merged[0])
            wanted |= merged[1]
    elif any(key in schema for key in ("anyOf", "oneOf", "not", "if")):
        return None
    own = schema.get("properties")
    if isinstance(own, dict):
        properties.update(own)
    names = schema.get("required")
    if isinstance(names, list):
        wanted |= {name for name in names if isinstance(name, str)}
    return (properties, wanted) if properties else None


def _argument_name(name: str, place: str, taken: Collection[str]) -> str:
    """An argument name models accept, not yet ``taken``: ``name`` itself when it can be;
    else prefixed with where it goes (``body_id``), else numbered."""
    base = name if ARGUMENT_NAME.match(name) else re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    base = base.strip("_")[:MAX_TOOL_NAME] or place
    if base in taken:
        base = f"{place}_{base}"[:MAX_TOOL_NAME]
    return _unique_name(base, taken)


# Checking ------------------------------------------------------------------------------------


def rest_tool_problems(
    definition: Mapping[str, Any], call: RestCall, *, credential: CredentialPlace | None = None
) -> list[str]:
    """What is wrong with a REST tool: its path template against its path arguments,
    its arguments against the properties of its input schema, header names, arguments
    where the upstream's ``credential`` goes, and the select path."""
    problems: list[str] = []
    path = call.path
    placeholders = _PLACEHOLDER.findall(path)
    if not path.startswith("/"):
        problems.append("The path starts with / (it is relative to the upstream's base URL).")
    if path.count("{") != len(placeholders) or path.count("}") != len(placeholders):
        problems.append("The path has an unmatched { or }.")
    if any(char in path for char in "?# \t\r\n"):
        problems.append(
            "The path is only the path: no spaces, and no ?query or #fragment (query "
            "parameters are arguments)."
        )
    if any(part in (".", "..") for part in path.split("/")):
        problems.append("The path may not have . or .. segments.")
    names = [argument.name for argument in call.arguments]
    for name in sorted({name for name in names if names.count(name) > 1}):
        problems.append(f"The argument {name} is listed twice.")
    in_path = {arg.field or arg.name for arg in call.arguments if arg.in_ == "path"}
    for placeholder in dict.fromkeys(placeholders):
        if placeholder not in in_path:
            problems.append(
                f"The path's {{{placeholder}}} has no argument: add one going to the path "
                f"as {placeholder}."
            )
    for name in sorted(in_path - set(placeholders)):
        problems.append(f"The path argument {name} has no {{{name}}} in the path.")
    wholes = [arg.name for arg in call.arguments if arg.in_ == "whole_body"]
    if len(wholes) > 1:
        problems.append("Only one argument can be the whole body.")
    if wholes and any(arg.in_ == "body" for arg in call.arguments):
        problems.append(
            f"{wholes[0]} is the whole body, so no other argument can be a field of the body."
        )
    if wholes and call.method in ("GET", "DELETE"):
        problems.append(f"A {call.method} request takes no body; {wholes[0]} cannot go there.")
    credential = credential or CredentialPlace()
    for arg in call.arguments:
        where = arg.field or arg.name
        if arg.in_ == "header" and (
            not HEADER_NAME.match(where)
            or where.lower() in FORBIDDEN_HEADERS
            or credential.covers("header", where)
        ):
            problems.append(f"{where} cannot be a header a tool argument sets.")
        elif arg.in_ == "query" and credential.covers("query", where):
            problems.append(
                f"{where} is the query parameter the upstream's credential goes in; a tool "
                "argument cannot set it."
            )
    properties = input_properties(definition)
    for name in dict.fromkeys(names):
        if name not in properties:
            problems.append(f"The argument {name} is not a property of the input schema.")
    for name in properties:
        if name not in names:
            problems.append(f"The input property {name} goes nowhere: give it an argument.")
    if call.select and not SELECT_PATH.match(call.select):
        problems.append(
            "The select path is field names joined by dots, e.g. data.items or items.0.name."
        )
    return problems


def input_properties(definition: Mapping[str, Any]) -> dict[str, Any]:
    """The properties of a definition's input schema (empty when it has none)."""
    schema = definition.get("inputSchema")
    properties = schema.get("properties") if isinstance(schema, dict) else None
    return dict(properties) if isinstance(properties, dict) else {}
