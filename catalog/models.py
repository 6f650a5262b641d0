"""Products, their upstreams and routes, and the plans developers subscribe under."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from catalog.openapi import (
    HEADER_NAME,
    CredentialPlace,
    rest_call_from_json,
    rest_tool_problems,
)
from catalog.rest_agents import rest_agent_call_from_json
from gateway.egress import EgressError, EgressPolicy, HostNotFound
from gateway.schema import (
    A2A_VENDOR,
    AGENT_AUTH_STYLES,
    AGENT_VENDORS,
    MCP_AUTH_STYLES,
    MCP_VENDOR,
    NON_MODEL_VENDORS,
    REST_AGENT_VENDOR,
    REST_AUTH_STYLES,
    REST_VENDOR,
)

_HTTP_URL = r"^https?://[^\s/$.?#][^\s]*$"
_http_url = RegexValidator(_HTTP_URL, "Enter an http:// or https:// URL.")

# The gateway's limits on these values (gateway/schema.py): a value outside them would
# make a revision the gateway refuses, so the admin refuses it first.
MAX_WEIGHT = 1000
MAX_SECONDS = 3600.0

MAX_TAGS = 12
MAX_TAG_LENGTH = 32


def validate_tags(value: object) -> None:
    """Tags are a short list of short, non-empty strings (they are shown as badges)."""
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise ValidationError("Tags must be a list of strings.")
    if len(value) > MAX_TAGS:
        raise ValidationError(f"Use at most {MAX_TAGS} tags.")
    for tag in value:
        if not tag.strip() or len(tag) > MAX_TAG_LENGTH or tag != tag.strip():
            raise ValidationError(
                f"Each tag is 1 to {MAX_TAG_LENGTH} characters without surrounding spaces "
                f"({tag!r} is not)."
            )


# Vendor options an upstream may set, by vendor (every other vendor takes none). An MCP
# server's say how the gateway authenticates to it with the upstream's secret
# (gateway.schema.Upstream): ``auth`` is bearer, header (``header`` names it) or oauth2
# (a client-credentials grant at ``token_url`` as ``client_id``, optional ``scope``);
# without one, the gateway sends a secret as a bearer token. A REST service's may also
# be query: the secret in the query parameter ``param`` (default api_key). An agent's
# (either vendor) may also be basic: HTTP basic auth as ``username``, the secret the password.
_AUTH_OPTIONS = frozenset({"auth", "header", "token_url", "client_id", "scope"})
VENDOR_OPTIONS: dict[str, frozenset[str]] = {
    "azure_openai": frozenset({"api_version"}),
    "bedrock": frozenset({"region"}),
    MCP_VENDOR: _AUTH_OPTIONS,
    REST_VENDOR: _AUTH_OPTIONS | {"param"},
    A2A_VENDOR: _AUTH_OPTIONS | {"username"},
    REST_AGENT_VENDOR: _AUTH_OPTIONS | {"username"},
}
# The auth styles each vendor with a credential of its own takes (``options["auth"]``).
AUTH_STYLES: dict[str, tuple[str, ...]] = {
    MCP_VENDOR: MCP_AUTH_STYLES,
    REST_VENDOR: REST_AUTH_STYLES,
    A2A_VENDOR: AGENT_AUTH_STYLES,
    REST_AGENT_VENDOR: AGENT_AUTH_STYLES,
}
OPTION_KEYS = (
    "api_version",
    "region",
    "auth",
    "header",
    "token_url",
    "client_id",
    "scope",
    "param",
    "username",
)
# Headers the MCP transport or HTTP itself owns: a credential header must not replace them.
RESERVED_HEADERS = frozenset(
    {
        "accept",
        "connection",
        "content-length",
        "content-type",
        "host",
        "keep-alive",
        "last-event-id",
        "mcp-method",
        "mcp-name",
        "mcp-protocol-version",
        "mcp-session-id",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(?:-[a-z]+)?$")
_AWS_REGION = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$")
# Bedrock's runtime endpoints name their region: bedrock-runtime[-fips].<region>.amazonaws.com,
# also behind a VPC endpoint (vpce-….bedrock-runtime.<region>.vpce.amazonaws.com). The
# gateway reads the region out of the host the same way (gateway/providers/bedrock.py).
_BEDROCK_HOST = re.compile(r"(?:^|\.)bedrock-runtime(?:-fips)?\.([a-z]{2}(?:-[a-z]+)+-\d+)\.")
_AWS_ACCESS_KEY_ID = re.compile(r"^[A-Z0-9]{16,128}$")
_QUERY_PARAM = re.compile(r"^[A-Za-z0-9_.~-]{1,100}$")


@lru_cache(maxsize=8)
def _parsed_policy(entries: tuple[str, ...]) -> EgressPolicy:
    return EgressPolicy.parse(entries)


def egress_policy() -> EgressPolicy:
    """The control plane's egress policy: public addresses, and ``PORTICO_EGRESS_ALLOW``."""
    return _parsed_policy(tuple(settings.PORTICO_EGRESS_ALLOW))


