"""Wire schema shared by the planes; the data plane owns it.

The control plane (``gatewaysync``) builds these documents and the gateway validates
them on receipt with msgspec, which both decodes and type-checks in one pass (a
1,000,000-key revision decodes in a fraction of the time a dict walk would take).

Versioning: ``SCHEMA_VERSION`` bumps on any incompatible change; a gateway rejects a
document whose ``schema`` it does not know.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

SCHEMA_VERSION: Literal[1] = 1

ProductKind = Literal["model", "mcp", "agent"]
PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
NonNegativeInt = Annotated[int, msgspec.Meta(ge=0)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class Upstream(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the gateway sends traffic: one vendor endpoint and its pool of credentials.

    ``secret`` and every entry of ``secrets`` are sealed (see ``gateway.secrets``); the
    pool is ``secret`` followed by ``secrets``, and the gateway rotates through it when a
    credential is rate-limited or refused. ``options`` holds vendor settings
    (``api_version`` for Azure OpenAI, ``region`` for Bedrock). ``name`` is what the
    ``x-portico-target`` response header and pinning (``x-portico-upstream``) use.
    """

    vendor: Name
    base_url: Annotated[str, msgspec.Meta(pattern=r"^https?://")]
    secret: str | None = None
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 120.0
    name: str = ""
    secrets: list[str] = []
    options: dict[str, str] = {}