def egress_problem(url: str) -> str | None:
    """Why an admin may not save ``url`` (None: it may be saved).

    Its host is resolved now, and every address must pass the egress policy. A name
    that does not resolve (yet, or from here) is accepted: nothing can be said about it,
    and every connection checks again, with the address it is about to use.
    """
    if not re.match(_HTTP_URL, url):
        return None  # the field's own validator says what is wrong
    try:
        egress_policy().check_url(url)
    except HostNotFound:
        return None
    except EgressError as exc:
        return str(exc)
    return None


def validate_options(value: object) -> None:
    """Vendor options are a small dict of known keys to non-empty strings."""
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValidationError("Vendor options must map names to text.")
    unknown = sorted(set(value) - set(OPTION_KEYS))
    if unknown:
        raise ValidationError(
            f"Unknown vendor option {unknown[0]!r}: the options are {', '.join(OPTION_KEYS)}."
        )
    for key, text in value.items():
        if not text.strip() or len(text) > 200 or text != text.strip():
            raise ValidationError(
                f"The {key} option must be 1 to 200 characters without surrounding spaces."
            )


def bedrock_region_of(base_url: str) -> str | None:
    """The AWS region a Bedrock runtime URL names in its host, if it names one."""
    match = _BEDROCK_HOST.search((urlsplit(base_url).hostname or "").lower())
    return match.group(1) if match else None


def validate_vendor_secret(vendor: str, secret: str) -> None:
    """Check the shape of a credential for ``vendor``. Messages never quote the secret."""
    if vendor != Upstream.Vendor.BEDROCK:
        return
    parts = secret.split(":", 2)
    if (
        len(parts) < 2
        or not all(parts)
        or not _AWS_ACCESS_KEY_ID.match(parts[0])
        or any(char.isspace() for char in secret)
    ):
        raise ValidationError(
            "An AWS Bedrock secret is '<access key id>:<secret access key>', or "
            "'<access key id>:<secret access key>:<session token>' for temporary "
            "credentials (the access key id is upper-case letters and digits, like "
            "AKIA…).",
            code="aws_credential",
        )