class Target(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A further target of a model route: an upstream, the model's name there, a weight."""

    upstream: Name
    upstream_model: Name
    weight: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 1


RouteStrategy = Literal["weighted", "least_busy", "lowest_latency"]


class ModelRoute(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A public model name and where it goes.

    The first target is ``upstream``/``upstream_model`` with ``weight``; ``targets``
    adds more that share the load by ``strategy``. When every target has failed,
    ``fallbacks`` (public model names of the same product) are tried in order; a
    prompt too long for the model skips straight to them. ``kind`` says which API the
    model serves. ``first_token_seconds`` bounds the wait for a stream's first byte.
    """

    upstream: Name
    upstream_model: Name
    weight: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 1
    targets: list[Target] = []
    strategy: RouteStrategy = "weighted"
    fallbacks: list[Name] = []
    kind: Literal["chat", "embeddings"] = "chat"
    context_window: PositiveInt | None = None
    first_token_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] | None = None
    # "consumer": each consumer keeps to the target the weights give it (rendezvous
    # hashing), so a new version can take a share of consumers rather than of calls.
    affinity: Literal["none", "consumer"] = "none"


class ResponseCache(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A product's exact-match response cache: identical requests (same API, same body)
    within ``ttl_seconds`` are answered from the cache. Entries belong to one consumer
    unless ``shared``, when every consumer of the product may be served them."""

    ttl_seconds: Annotated[int, msgspec.Meta(ge=1, le=30 * 86400)]
    shared: bool = False


# Upstream vendors that are not model vendors: an MCP server (``base_url`` is its MCP
# endpoint), a plain REST service behind REST-to-MCP tools, an A2A agent (``base_url``
# is the URL its card was registered from) and a plain HTTP agent wrapped as A2A.
MCP_VENDOR = "mcp"
REST_VENDOR = "rest"
A2A_VENDOR = "a2a"
REST_AGENT_VENDOR = "rest-agent"
AGENT_VENDORS = frozenset({A2A_VENDOR, REST_AGENT_VENDOR})
NON_MODEL_VENDORS = frozenset({MCP_VENDOR, REST_VENDOR, *AGENT_VENDORS})
# How an MCP upstream's own credential travels (``Upstream.options["auth"]``): a bearer
# token, a named header (``options["header"]``), or an OAuth client-credentials grant
# against ``options["token_url"]`` with ``options["client_id"]`` (the secret is the
# client secret). No option: bearer when there is a secret.
MCP_AUTH_STYLES = ("bearer", "header", "oauth2")
# A REST service may also take its key in a query parameter (``options["param"]``).
REST_AUTH_STYLES = (*MCP_AUTH_STYLES, "query")
# An agent (either vendor) may also take HTTP basic auth: ``options["username"]`` with
# the secret as the password.
AGENT_AUTH_STYLES = (*MCP_AUTH_STYLES, "basic")


class RestArgument(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where one tool argument goes in the REST request: ``in_`` is ``path`` (replaces
    ``{field}`` in the path template, percent-encoded), ``query``, ``header``, ``body``
    (a top-level field of the JSON body) or ``whole_body`` (the argument is the JSON
    body itself, for a body that is not an object); ``field`` is its name there
    (default: the argument's). An argument the call leaves out is left out of the
    request; a list in ``query`` repeats the parameter."""

    name: Name
    in_: Literal["path", "query", "header", "body", "whole_body"] = msgspec.field(
        name="in", default="query"
    )
    field: str = ""


class RestCall(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How a REST-to-MCP tool calls its service: ``path`` is a template relative to the
    upstream's base URL (``/pets/{id}``); ``select`` is a dotted path into the JSON answer
    (``data.items``, ``items.0.name``) that becomes the tool's result (empty: the whole
    answer).

    The result: a 2xx JSON answer becomes a text content block holding the (selected)
    JSON, and ``structuredContent`` too when it is an object; a non-JSON answer is
    text; any other status is a result with ``isError`` true giving the status and the
    start of the body. Redirects are not followed.
    """

    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    path: Annotated[str, msgspec.Meta(max_length=2000)]
    arguments: list[RestArgument] = []
    select: str = ""


class McpTool(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A tool as an admin approved it (pinned): ``definition`` is the MCP ``Tool`` object
    served to clients (``name``, ``description``, ``inputSchema``, ``annotations``,
    ``outputSchema``...), whatever the server says now. Calls are checked against its
    ``inputSchema``. ``rest`` is set for REST-to-MCP tools, which the gateway calls itself.
    """

    name: Name
    definition: dict[str, Any]
    rest: RestCall | None = None


class McpServer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An MCP product: the upstream that serves it and what it offers, as approved.

    ``upstream`` names an upstream of vendor ``mcp`` (hosted server: ``transport`` says
    how to reach it) or ``rest`` (REST-to-MCP: every tool has ``rest``). ``prompts``,
    ``resources`` and ``resource_templates`` are the MCP objects as discovered.
    """

    upstream: Name
    transport: Literal["streamable_http", "sse"] = "streamable_http"
    tools: list[McpTool] = []
    prompts: list[dict[str, Any]] = []
    resources: list[dict[str, Any]] = []
    resource_templates: list[dict[str, Any]] = []
    instructions: str = ""


class RestAgentCall(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the gateway calls a plain HTTP agent for one A2A message.

    ``request`` is the JSON body sent, a template: any string in it that is exactly a
    placeholder is replaced by the value (``"{{data}}"`` becomes the object), and
    placeholders inside longer strings by their text. Placeholders: ``{{text}}`` (the
    message's text parts, joined by newlines), ``{{data}}`` (its first data part, or
    null), ``{{message_id}}``, ``{{context_id}}``, ``{{task_id}}`` (as the agent sees
    them; empty when absent). ``method`` ``GET`` sends no body and puts ``request``'s
    top-level fields in the query instead. ``reply`` is a dotted path into the JSON
    answer (``choices.0.message.content``) to the reply: a string becomes a text part,
    anything else a data part; empty: the whole answer. A non-JSON answer is text.
    ``reply_as`` ``message`` answers with an agent Message; ``task`` with a completed
    Task holding the reply as its artifact, which ``GetTask`` returns later.
    """

    method: Literal["POST", "PUT", "PATCH", "GET"] = "POST"
    path: Annotated[str, msgspec.Meta(max_length=2000)] = ""
    request: Any = None
    reply: str = ""
    reply_as: Literal["message", "task"] = "message"


class AgentTarget(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One version of an agent product: where it runs and its share of the traffic.

    ``upstream`` names an upstream of vendor ``a2a`` or ``rest-agent`` (its credential
    and auth style, its timeout). For ``a2a``, ``url`` is the JSON-RPC interface the
    agent's card names and ``protocol_version`` what it speaks there (``1.0`` or
    ``0.3``); the gateway translates. For ``rest-agent``, ``rest`` says how to call it
    (``url`` is unused: the call goes to the upstream's base URL plus ``rest.path``).
    ``name`` is the version's label (``v2``), shown in ``x-portico-target`` and
    accepted, with the upstream's name, by ``x-portico-upstream`` pinning.
    """

    upstream: Name
    weight: Annotated[int, msgspec.Meta(ge=0, le=1000)] = 1
    name: str = ""
    url: str = ""
    protocol_version: Literal["1.0", "0.3"] = "1.0"
    streaming: bool = False
    rest: RestAgentCall | None = None


class AgentProduct(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An agent product: the card it is served with and the targets behind it.

    ``card`` is the v1.0 AgentCard the gateway serves at
    ``/agents/<product>/.well-known/agent-card.json`` (``name``, ``description``,
    ``version``, ``skills``, ``defaultInputModes``...: the first target's card as
    approved, or for a REST agent one made from the product). The gateway replaces its
    interfaces, security and signatures with its own. ``affinity`` ``consumer`` keeps
    each consumer on one target (rendezvous hashing by weight, as for model routes).
    ``requests_per_minute`` is the product's global limit, all consumers together.
    ``health_check_seconds`` is how often each gateway process probes each target (its
    card URL, or for a REST agent its base URL) to eject and bring back targets; 0:
    passive ejection only (failed calls).
    """

    card: dict[str, Any]
    targets: list[AgentTarget]
    affinity: Literal["none", "consumer"] = "none"
    requests_per_minute: PositiveInt | None = None
    health_check_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0


class Product(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A published product. ``models`` maps public model names to routes (kind "model");
    ``mcp`` is set for kind "mcp", ``agent`` for kind "agent"."""

    id: PositiveInt
    slug: Name
    kind: ProductKind
    models: dict[str, ModelRoute] = {}
    cache: ResponseCache | None = None
    mcp: McpServer | None = None
    agent: AgentProduct | None = None


class Plan(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """Limits of a subscription; ``None`` means unlimited. (``gc=False``: see Consumer.)"""

    id: PositiveInt
    name: Name
    requests_per_minute: PositiveInt | None = None
    tokens_per_minute: PositiveInt | None = None
    tokens_per_day: PositiveInt | None = None
    token_quota: PositiveInt | None = None  # total tokens over the subscription's life


class Subscription(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """An approved subscription (only approved ones are compiled in). ``gc=False``: see
    Consumer."""

    id: PositiveInt
    plan: Plan
    # MCP products: the only tools this subscription may list and call (``None``: all).
    tools: list[str] | None = None
    # An admin's limit for this one consumer's subscription, on top of the plan's.
    requests_per_minute: PositiveInt | None = None


class Consumer(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """An active consumer and its approved subscriptions, keyed by product slug.

    ``gc=False`` here and on Subscription and Plan: a large revision holds hundreds of
    thousands of each, decoded and never mutated, so they cannot form cycles; tracked,
    every full collection would walk them all (tens of milliseconds at 100,000
    consumers) while requests wait. Their ``subscriptions`` dicts then hold only
    untracked objects, and CPython leaves such dicts untracked too.
    """

    id: PositiveInt
    subscriptions: dict[str, Subscription] = {}


class Credential(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """A usable key, known only by the SHA-256 of the full key (the dict key).

    ``gc=False``: a revision may hold a million of these, and scalars cannot form
    cycles; untracked, they cut a full collection from ~19 ms to ~3 ms at that size,
    a pause every request in the process would otherwise wait out.
    """

    id: PositiveInt
    consumer: PositiveInt
    expires_at: float | None = None  # unix seconds


class OAuth(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The portal as the OAuth 2.1 authorization server of the MCP endpoints.

    ``issuer`` is the authorization server (published in the protected resource
    metadata, RFC 9728); ``resource_base`` the gateway's public URL, to which a token's
    audience is ``<resource_base>/mcp/<product>`` (or ``/mcp``); access tokens are
    verified with a key derived from the shared gateway secret
    (``gateway.access_tokens``). ``revoked_grants`` lists grants revoked while access
    tokens issued under them may still be unexpired.
    """

    issuer: Annotated[str, msgspec.Meta(pattern=r"^https?://")]
    resource_base: Annotated[str, msgspec.Meta(pattern=r"^https?://")]
    revoked_grants: list[int] = []


class Revision(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything the data plane needs to decide a request."""

    schema: Literal[1]
    revision: PositiveInt
    created_at: str
    upstreams: dict[str, Upstream] = {}
    products: dict[str, Product] = {}
    oauth: OAuth | None = None
    # These two stay last: large revisions are split and written around them
    # (``gateway.revision.encode_incrementally``).
    consumers: dict[str, Consumer] = {}
    credentials: dict[str, Credential] = {}


class Delta(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Credential changes from revision ``base`` to ``revision``; nothing else differs."""

    schema: Literal[1]
    base: PositiveInt
    revision: PositiveInt
    created_at: str
    credentials_upsert: dict[str, Credential] = {}
    credentials_remove: list[str] = []


class UsageEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """One gateway call, reported to the control plane.

    ``gc=False``: thousands wait in the buffer each second and hold only scalars, so
    tracking them would only make the collector run more often on the hot path.

    ``id`` is unique per event and is the idempotency key of ingestion: an event
    delivered twice is counted once.
    """

    id: Annotated[str, msgspec.Meta(min_length=8, max_length=64)]
    request_id: Annotated[str, msgspec.Meta(max_length=64)]
    ts: float  # unix seconds when the request arrived
    status: int
    latency_ms: float
    gateway: str = ""
    route: str = ""
    consumer: int | None = None
    credential: int | None = None
    product: int | None = None
    model: str | None = None
    prompt_tokens: NonNegativeInt | None = None
    completion_tokens: NonNegativeInt | None = None
    stream: bool = False
    target: Annotated[str, msgspec.Meta(max_length=300)] = ""  # "<upstream>/<model>"
    cached: bool = False  # answered from the response cache
    estimated: bool = False  # token counts are the gateway's estimate, not the vendor's


class UsageBatch(msgspec.Struct, frozen=True):
    events: list[UsageEvent]


class Heartbeat(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a gateway process tells the control plane every few seconds."""

    instance_id: Name
    admin_url: Annotated[str, msgspec.Meta(pattern=r"^https?://")]
    applied_revision: int | None = None
    version: str = ""
    pid: int | None = None
    started_at: float | None = None