class Upstream(models.Model):
    """A backend the gateway calls. Its secrets are write-only and encrypted at rest.

    The secret here is the first credential of the upstream's pool;
    :class:`UpstreamCredential` rows add more, which the gateway rotates through when
    one is rate-limited or refused.
    """

    class Vendor(models.TextChoices):
        # The model vendors' values are the gateway's (gateway.providers.VENDORS).
        OPENAI = "openai", "OpenAI"
        AZURE_OPENAI = "azure_openai", "Azure OpenAI"
        ANTHROPIC = "anthropic", "Anthropic"
        GEMINI = "gemini", "Google Gemini"
        BEDROCK = "bedrock", "AWS Bedrock"
        MISTRAL = "mistral", "Mistral AI"
        DEEPSEEK = "deepseek", "DeepSeek"
        DASHSCOPE = "dashscope", "Alibaba DashScope (Qwen)"
        OLLAMA = "ollama", "Ollama"
        VLLM = "vllm", "vLLM"
        OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible server"
        # Not model vendors: a hosted MCP server (base_url is its MCP endpoint), and a
        # plain REST service whose operations the gateway serves as MCP tools.
        MCP = MCP_VENDOR, "MCP server"
        REST = REST_VENDOR, "REST service (REST-to-MCP tools)"
        # Agents: an A2A agent (base_url is where its card is fetched from, the agent's
        # base URL or the card's own URL) and a plain HTTP agent the gateway wraps as A2A.
        A2A = A2A_VENDOR, "A2A agent"
        REST_AGENT = REST_AGENT_VENDOR, "REST agent (wrapped as A2A)"

    name = models.CharField(
        max_length=120,
        unique=True,
        help_text="Also what the x-portico-target response header and x-portico-upstream "
        "pinning use.",
    )
    vendor = models.CharField(max_length=32, choices=Vendor.choices, default=Vendor.OPENAI)
    base_url = models.CharField(
        max_length=500,
        validators=[_http_url],
        help_text="The API base, e.g. https://api.openai.com/v1; for an MCP server its "
        "endpoint, e.g. https://mcp.example.com/mcp (the SSE URL for the legacy transport); "
        "for a REST service the base its tools' paths follow, e.g. https://api.example.com/v2; "
        "for an A2A agent its base URL (the card is at /.well-known/agent-card.json under it) or "
        "the card's URL (ending in .json); for a REST agent the base its call's path follows. "
        "It must be a public address unless PORTICO_EGRESS_ALLOW allows it.",
    )
    # Envelope-encrypted (catalog/crypto.py); never rendered back to anyone.
    secret_ciphertext = models.TextField(blank=True, default="", editable=False)
    timeout_seconds = models.FloatField(
        default=120.0, validators=[MinValueValidator(0.1), MaxValueValidator(MAX_SECONDS)]
    )
    options = models.JSONField(
        "vendor options",
        default=dict,
        blank=True,
        validators=[validate_options],
        help_text="api_version for Azure OpenAI; region for AWS Bedrock; auth (and header, "
        "token_url, client_id, scope) for an MCP server; the same, or auth=query with param, "
        "for a REST service; the same, or auth=basic with username, for an agent.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def has_secret(self) -> bool:
        return bool(self.secret_ciphertext)

    def clean(self) -> None:
        errors: dict[str, list[str]] = {}
        # Checked where admins set it; the connections check again (gateway/egress.py).
        problem = egress_problem(self.base_url)
        if problem:
            errors["base_url"] = [problem]
        try:
            validate_options(self.options)
        except ValidationError:
            pass  # the field's own validator reports it
        else:
            option_errors = self.option_errors()
            token_url = self.options.get("token_url")
            if token_url and (problem := egress_problem(token_url)):
                option_errors.append(f"The token_url: {problem}")
            if option_errors:
                errors["options"] = option_errors
        if errors:
            raise ValidationError(errors)

    def option_errors(self) -> list[str]:
        """What is wrong with the vendor options for this vendor and base URL."""
        options = self.options
        vendor = dict(self.Vendor.choices).get(self.vendor, self.vendor)
        allowed = VENDOR_OPTIONS.get(self.vendor, frozenset())
        errors = [
            f"{vendor} takes no {key} option; remove it."
            if not allowed
            else f"{vendor} takes only the {', '.join(sorted(allowed))} option, not {key}."
            for key in sorted(set(options) - allowed)
        ]
        version = options.get("api_version")
        if "api_version" in allowed and version and not _API_VERSION.match(version):
            errors.append(
                "The api_version is a date like 2024-10-21 (or 2025-04-01-preview). Leave it "
                "empty to use Azure's v1 API."
            )
        if self.vendor == self.Vendor.BEDROCK:
            region, in_host = options.get("region"), bedrock_region_of(self.base_url)
            if region and not _AWS_REGION.match(region):
                errors.append(f"{region!r} is not an AWS region name like us-east-1.")
            elif region and in_host and region != in_host:
                errors.append(
                    f"The base URL is in {in_host} but the region says {region}; make them "
                    "agree or leave the region empty."
                )
            elif not region and not in_host:
                errors.append(
                    "AWS Bedrock needs a region, e.g. us-east-1: set it here, or use a base "
                    "URL that names it (https://bedrock-runtime.us-east-1.amazonaws.com)."
                )
        if self.vendor in AUTH_STYLES:
            errors.extend(auth_option_errors(options, vendor=self.vendor))
        return errors


def auth_option_errors(options: dict[str, str], *, vendor: str) -> list[str]:
    """What is wrong with the auth options of an upstream of ``vendor``, one of
    ``AUTH_STYLES`` (an MCP server, a REST service, an agent; see ``VENDOR_OPTIONS``).
    Options the vendor does not take at all are ``Upstream.option_errors``' to report."""
    auth = options.get("auth", "")
    styles = AUTH_STYLES[vendor]
    if auth and auth not in styles:
        return [
            f"The auth option is one of {', '.join(styles)} (empty: bearer when the "
            f"upstream has a secret), not {auth!r}."
        ]
    errors: list[str] = []
    username = options.get("username") if "basic" in styles else None
    if auth == "basic" and not username:
        errors.append("HTTP basic auth needs the username option (the secret is the password).")
    elif username and auth != "basic":
        errors.append("The username option is only for auth=basic; remove it.")
    elif username and ":" in username:
        errors.append("A basic auth username cannot contain a colon.")
    param = options.get("param") if "query" in styles else None
    if param and auth != "query":
        errors.append("The param option is only for auth=query; remove it.")
    elif param and not _QUERY_PARAM.match(param):
        errors.append(f"{param!r} is not a query parameter name like api_key.")
    header = options.get("header")
    if auth == "header" and not header:
        errors.append("Name the header the secret goes in (the header option), e.g. X-API-Key.")
    elif header and auth != "header":
        errors.append("The header option is only for auth=header; remove it.")
    elif header and (not HEADER_NAME.match(header) or header.lower() in RESERVED_HEADERS):
        errors.append(f"{header!r} cannot carry the credential: use a header like X-API-Key.")
    oauth = {key: options.get(key) for key in ("token_url", "client_id", "scope")}
    if auth == "oauth2":
        if not oauth["token_url"] or not oauth["client_id"]:
            errors.append(
                "OAuth client credentials need the token_url and client_id options (the "
                "secret is the client secret)."
            )
        elif not re.match(_HTTP_URL, oauth["token_url"]):
            errors.append("The token_url is an http:// or https:// URL.")
    else:
        extra = sorted(key for key, value in oauth.items() if value)
        if extra:
            errors.append(
                f"The {', '.join(extra)} option{'s are' if len(extra) > 1 else ' is'} "
                "only for auth=oauth2; remove it."
            )
    return errors


class UpstreamCredential(models.Model):
    """A further credential of an upstream's pool. The secret is write-only.

    The gateway uses the upstream's own secret first, then these (enabled ones, oldest
    first), and rests a credential the vendor rate-limits or refuses.
    """

    upstream = models.ForeignKey(
        Upstream, on_delete=models.CASCADE, related_name="pool_credentials"
    )
    label = models.CharField(max_length=120, help_text="Which key this is, e.g. 'team B'.")
    # Envelope-encrypted (catalog/crypto.py); never rendered back to anyone.
    secret_ciphertext = models.TextField(blank=True, default="", editable=False)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["upstream", "pk"]
        verbose_name = "pool credential"

    def __str__(self) -> str:
        return self.label

    @property
    def has_secret(self) -> bool:
        return bool(self.secret_ciphertext)


class Category(models.Model):
    """A shelf of the catalog (Chat, Embeddings…): developers filter products by it."""

    name = models.CharField(max_length=80, unique=True)
    slug = models.SlugField(max_length=60, unique=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "categories"

    def __str__(self) -> str:
        return self.name


class Product(models.Model):
    class Kind(models.TextChoices):
        MODEL = "model", "Model API"
        MCP = "mcp", "MCP server"
        AGENT = "agent", "Agent"

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PUBLISHED = "published", "Published"
        RETIRED = "retired", "Retired"

    name = models.CharField(max_length=120)
    slug = models.SlugField(
        max_length=60,
        unique=True,
        validators=[RegexValidator(r"^[a-z0-9][a-z0-9-]*$", "Lower-case letters, digits, dashes.")],
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    description = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    subscription_approval = models.CharField(
        max_length=16,
        blank=True,
        choices=[("automatic", "Automatic"), ("manual", "By an admin")],
        help_text="Empty: the portal's default.",
    )
    portals = models.ManyToManyField(
        "portal.Portal", blank=True, related_name="products", help_text="Published to."
    )
    # Catalog listing: shown to developers, never read by the gateway.
    category = models.ForeignKey(
        Category, null=True, blank=True, on_delete=models.SET_NULL, related_name="products"
    )
    tags = models.JSONField(
        default=list, blank=True, validators=[validate_tags], help_text="Short keywords."
    )
    guide_markdown = models.TextField(
        "guide",
        blank=True,
        help_text="Markdown shown on the product page. Raw HTML is sanitised away.",
    )
    # Lower-cased text the catalog search matches against, rebuilt by
    # services.product_refresh_search_document() whenever a part of it changes: one
    # column to scan instead of joins to routes, categories (and later tools and skills).
    search_document = models.TextField(blank=True, default="", editable=False)
    # Model APIs: the gateway's exact-match response cache (off when unset).
    response_cache_ttl_seconds = models.PositiveIntegerField(
        "response cache TTL (seconds)",
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(30 * 86400)],
        help_text="Answer identical requests from a cache for this long. Empty: no cache.",
    )
    response_cache_shared = models.BooleanField(
        "share cached answers between apps",
        default=False,
        help_text="Off: each app only ever gets answers to its own requests.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        indexes = [
            # The catalog lists published products by name, optionally of one kind;
            # the pagination count and the page both start from this index.
            models.Index(fields=["status", "kind", "name"], name="product_catalog_idx"),
            models.Index(fields=["status", "name"], name="product_catalog_name_idx"),
        ]

    def __str__(self) -> str:
        return self.name


# Model routes go to model vendors only; an MCP server's upstream serves its product.
MODEL_UPSTREAMS = ~models.Q(vendor__in=sorted(NON_MODEL_VENDORS))


def validate_name_list(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ValidationError("Fallbacks must be a list of model names.")


class ModelRoute(models.Model):
    """A public model name served by a product, and where the gateway sends it.

    The first target is ``upstream``/``upstream_model`` with ``weight``; ``extra_targets``
    (:class:`RouteTarget`) add more, which share the load by ``strategy``. When every
    target has failed, or a vendor said the prompt is too long for the model, the gateway
    tries the ``fallbacks`` in order.
    """

    class Strategy(models.TextChoices):
        WEIGHTED = "weighted", "Weighted random"
        LEAST_BUSY = "least_busy", "Fewest calls in flight"
        LOWEST_LATENCY = "lowest_latency", "Lowest latency"

    class Kind(models.TextChoices):
        CHAT = "chat", "Chat"
        EMBEDDINGS = "embeddings", "Embeddings"

    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="model_routes")
    name = models.CharField(
        max_length=200,
        unique=True,
        help_text="The name apps send as `model`; unique across products.",
    )
    kind = models.CharField(
        max_length=16,
        choices=Kind.choices,
        default=Kind.CHAT,
        help_text="Which API serves it: chat (and messages) or embeddings.",
    )
    upstream = models.ForeignKey(
        Upstream,
        on_delete=models.PROTECT,
        related_name="routes",
        limit_choices_to=MODEL_UPSTREAMS,
    )
    upstream_model = models.CharField(max_length=200, help_text="The model's name upstream.")
    weight = models.PositiveSmallIntegerField(
        default=1,
        validators=[MaxValueValidator(MAX_WEIGHT)],
        help_text="Share of the traffic against the other targets (0: only when they fail).",
    )
    strategy = models.CharField(
        max_length=16,
        choices=Strategy.choices,
        default=Strategy.WEIGHTED,
        help_text="How a call picks among the targets.",
    )
    consumer_affinity = models.BooleanField(
        default=False,
        help_text="Keep each app on one target (weighted, as the strategy would pick) "
        "while it is healthy, instead of choosing per call: for trying a new version on a "
        "share of the apps.",
    )
    fallbacks = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_name_list],
        help_text="Models of this product tried in order when every target has failed, or "
        "at once when the vendor says the prompt is too long for this model.",
    )
    context_window = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Tokens; listed by the gateway's /v1/models and on the product page.",
    )
    first_token_seconds = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.1), MaxValueValidator(MAX_SECONDS)],
        help_text="How long a stream may wait for its first token before the next target.",
    )
    # Shown on the product page only; the gateway never reads them.
    max_output_tokens = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)]
    )
    input_price_per_mtok = models.DecimalField(
        "input price",
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="USD per million tokens.",
    )
    output_price_per_mtok = models.DecimalField(
        "output price",
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="USD per million tokens.",
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(weight__lte=MAX_WEIGHT), name="model_route_weight_max"
            ),
            models.CheckConstraint(
                condition=models.Q(context_window__gt=0) | models.Q(context_window__isnull=True),
                name="model_route_context_window_positive",
            ),
            models.CheckConstraint(
                condition=models.Q(first_token_seconds__gt=0)
                | models.Q(first_token_seconds__isnull=True),
                name="model_route_first_token_positive",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if isinstance(self.fallbacks, list) and self.product_id is not None:
            errors = self.fallback_errors()
            if errors:
                raise ValidationError({"fallbacks": errors})

    def fallback_errors(self) -> list[str]:
        """Fallbacks must be other models of the same product and kind, each named once."""
        names: list[str] = self.fallbacks
        siblings = dict(
            ModelRoute.objects.filter(product_id=self.product_id, name__in=names)
            .exclude(pk=self.pk)
            .values_list("name", "kind")
        )
        errors: list[str] = []
        seen: set[str] = set()
        for name in names:
            if name in seen:
                errors.append(f"{name!r} is listed twice.")
            elif name == self.name:
                errors.append("A model cannot fall back to itself.")
            elif name not in siblings:
                errors.append(f"{name!r} is not another model of this product.")
            elif siblings[name] != self.kind:
                own = self.get_kind_display().lower()
                errors.append(
                    f"{name!r} serves {siblings[name]}; a {own} model falls back only to "
                    f"{own} models."
                )
            seen.add(name)
        return errors


class RouteTarget(models.Model):
    """A further target of a model route: another upstream, or another model there."""

    route = models.ForeignKey(ModelRoute, on_delete=models.CASCADE, related_name="extra_targets")
    upstream = models.ForeignKey(
        Upstream,
        on_delete=models.PROTECT,
        related_name="route_targets",
        limit_choices_to=MODEL_UPSTREAMS,
    )
    upstream_model = models.CharField(max_length=200, help_text="The model's name upstream.")
    weight = models.PositiveSmallIntegerField(default=1, validators=[MaxValueValidator(MAX_WEIGHT)])
    position = models.PositiveSmallIntegerField(default=0, help_text="Order among the targets.")

    class Meta:
        ordering = ["route", "position", "pk"]
        verbose_name = "further target"
        constraints = [
            models.UniqueConstraint(
                fields=["route", "upstream", "upstream_model"], name="route_target_unique"
            ),
            models.CheckConstraint(
                condition=models.Q(weight__lte=MAX_WEIGHT), name="route_target_weight_max"
            ),
        ]

    def __str__(self) -> str:
        return self.upstream_model


class Plan(models.Model):
    """Limits a subscription runs under; an empty limit means unlimited."""

    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="plans")
    name = models.CharField(max_length=120)
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_day = models.PositiveIntegerField(null=True, blank=True)
    token_quota = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Tokens over the subscription's whole life."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["product", "name"]
        constraints = [
            models.UniqueConstraint(fields=["product", "name"], name="plan_unique_name"),
            models.CheckConstraint(
                condition=models.Q(requests_per_minute__gt=0)
                | models.Q(requests_per_minute__isnull=True),
                name="plan_rpm_positive",
            ),
            models.CheckConstraint(
                condition=models.Q(tokens_per_minute__gt=0)
                | models.Q(tokens_per_minute__isnull=True),
                name="plan_tpm_positive",
            ),
            models.CheckConstraint(
                condition=models.Q(tokens_per_day__gt=0) | models.Q(tokens_per_day__isnull=True),
                name="plan_tpd_positive",
            ),
            models.CheckConstraint(
                condition=models.Q(token_quota__gt=0) | models.Q(token_quota__isnull=True),
                name="plan_token_quota_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.product.slug}: {self.name}"


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


class McpServer(models.Model):
    """The MCP server behind an MCP product, and what discovery last found there.

    Hosted: the upstream (vendor ``mcp``) holds the endpoint and the backend credential,
    which the gateway injects; the app's own key never reaches the server. Discovery (a
    Celery task, on a schedule) fills in the rest: the server's instructions, prompts,
    resources and templates as it lists them, and the :class:`McpTool` rows.
    Nothing is served before an admin approves the server (``approved_at``).

    REST-to-MCP: the upstream is of vendor ``rest`` (a plain REST service and its
    credential) and the gateway itself is the MCP server. Its tools are imported from an
    OpenAPI document or defined by hand, each with the REST call it makes; it is never
    discovered. Whether a server is one or the other follows from its upstream's vendor.
    """

    class Transport(models.TextChoices):
        STREAMABLE_HTTP = "streamable_http", "Streamable HTTP"
        SSE = "sse", "HTTP+SSE (the deprecated 2024-11-05 transport)"

    product = models.OneToOneField(
        Product,
        on_delete=models.CASCADE,
        related_name="mcp_server",
        limit_choices_to={"kind": Product.Kind.MCP},
    )
    upstream = models.ForeignKey(
        Upstream,
        on_delete=models.PROTECT,
        related_name="mcp_servers",
        limit_choices_to={"vendor__in": [MCP_VENDOR, REST_VENDOR]},
        help_text="An upstream of vendor 'MCP server' (its base URL is the MCP endpoint, its "
        "secret and auth options the backend credential), or of vendor 'REST service' for "
        "tools the gateway makes from a REST API (imported from OpenAPI or defined by hand).",
    )
    transport = models.CharField(
        max_length=16,
        choices=Transport.choices,
        default=Transport.STREAMABLE_HTTP,
        help_text="Streamable HTTP serves both protocol eras (2025-11-25 sessions and "
        "2026-07-28); HTTP+SSE is for servers that offer only the old /sse endpoint.",
    )
    # What discovery found; never edited by hand.
    server_name = models.CharField(max_length=200, blank=True, editable=False)
    server_version = models.CharField(max_length=100, blank=True, editable=False)
    protocol_version = models.CharField(max_length=20, blank=True, editable=False)
    instructions = models.TextField(blank=True, editable=False)
    prompts = models.JSONField(default=list, blank=True, editable=False)
    resources = models.JSONField(default=list, blank=True, editable=False)
    resource_templates = models.JSONField(default=list, blank=True, editable=False)
    last_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_discovered_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Injection markers (catalog.mcp_scan) in the instructions, prompts and resources,
    # which are served as discovered once the server is approved.
    flags = models.JSONField(default=list, blank=True, editable=False)
    # Why the last discovery failed, or what it had to leave out; empty when all went well.
    # (REST: what the last OpenAPI import left out, and why.)
    last_error = models.TextField(blank=True, editable=False)
    # REST: where the OpenAPI document was last imported from (empty: uploaded, or none).
    openapi_url = models.CharField(
        "OpenAPI document URL", max_length=2000, blank=True, editable=False
    )
    approved_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["product__name"]
        verbose_name = "MCP server"

    def __str__(self) -> str:
        return str(self.product) if self.product_id else "MCP server"

    @property
    def is_rest(self) -> bool:
        """A REST-to-MCP server: the gateway calls a REST service for its tools."""
        return self.upstream_id is not None and self.upstream.vendor == REST_VENDOR

    def clean(self) -> None:
        # The inline on a product's page leaves its product out of field validation.
        if self.product_id is not None and self.product.kind != Product.Kind.MCP:
            raise ValidationError("Only a product of kind 'MCP server' has an MCP server.")
        if self.pk is not None and self.upstream_id is not None:
            # REST tools carry the call the gateway makes; a hosted server's do not. One
            # kind on the other's upstream could only fail, so the admin starts afresh.
            other = self.tools.filter(rest__isnull=self.is_rest)
            if other.exists():
                kind = "an MCP server's" if self.is_rest else "REST"
                raise ValidationError(
                    {
                        "upstream": f"This server's tools are {kind} tools: delete them "
                        "first, or make another product for this upstream."
                    }
                )


class McpToolQuerySet(models.QuerySet["McpTool"]):
    def served(self) -> McpToolQuerySet:
        """The tools the gateway serves, by name: approved, or changed upstream and held
        (either way with their pinned definition)."""
        return self.filter(status__in=McpTool.SERVED, pinned_definition__isnull=False).order_by(
            "name"
        )


def _check_decodes(value: object, decode: Callable[[object], object]) -> None:
    """A stored call is null, or ``decode`` (which says why not with ``ValueError``)
    reads it as the gateway will."""
    if value is None:
        return
    try:
        decode(value)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None


def validate_rest_call(value: object) -> None:
    """A REST call is stored as ``gateway.schema.RestCall`` encodes one."""
    _check_decodes(value, rest_call_from_json)


class McpTool(models.Model):
    """A tool of an MCP server: the definition served (pinned) and the one last seen.

    An admin's approval pins the discovered definition; from then on the gateway serves
    the pinned one, whatever the server says. A later difference upstream (a "rug
    pull") is held as ``changed`` for review while the pinned definition keeps being
    served; a tool first seen after approval is ``new`` and not served until approved.
    ``flags`` are the injection markers found in the discovered definition
    (catalog.mcp_scan).

    A REST-to-MCP tool also has ``rest``, the REST call (``gateway.schema.RestCall``)
    as last imported or edited, pinned with the definition as ``pinned_rest``: a new
    path or method is as much a rug pull as a new description. "Discovered" then means
    "as the last OpenAPI import or edit says".
    """

    class Status(models.TextChoices):
        NEW = "new", "New (not approved)"
        APPROVED = "approved", "Approved"
        CHANGED = "changed", "Changed upstream (held for review)"
        REMOVED = "removed", "Gone upstream"

    SERVED = (Status.APPROVED, Status.CHANGED)

    server = models.ForeignKey(McpServer, on_delete=models.CASCADE, related_name="tools")
    # The gateway's limit on names (gateway.schema.Name).
    name = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.NEW)
    pinned_definition = models.JSONField(null=True, blank=True, editable=False)
    discovered_definition = models.JSONField(default=dict, editable=False)
    # REST-to-MCP tools only (null for a hosted server's): the call as last imported or
    # edited, and the one pinned with the definition (served).
    rest = models.JSONField(
        "REST call", null=True, blank=True, editable=False, validators=[validate_rest_call]
    )
    pinned_rest = models.JSONField(
        "pinned REST call",
        null=True,
        blank=True,
        editable=False,
        validators=[validate_rest_call],
    )
    flags = models.JSONField(default=list, blank=True, editable=False)
    first_seen_at = models.DateTimeField(auto_now_add=True)
    # When the server's definition last came to differ from the pinned one (or went).
    changed_at = models.DateTimeField(null=True, blank=True, editable=False)
    approved_at = models.DateTimeField(null=True, blank=True, editable=False)

    objects = McpToolQuerySet.as_manager()

    class Meta:
        ordering = ["server", "name"]
        verbose_name = "MCP tool"
        constraints = [
            models.UniqueConstraint(fields=["server", "name"], name="mcp_tool_unique_name"),
            models.CheckConstraint(
                condition=~models.Q(status__in=["approved", "changed"])
                | models.Q(pinned_definition__isnull=False),
                name="mcp_tool_served_is_pinned",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def served_summary(self) -> tuple[str, str]:
        """The title and description developers are shown, from the pinned definition
        (the title may also sit in its annotations); empty strings where there are none."""
        definition = self.pinned_definition or {}
        annotations = definition.get("annotations")
        title = _text(definition.get("title")) or _text(
            annotations.get("title") if isinstance(annotations, dict) else None
        )
        return title, _text(definition.get("description"))

    def clean(self) -> None:
        if self.rest is None:
            return
        try:
            call = rest_call_from_json(self.rest)
        except ValueError:
            return  # the field's own validator reports it
        problems = rest_tool_problems(
            self.discovered_definition, call, credential=self.credential()
        )
        if problems:
            raise ValidationError({"rest": problems})

    def credential(self) -> CredentialPlace:
        """Where the gateway sends the server's upstream credential: no argument may."""
        if self.server_id is None:
            return CredentialPlace()
        upstream = self.server.upstream
        options: dict[str, Any] = upstream.options
        return CredentialPlace.of(options, upstream.has_secret)


MAX_SKILLS = 50
MAX_SKILLS_BYTES = 64 * 1024


def validate_skills(value: object) -> None:
    """A card's skills as the A2A AgentSkill objects: each has a text ``id``, ``name`` and
    ``description``, and ``tags`` and ``examples`` are lists of text when present."""
    if not isinstance(value, list) or not all(isinstance(skill, dict) for skill in value):
        raise ValidationError("Skills are a list of objects: {id, name, description, tags}.")
    if len(value) > MAX_SKILLS or len(json.dumps(value)) > MAX_SKILLS_BYTES:
        raise ValidationError(
            f"Keep to at most {MAX_SKILLS} skills and {MAX_SKILLS_BYTES // 1024} KiB."
        )
    ids: set[str] = set()
    for number, skill in enumerate(value, start=1):
        for key in ("id", "name", "description"):
            text = skill.get(key)
            if not isinstance(text, str) or not text.strip():
                raise ValidationError(f"Skill {number} needs its {key}, a text.")
        for key in ("tags", "examples", "inputModes", "outputModes"):
            items = skill.get(key, [])
            if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
                raise ValidationError(f"The {key} of skill {skill['id']!r} are a list of texts.")
        if skill["id"] in ids:
            raise ValidationError(f"Two skills have the id {skill['id']!r}.")
        ids.add(skill["id"])


def validate_rest_agent_call(value: object) -> None:
    """A REST agent's call is stored as ``gateway.schema.RestAgentCall`` encodes one."""
    _check_decodes(value, rest_agent_call_from_json)


class Agent(models.Model):
    """The agent behind an agent product: its targets (versions) and how traffic is
    shared between them, the product's global rate limit, and the card it is served
    with.

    The served card (``served_card``) is the first A2A target's card as last fetched,
    or, when every target is a REST agent, one the gateway makes from the product's
    name and description and the ``skills`` an admin defines here. The gateway replaces
    its interfaces and security scheme with its own (``gateway.a2a``).
    """

    class Affinity(models.TextChoices):
        NONE = "none", "None: each call is routed by weight"
        CONSUMER = "consumer", "Consumer: each app keeps to one target"

    product = models.OneToOneField(
        Product,
        on_delete=models.CASCADE,
        related_name="agent",
        limit_choices_to={"kind": Product.Kind.AGENT},
    )
    affinity = models.CharField(
        max_length=16,
        choices=Affinity.choices,
        default=Affinity.NONE,
        help_text="Consumer: the weights set the share of apps each target gets, and an "
        "app stays on its target while it is healthy (for a gray release by app).",
    )
    requests_per_minute = models.PositiveIntegerField(
        "global requests per minute",
        null=True,
        blank=True,
        help_text="The product's limit, all apps together, on top of each plan's. Empty: none.",
    )
    health_check_seconds = models.FloatField(
        default=30.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(MAX_SECONDS)],
        help_text="How often each gateway process probes each target, ejecting a failing "
        "one and bringing it back when it answers again. 0: only failed calls eject.",
    )
    # REST agents: the skills of the card the gateway makes (A2A AgentSkill objects:
    # id, name, description, tags, examples).
    skills = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_skills],
        help_text="REST agents only: the card's skills, a list of {id, name, description, "
        "tags, examples}. A2A agents' skills come from their card.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["product__name"]

    def __str__(self) -> str:
        return str(self.product) if self.product_id else "Agent"

    def clean(self) -> None:
        # The inline on a product's page leaves its product out of field validation.
        if self.product_id is not None and self.product.kind != Product.Kind.AGENT:
            raise ValidationError("Only a product of kind 'Agent' has an agent.")


class AgentTarget(models.Model):
    """One version of an agent: an upstream (vendor ``a2a`` or ``rest-agent``, which
    holds its URL and the backend credential the gateway injects) and its weight.

    For an A2A agent the card fetch (a Celery task, also run on a schedule) fills in
    what its card says: ``card`` (in the v1.0 shape, whatever version the agent
    speaks), the JSON-RPC ``interface_url`` and ``protocol_version`` the gateway uses,
    and ``streaming``. For a REST agent, ``rest`` says how the gateway calls it
    (``gateway.schema.RestAgentCall``). The health fields are the control plane's own
    checks, for the portal; each gateway process checks for itself too.
    """

    class Health(models.TextChoices):
        UNKNOWN = "unknown", "Not checked yet"
        HEALTHY = "healthy", "Healthy"
        UNHEALTHY = "unhealthy", "Unhealthy"

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="targets")
    upstream = models.ForeignKey(
        Upstream,
        on_delete=models.PROTECT,
        related_name="agent_targets",
        limit_choices_to={"vendor__in": sorted(AGENT_VENDORS)},
        help_text="An upstream of vendor 'A2A agent' (its base URL the agent's, or its "
        "card's, URL) or 'REST agent'; its secret and auth options are the backend "
        "credential.",
    )
    name = models.CharField(
        "version",
        max_length=60,
        blank=True,
        help_text="A label such as v2, shown in x-portico-target; x-portico-upstream "
        "pins a call to it.",
    )
    weight = models.PositiveSmallIntegerField(default=1, validators=[MaxValueValidator(MAX_WEIGHT)])
    position = models.PositiveSmallIntegerField(default=0, help_text="Order among the targets.")
    rest = models.JSONField(
        "REST call",
        null=True,
        blank=True,
        validators=[validate_rest_agent_call],
        help_text="REST agents only: {method, path, request, reply, reply_as} "
        "(see the admin guide).",
    )
    # What the last card fetch found (A2A agents); never edited by hand.
    card = models.JSONField(default=dict, blank=True, editable=False)
    interface_url = models.CharField(max_length=2000, blank=True, editable=False)
    protocol_version = models.CharField(max_length=8, blank=True, editable=False)
    streaming = models.BooleanField(default=False, editable=False)
    card_fetched_at = models.DateTimeField(null=True, blank=True, editable=False)
    health = models.CharField(
        max_length=16, choices=Health.choices, default=Health.UNKNOWN, editable=False
    )
    last_checked_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Why the last card fetch or health check failed; empty when it went well.
    last_error = models.TextField(blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["agent", "position", "id"]
        verbose_name = "agent target"
        constraints = [
            # The gateway keeps a target's health and its tasks' owner by its upstream.
            models.UniqueConstraint(fields=["agent", "upstream"], name="agent_target_one_upstream")
        ]

    def __str__(self) -> str:
        return self.name or (self.upstream.name if self.upstream_id else "target")

    @property
    def is_rest(self) -> bool:
        return self.upstream_id is not None and self.upstream.vendor == REST_AGENT_VENDOR

    def clean(self) -> None:
        # An A2A agent is called as its card says; a REST agent as ``rest`` says, which
        # it cannot do without.
        if self.upstream_id is None:
            return
        if self.is_rest and self.rest is None:
            raise ValidationError(
                {
                    "rest": "A REST agent needs its REST call: how the gateway sends it a "
                    "message and where the reply is in its answer (start from a preset)."
                }
            )
        if not self.is_rest and self.rest is not None:
            raise ValidationError(
                {"rest": "An A2A agent is called as its card says: leave the REST call empty."}
            )

    @property
    def card_summary(self) -> str:
        """The fetched card in a line: name, version, skills."""
        card: dict[str, Any] = self.card or {}
        if not card:
            return ""
        skills = [s.get("name", "") for s in card.get("skills", []) if isinstance(s, dict)]
        return f"{card.get('name', '?')} {card.get('version', '')}".strip() + (
            f"; skills: {', '.join(skills)}" if skills else "; no skills"
        )
