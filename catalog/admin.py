"""The catalog's admin: upstreams and their credential pools, products, model routes, plans.

Secrets are write-only here: password inputs that never render a value, a "secret set"
flag in their place, and no POST parameter of an upstream's page in error reports.
Every save of something the gateway serves publishes a revision (GatewayChangeAdmin).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.views.decorators.debug import sensitive_post_parameters

from catalog import services
from catalog.forms import (
    OpenApiImportForm,
    RestArgumentFormSet,
    RestToolForm,
    rest_tool_build,
    rest_tool_initial,
)
from catalog.models import (
    AUTH_STYLES,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    OPTION_KEYS,
    Agent,
    AgentTarget,
    Category,
    McpServer,
    McpTool,
    ModelRoute,
    Plan,
    Product,
    RouteTarget,
    Upstream,
    UpstreamCredential,
    validate_vendor_secret,
)
from catalog.openapi import rest_call_from_json
from catalog.rest_agents import REST_AGENT_PRESETS, rest_agent_preset
from gatewaysync.admin import GatewayChangeAdmin
from portal.models import Portal


def write_only_secret(help_text: str, *, required: bool = False) -> forms.CharField:
    """A secret field whose widget never renders the stored value back into the page."""
    return forms.CharField(
        required=required,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text=help_text,
    )


OPTION_LABELS = {
    "api_version": "API version (Azure OpenAI)",
    "region": "Region (AWS Bedrock)",
    "auth": "Auth (MCP server, REST service, agents)",
    "header": "Header (auth=header)",
    "token_url": "Token URL (auth=oauth2)",
    "client_id": "Client ID (auth=oauth2)",
    "scope": "Scope (auth=oauth2, optional)",
    "param": "Query parameter (REST, auth=query)",
    "username": "Username (agents, auth=basic)",
}
OPTION_PLACEHOLDERS = {
    "api_version": "2024-10-21",
    "region": "us-east-1",
    "header": "X-API-Key",
    "token_url": "https://auth.example.com/oauth/token",
    "client_id": "portico-gateway",
    "scope": "mcp",
    "param": "api_key",
    "username": "portico",
}
MCP_AUTH_CHOICES = [
    ("", "default: bearer when a secret is set, else none"),
    ("bearer", "bearer: Authorization: Bearer <secret>"),
    ("header", "header: the secret in the header below"),
    ("oauth2", "oauth2: client credentials; the secret is the client secret"),
    ("query", "query (REST service only): the secret in the query parameter below"),
    ("basic", "basic (agents only): HTTP basic auth, the username below, the secret as password"),
]


def _option_input(key: str) -> forms.Widget:
    attrs: dict[str, Any] = {"aria-label": OPTION_LABELS[key]}
    if key == "auth":
        return forms.Select(attrs=attrs, choices=MCP_AUTH_CHOICES)
    attrs.update(placeholder=OPTION_PLACEHOLDERS[key], size=20)
    return forms.TextInput(attrs=attrs)


class VendorOptionsWidget(forms.MultiWidget):
    """One labelled input per vendor option."""

    def __init__(self) -> None:
        super().__init__({key: _option_input(key) for key in OPTION_KEYS})

    def decompress(self, value: Any) -> list[str]:
        value = value if isinstance(value, dict) else {}
        return [value.get(key, "") for key in OPTION_KEYS]

    def render(
        self, name: str, value: Any, attrs: dict[str, Any] | None = None, renderer: Any = None
    ) -> SafeString:
        # Each input after its label, which the stock template cannot do.
        subwidgets = self.get_context(name, value, attrs)["widget"]["subwidgets"]
        parts = [
            (OPTION_LABELS[key], widget.render(sub["name"], sub["value"], sub["attrs"], renderer))
            for key, widget, sub in zip(OPTION_KEYS, self.widgets, subwidgets, strict=True)
        ]
        return format_html_join(
            "",
            '<span style="display:inline-block;margin:0 1.5em .4em 0">{} {}</span>',
            parts,
        )


class VendorOptionsField(forms.MultiValueField):
    """The options dict as one optional text field per option; empty ones are left out."""

    widget = VendorOptionsWidget

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            fields=[forms.CharField(required=False, max_length=200) for _ in OPTION_KEYS],
            require_all_fields=False,
            required=False,
            **kwargs,
        )

    def compress(self, data_list: list[str]) -> dict[str, str]:
        return {
            key: value for key, value in zip(OPTION_KEYS, data_list or [], strict=False) if value
        }


class UpstreamForm(forms.ModelForm):
    secret = write_only_secret(
        # Admin help texts are HTML: no angle brackets.
        "The vendor API key; for AWS Bedrock ACCESS_KEY_ID:SECRET_ACCESS_KEY, with "
        ":SESSION_TOKEN after it for temporary credentials; for an MCP server its backend "
        "credential (the OAuth client secret for auth=oauth2); for a REST service the key "
        "its tools' calls carry. Leave empty to keep the current one."
    )
    clear_secret = forms.BooleanField(required=False, help_text="Remove the stored secret.")
    options = VendorOptionsField(
        label="Vendor options",
        help_text="Azure OpenAI: the api_version of the deployment API (empty: the v1 API). "
        "AWS Bedrock: the region, unless the base URL names it. MCP server and REST service: "
        "how the gateway sends the secret (auth, and header or the OAuth client; a REST "
        "service also takes auth=query with the parameter, default api_key). Other vendors "
        "take none.",
    )

    class Meta:
        model = Upstream
        fields = ["name", "vendor", "base_url", "timeout_seconds", "options"]

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        vendor, secret = cleaned.get("vendor"), cleaned.get("secret")
        if vendor and secret:
            try:
                validate_vendor_secret(vendor, secret)
            except ValidationError as exc:
                self.add_error("secret", exc)
        elif (
            vendor == Upstream.Vendor.BEDROCK
            and "vendor" in self.changed_data
            and self.instance.has_secret
            and not cleaned.get("clear_secret")
        ):
            self.add_error(
                "secret",
                "Enter the AWS credential here: the stored secret was set for another vendor.",
            )
        auth = (cleaned.get("options") or {}).get("auth")
        keeps_secret = self.instance.has_secret and not cleaned.get("clear_secret")
        if vendor in AUTH_STYLES and auth and not secret and not keeps_secret:
            self.add_error("secret", f"auth={auth} sends a secret: enter it here.")
        return cleaned


class UpstreamCredentialForm(forms.ModelForm):
    secret = write_only_secret("Write-only. Leave empty to keep the current one.")

    class Meta:
        model = UpstreamCredential
        fields = ["label", "secret", "enabled"]

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        if self.instance.pk is None and not cleaned.get("secret"):
            self.add_error("secret", "A pool credential needs its secret.")
        return cleaned


class UpstreamCredentialFormSet(BaseInlineFormSet):
    def clean(self) -> None:
        super().clean()
        # The shape of a secret depends on the upstream's vendor, as just submitted.
        vendor = self.instance.vendor
        for form in self.forms:
            secret = getattr(form, "cleaned_data", {}).get("secret")
            if secret and form not in self.deleted_forms:
                try:
                    validate_vendor_secret(vendor, secret)
                except ValidationError as exc:
                    form.add_error("secret", exc)


class UpstreamCredentialInline(admin.TabularInline):
    """Further credentials of the pool, tried after the upstream's own secret."""

    model = UpstreamCredential
    form = UpstreamCredentialForm
    formset = UpstreamCredentialFormSet
    extra = 0
    fields = ["label", "secret", "enabled", "has_secret", "created_at"]
    readonly_fields = ["has_secret", "created_at"]
    verbose_name_plural = "Credential pool (tried after the secret above, oldest first)"

    @admin.display(boolean=True, description="Secret set")
    def has_secret(self, obj: UpstreamCredential) -> bool:
        return obj.has_secret


@admin.register(Upstream)
class UpstreamAdmin(GatewayChangeAdmin):
    form = UpstreamForm
    list_display = ["name", "vendor", "base_url", "has_secret", "pool_size", "timeout_seconds"]
    list_filter = ["vendor"]
    search_fields = ["name", "base_url"]
    fieldsets = [
        (None, {"fields": ["name", "vendor", "base_url", "options", "timeout_seconds"]}),
        (
            "Credential",
            {
                "fields": ["secret", "clear_secret"],
                "description": "Stored encrypted and never shown again, here or anywhere.",
            },
        ),
    ]
    inlines = [UpstreamCredentialInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Upstream]:
        # The pool size comes with the list query, not from a query per row.
        return super().get_queryset(request).annotate(pool_size=Count("pool_credentials"))

    @admin.display(boolean=True, description="Secret set")
    def has_secret(self, obj: Upstream) -> bool:
        return obj.has_secret

    @admin.display(description="Pool credentials", ordering="pool_size")
    def pool_size(self, obj: Upstream) -> int:
        return getattr(obj, "pool_size", 0)

    # Secrets must not reach error reports either.
    @method_decorator(sensitive_post_parameters())
    def changeform_view(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return super().changeform_view(*args, **kwargs)

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        super().save_model(request, obj, form, change)
        if form.cleaned_data.get("clear_secret"):
            services.upstream_set_secret(upstream=obj, secret=None)
        elif form.cleaned_data.get("secret"):
            services.upstream_set_secret(upstream=obj, secret=form.cleaned_data["secret"])
        elif change and {"base_url", "options", "timeout_seconds"} & set(form.changed_data):
            # Somewhere else, or another credential style: its servers may list otherwise,
            # and its agents' cards may differ.
            services.mcp_servers_schedule_discovery(servers=obj.mcp_servers.all())
            services.agents_schedule_refresh(
                agents=Agent.objects.filter(targets__upstream=obj).distinct()
            )

    def save_formset(self, request, form, formset, change):  # type: ignore[no-untyped-def]
        if formset.model is not UpstreamCredential:
            return super().save_formset(request, form, formset, change)
        # Unsaved: only what the change message lists. The writes go through services,
        # which encrypt the secrets and record them in the audit log.
        formset.save(commit=False)
        for credential in formset.deleted_objects:
            services.upstream_credential_remove(credential=credential)
        for inline in formset.forms:
            if inline in formset.deleted_forms or not inline.has_changed():
                continue
            credential, data = inline.instance, inline.cleaned_data
            if credential.pk is None:
                services.upstream_credential_add(
                    upstream=form.instance,
                    label=data["label"],
                    secret=data["secret"],
                    enabled=data["enabled"],
                )
                continue
            if "label" in inline.changed_data:
                credential.save(update_fields=["label"])
            if "enabled" in inline.changed_data:
                services.upstream_credential_set_enabled(
                    credential=credential, enabled=data["enabled"]
                )
            if data.get("secret"):
                services.upstream_credential_set_secret(
                    credential=credential, secret=data["secret"]
                )
        return None


class CommaSeparatedField(forms.CharField):
    """A list of names typed as one comma-separated line."""

    def prepare_value(self, value: object) -> object:
        if isinstance(value, list):
            return ", ".join(str(item) for item in value)
        return value

    def to_python(self, value: object) -> list[str]:  # type: ignore[override]
        text = super().to_python(value)
        return self.normalize((text or "").split(","))

    def normalize(self, parts: Iterable[str]) -> list[str]:
        return [part.strip() for part in parts if part.strip()]


class TagsField(CommaSeparatedField):
    def normalize(self, parts: Iterable[str]) -> list[str]:
        return services.normalize_tags(parts)


def _routing_summary(route: ModelRoute, extra_targets: int) -> str:
    parts = [route.get_kind_display()]
    if extra_targets:
        parts.append(f"{extra_targets + 1} targets, {route.get_strategy_display().lower()}")
    if route.fallbacks:
        parts.append("falls back to " + ", ".join(route.fallbacks))
    return " · ".join(parts)


def _follow_fallbacks(
    request: HttpRequest, products: Iterable[int | None], renamed: Mapping[str, str]
) -> None:
    """Tidy the fallbacks of ``products`` after routes were renamed, moved or deleted, and
    say what had to be dropped."""
    for product in Product.objects.filter(pk__in={pk for pk in products if pk is not None}):
        for note in services.product_tidy_fallbacks(product=product, renamed=renamed):
            messages.warning(request, note)


class ModelRouteInline(admin.TabularInline):
    """The compact list on a product's page; each route's own page has the rest."""

    model = ModelRoute
    extra = 0
    fields = ["name", "upstream", "upstream_model", "routing"]
    readonly_fields = ["routing"]
    show_change_link = True

    def get_queryset(self, request: HttpRequest) -> QuerySet[ModelRoute]:
        return super().get_queryset(request).annotate(extra_target_count=Count("extra_targets"))

    @admin.display(description="Kind, targets and fallbacks")
    def routing(self, obj: ModelRoute) -> str:
        if obj.pk is None:
            return "Save, then open the model to add targets and fallbacks."
        return _routing_summary(obj, getattr(obj, "extra_target_count", 0))


class ModelRouteForm(forms.ModelForm):
    fallbacks = CommaSeparatedField(
        required=False,
        help_text="Comma-separated names of other models of this product and kind, tried in "
        "order when every target has failed, or at once when the vendor says the prompt is "
        "too long for this model.",
    )

    class Meta:
        model = ModelRoute
        fields = [
            "product",
            "name",
            "kind",
            "upstream",
            "upstream_model",
            "weight",
            "strategy",
            "consumer_affinity",
            "fallbacks",
            "context_window",
            "first_token_seconds",
            "max_output_tokens",
            "input_price_per_mtok",
            "output_price_per_mtok",
        ]


class RouteTargetFormSet(BaseInlineFormSet):
    def clean(self) -> None:
        super().clean()
        route = self.instance
        first = (route.upstream_id, route.upstream_model)
        for form in self.forms:
            data = getattr(form, "cleaned_data", {})
            if form in self.deleted_forms or not data.get("upstream"):
                continue
            if (data["upstream"].pk, data.get("upstream_model")) == first:
                form.add_error(
                    "upstream_model",
                    "This is the first target already (above); pick another upstream or model.",
                )


class RouteTargetInline(admin.TabularInline):
    model = RouteTarget
    formset = RouteTargetFormSet
    extra = 0
    fields = ["upstream", "upstream_model", "weight", "position"]
    verbose_name_plural = "Further targets (share the load with the first by the strategy)"


@admin.register(ModelRoute)
class ModelRouteAdmin(GatewayChangeAdmin):
    form = ModelRouteForm
    list_display = [
        "name",
        "product",
        "kind",
        "first_target",
        "target_count",
        "strategy",
        "fallback_list",
    ]
    list_filter = ["kind", "strategy", "product"]
    list_select_related = ["product", "upstream"]
    search_fields = ["name", "upstream_model", "product__name"]
    autocomplete_fields = ["product"]
    fieldsets = [
        (None, {"fields": ["product", "name", "kind"]}),
        ("First target", {"fields": ["upstream", "upstream_model", "weight"]}),
        (
            "Routing",
            {
                "fields": [
                    "strategy",
                    "consumer_affinity",
                    "fallbacks",
                    "context_window",
                    "first_token_seconds",
                ]
            },
        ),
        (
            "Shown to developers",
            {
                "fields": ["max_output_tokens", "input_price_per_mtok", "output_price_per_mtok"],
                "description": "On the product page, with the context window. The gateway "
                "does not read these.",
            },
        ),
    ]
    inlines = [RouteTargetInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[ModelRoute]:
        # The target count comes with the list query, not from a query per row.
        return super().get_queryset(request).annotate(extra_target_count=Count("extra_targets"))

    @admin.display(description="First target", ordering="upstream__name")
    def first_target(self, obj: ModelRoute) -> str:
        return f"{obj.upstream.name}: {obj.upstream_model}"

    @admin.display(description="Targets", ordering="extra_target_count")
    def target_count(self, obj: ModelRoute) -> int:
        return getattr(obj, "extra_target_count", 0) + 1

    @admin.display(description="Fallbacks")
    def fallback_list(self, obj: ModelRoute) -> str:
        return ", ".join(obj.fallbacks) or "—"

    def save_related(self, request, form, formsets, change):  # type: ignore[no-untyped-def]
        super().save_related(request, form, formsets, change)
        route = form.instance
        before = form.initial.get("product") if change else None
        renamed = {}
        if change and "name" in form.changed_data:
            renamed[form.initial["name"]] = route.name
        _follow_fallbacks(request, [route.product_id, before], renamed)
        services.products_refresh_search_documents(
            products=Product.objects.filter(pk__in={route.product_id, before} - {None})
        )

    def delete_model(self, request, obj):  # type: ignore[no-untyped-def]
        product_id = obj.product_id
        super().delete_model(request, obj)
        self._after_delete(request, [product_id])

    def delete_queryset(self, request, queryset):  # type: ignore[no-untyped-def]
        product_ids = list(queryset.values_list("product_id", flat=True).distinct())
        super().delete_queryset(request, queryset)
        self._after_delete(request, product_ids)

    def _after_delete(self, request: HttpRequest, product_ids: list[int]) -> None:
        _follow_fallbacks(request, product_ids, {})
        services.products_refresh_search_documents(
            products=Product.objects.filter(pk__in=product_ids)
        )


class PlanInline(admin.TabularInline):
    model = Plan
    extra = 0


class ProductForm(forms.ModelForm):
    tags = TagsField(
        required=False,
        help_text=f"Comma-separated, at most {MAX_TAGS}, each up to {MAX_TAG_LENGTH} characters.",
    )

    class Meta:
        model = Product
        fields = [
            "name",
            "slug",
            "kind",
            "status",
            "portals",
            "subscription_approval",
            "category",
            "tags",
            "description",
            "guide_markdown",
        ]


class McpServerInline(admin.StackedInline):
    """An MCP product's server: where it is and how to reach it. Its tools, and their
    approval, are on the server's own page (the link)."""

    model = McpServer
    extra = 1
    max_num = 1
    fields = ["upstream", "transport", "review"]
    readonly_fields = ["review"]
    show_change_link = True
    verbose_name_plural = "MCP server (tools are reviewed on its own page)"

    @admin.display(description="Review")
    def review(self, obj: McpServer) -> str:
        if obj.pk is None:
            return (
                "Save: the server is discovered, then its tools wait for approval on its page. "
                "(For a REST service, import its OpenAPI document or add tools on that page.)"
            )
        return _server_summary(obj)


class AgentInline(admin.StackedInline):
    """An agent product's agent: routing and limits. Its targets (versions), with what
    their cards say and their health, are on the agent's own page (the link)."""

    model = Agent
    extra = 1
    max_num = 1
    fields = ["affinity", "requests_per_minute", "health_check_seconds", "skills", "targets"]
    readonly_fields = ["targets"]
    show_change_link = True
    verbose_name_plural = "Agent (its targets are added on its own page)"

    @admin.display(description="Targets")
    def targets(self, obj: Agent) -> str:
        if obj.pk is None:
            return "Save, then add the agent's targets on its page (the link above)."
        return _targets_summary(obj)


def _targets_summary(agent: Agent) -> str:
    rows = list(agent.targets.select_related("upstream"))
    if not rows:
        return "No targets yet: nothing is served."
    health = dict(AgentTarget.Health.choices)
    return "; ".join(
        f"{target} ({target.upstream.get_vendor_display()}, weight {target.weight}): "
        f"{health[target.health].lower()}"
        for target in rows
    )


@admin.register(Product)
class ProductAdmin(GatewayChangeAdmin):
    form = ProductForm
    list_display = ["name", "slug", "kind", "category", "status", "updated_at"]
    list_filter = ["kind", "status", "category", "portals"]
    list_select_related = ["category"]
    search_fields = ["name", "slug", "description"]
    prepopulated_fields = {"slug": ["name"]}
    filter_horizontal = ["portals"]
    autocomplete_fields = ["category"]
    fieldsets = [
        (None, {"fields": ["name", "slug", "kind", "status", "portals"]}),
        ("Subscriptions", {"fields": ["subscription_approval"]}),
        (
            "Response cache (model APIs)",
            {"fields": ["response_cache_ttl_seconds", "response_cache_shared"]},
        ),
        (
            "Catalog listing",
            {
                "fields": ["category", "tags", "description", "guide_markdown"],
                "description": "What developers see in the catalog. The gateway ignores it.",
            },
        ),
    ]
    inlines = [ModelRouteInline, PlanInline, McpServerInline, AgentInline]
    actions = ["retire"]

    def get_inline_instances(self, request, obj=None):  # type: ignore[no-untyped-def]
        # The MCP server belongs to MCP products only, the agent to agent products; a
        # new product shows its own once saved as one (its kind is chosen on the same
        # form).
        kinds: dict[type[admin.options.InlineModelAdmin[Any, Any]], str] = {
            McpServerInline: Product.Kind.MCP,
            AgentInline: Product.Kind.AGENT,
        }
        return [
            inline
            for inline in super().get_inline_instances(request, obj)
            if type(inline) not in kinds or (obj is not None and obj.kind == kinds[type(inline)])
        ]

    def save_formset(self, request, form, formset, change):  # type: ignore[no-untyped-def]
        if formset.model is Agent:
            # Its served card follows its skills; the search document follows that.
            services.agents_schedule_refresh(agents=formset.save())
            return None
        if formset.model is not McpServer:
            return super().save_formset(request, form, formset, change)
        saved = formset.save()
        # A new server, or one moved to another upstream or transport: discover it.
        services.mcp_servers_schedule_discovery(servers=saved)
        return None

    def save_related(self, request, form, formsets, change):  # type: ignore[no-untyped-def]
        before = {portal.pk for portal in form.initial.get("portals", [])} if change else set()
        super().save_related(request, form, formsets, change)
        # Routes renamed or deleted in the inline: fallbacks follow or are dropped.
        renamed = {
            route_form.initial["name"]: route_form.cleaned_data["name"]
            for formset in formsets
            if formset.model is ModelRoute
            for route_form in formset.initial_forms
            if route_form not in formset.deleted_forms and "name" in route_form.changed_data
        }
        _follow_fallbacks(request, [form.instance.pk], renamed)
        # After the inlines, so new or renamed model routes are in the document too;
        # save_related follows save_model on every add and change.
        services.product_refresh_search_document(product=form.instance)
        # Taking a portal off the product withdraws it there, access included.
        removed = before - set(form.instance.portals.values_list("pk", flat=True))
        for portal in Portal.objects.filter(pk__in=removed):
            services.product_unpublish(product=form.instance, portal=portal)

    @admin.action(description="Retire (the gateway refuses them from the next revision)")
    def retire(self, request, queryset):  # type: ignore[no-untyped-def]
        for product in queryset:
            services.product_retire(product=product)
        self.message_user(request, f"Retired {len(queryset)} products.", messages.SUCCESS)


@admin.register(Plan)
class PlanAdmin(GatewayChangeAdmin):
    list_display = [
        "name",
        "product",
        "requests_per_minute",
        "tokens_per_minute",
        "tokens_per_day",
        "token_quota",
    ]
    list_select_related = ["product"]


@admin.register(Category)
class CategoryAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "product_count"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}

    def get_queryset(self, request):  # type: ignore[no-untyped-def]
        # The count comes with the list query, not from a query per row.
        return super().get_queryset(request).annotate(product_count=Count("products"))

    @admin.display(description="Products", ordering="product_count")
    def product_count(self, obj: Category) -> int:
        return getattr(obj, "product_count", 0)

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        super().save_model(request, obj, form, change)
        if change and "name" in form.changed_data:
            # Products are found by their category's name: follow the rename.
            services.products_refresh_search_documents(products=obj.products.all())

    def delete_model(self, request, obj):  # type: ignore[no-untyped-def]
        products = list(obj.products.all())
        super().delete_model(request, obj)
        services.products_refresh_search_documents(products=products)

    def delete_queryset(self, request, queryset):  # type: ignore[no-untyped-def]
        products = list(Product.objects.filter(category__in=queryset))
        super().delete_queryset(request, queryset)
        services.products_refresh_search_documents(products=products)


# MCP servers and their tools --------------------------------------------------------------


def _pretty_json(value: object) -> str:
    # ASCII escapes on purpose: an invisible character shows as \u200b, not as nothing.
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=True)


def _json_block(value: object) -> SafeString:
    return format_html(
        '<pre style="white-space:pre-wrap;max-height:30em;overflow:auto">{}</pre>',
        _pretty_json(value),
    )


def _server_summary(server: McpServer) -> str:
    if server.is_rest:
        return _rest_summary(server)
    if server.last_discovered_at is None:
        return f"Not discovered yet. {server.last_error}".strip()
    tools = server.tools.values_list("status", "flags")
    counts = dict.fromkeys(McpTool.Status.values, 0)
    flagged = 0
    for status, flags in tools:
        counts[status] += 1
        flagged += bool(flags)
    state = (
        "approved"
        if server.approved_at
        else "NOT APPROVED as a whole: only tools approved one by one are served, and no "
        "prompts or resources"
    )
    markers = ""
    if server.flags:
        markers = f", {len(server.flags)} markers in its instructions, prompts or resources"
    return (
        f"{counts['approved'] + counts['changed']} tools served, {counts['changed']} changed "
        f"upstream (held), {counts['new']} new; {flagged} tools flagged{markers}; {state}."
    )


def _rest_summary(server: McpServer) -> str:
    counts = dict.fromkeys(McpTool.Status.values, 0)
    flagged = 0
    for status, flags in server.tools.values_list("status", "flags"):
        counts[status] += 1
        flagged += bool(flags)
    if server.openapi_url:
        source = f"last imported from {server.openapi_url}"
    elif server.last_discovered_at is not None:
        source = "last imported from an uploaded document"
    else:
        source = "no OpenAPI document imported (tools may be added by hand)"
    return (
        f"REST service: {counts['approved'] + counts['changed']} tools served, "
        f"{counts['changed']} changed by an import (held for review), {counts['removed']} gone "
        f"from the last document; {flagged} flagged; {source}."
    )


def flags_html(flags: object) -> SafeString | str:
    """Injection markers, prominently: what, why, where and the text around it."""
    if not isinstance(flags, list) or not flags:
        return "—"
    rows = [
        (
            str(flag.get("code", "")),
            str(flag.get("reason", "")),
            str(flag.get("where", "")),
            str(flag.get("excerpt", "")),
        )
        for flag in flags
        if isinstance(flag, dict)
    ]
    items = format_html_join(
        "",
        "<li><strong>{}</strong>: {}<br><small>in <code>{}</code>: <code>{}</code></small></li>",
        rows,
    )
    return format_html(
        '<div style="color:#ba2121"><strong>⚠ {} injection marker{}: read the definition '
        "before approving.</strong><ul>{}</ul></div>",
        len(rows),
        "" if len(rows) == 1 else "s",
        items,
    )


def definition_diff(pinned: object, discovered: object) -> SafeString | str:
    """The pinned (served) definition against the one the server gives now, line by line."""
    if pinned is None:
        return "Not approved yet: nothing is served. Approving pins the discovered definition."
    before, after = _pretty_json(pinned).splitlines(), _pretty_json(discovered).splitlines()
    if before == after:
        return "Identical: the server still gives the pinned definition."
    lines = difflib.unified_diff(
        before, after, "pinned (served)", "discovered (held back)", lineterm="", n=3
    )
    colours = {"+": "background:#e6ffec", "-": "background:#ffebe9", "@": "color:#666"}
    styled = ((colours.get(line[:1], ""), line) for line in lines)
    return format_html(
        '<pre style="white-space:pre-wrap;max-height:40em;overflow:auto">{}</pre>',
        format_html_join("\n", '<span style="{}">{}</span>', styled),
    )


def _approve_servers(request: HttpRequest, servers: Iterable[McpServer]) -> None:
    for server in servers:
        try:
            services.mcp_server_approve(server=server)
        except ValidationError as exc:
            messages.warning(request, f"{server}: {exc.messages[0]}")
            continue
        flagged = list(server.tools.filter(flags__0__isnull=False).values_list("name", flat=True))
        note = f" {len(flagged)} of them flagged: {', '.join(flagged)}." if flagged else ""
        messages.success(request, f"{server}: every discovered tool is pinned and served.{note}")


def _approve_tools(request: HttpRequest, tools: Iterable[McpTool]) -> None:
    done = []
    for tool in tools:
        try:
            services.mcp_tool_approve(tool=tool)
            done.append(tool.name)
        except ValidationError as exc:
            messages.warning(request, exc.messages[0])
    if done:
        messages.success(request, f"Pinned and serving: {', '.join(done)}.")


def _discover(request: HttpRequest, servers: Iterable[McpServer]) -> None:
    servers = list(servers)
    rest = [server for server in servers if server.is_rest]
    if rest:
        messages.info(
            request,
            f"Not discovered: {', '.join(map(str, rest))} call REST services, whose tools are "
            "imported from OpenAPI or defined by hand.",
        )
        servers = [server for server in servers if not server.is_rest]
        if not servers:
            return
    services.mcp_servers_schedule_discovery(servers=servers)
    messages.info(
        request,
        f"Discovery of {len(servers)} server{'s' if len(servers) != 1 else ''} queued; "
        "reload in a few seconds.",
    )


class McpToolInline(admin.TabularInline):
    """The server's tools at a glance; each tool's page has its diff and its approval."""

    model = McpTool
    extra = 0
    fields = readonly_fields = ("name", "status", "flag_summary", "description", "edit")
    show_change_link = True
    verbose_name_plural = "Tools (delete one to stop serving it until approved again)"

    def has_add_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False  # tools come from discovery (a REST service's: the buttons below)

    @admin.display(description="Edit")
    def edit(self, obj: McpTool) -> SafeString | str:
        if obj.pk is None or obj.rest is None:
            return ""
        return format_html('<a href="{}">Edit by hand</a>', _rest_tool_url(obj))

    @admin.display(description="Flags")
    def flag_summary(self, obj: McpTool) -> SafeString | str:
        if not obj.flags:
            return "—"
        codes = sorted({str(flag.get("code")) for flag in obj.flags if isinstance(flag, dict)})
        return format_html('<strong style="color:#ba2121">⚠ {}</strong>', ", ".join(codes))

    @admin.display(description="Description (as discovered)")
    def description(self, obj: McpTool) -> str:
        text = obj.discovered_definition.get("description")
        return text[:300] if isinstance(text, str) else ""


def _rest_tool_url(tool: McpTool) -> str:
    return reverse("admin:catalog_mcpserver_rest_tool_change", args=[tool.server_id, tool.pk])


def _report_import(
    request: HttpRequest, server: McpServer, result: services.OpenApiImportResult
) -> None:
    """Say what an import did: served, held, gone, and what it left out."""
    messages.success(
        request,
        f"Imported into {server}: {len(result.added)} tools added and served, "
        f"{len(result.held)} changed and held for review, {len(result.removed)} gone from the "
        f"document (no longer served), {result.unchanged} as before.",
    )
    if result.held:
        messages.warning(
            request,
            f"Held for review, the approved version still served: {', '.join(result.held)}. "
            "Open each tool to see the difference and approve it.",
        )
    flagged = list(
        server.tools.filter(name__in=result.added, flags__0__isnull=False).values_list(
            "name", flat=True
        )
    )
    if flagged:
        messages.warning(
            request,
            f"Injection markers in the descriptions of {', '.join(flagged)}: read them on "
            "their pages (they are served; delete or edit any you do not trust).",
        )
    for note in result.notes:
        messages.info(request, note)
    if result.warnings:
        shown = result.warnings[:12]
        more = f" (and {len(result.warnings) - len(shown)} more on the server's page)"
        messages.warning(
            request,
            "Left out or adapted: "
            + " · ".join(shown)
            + (more if len(result.warnings) > len(shown) else ""),
        )


# What discovery found and what review decided: shown, never edited.
_DISCOVERY_FIELDS = (
    "summary",
    "server_flags",
    "server_name",
    "server_version",
    "protocol_version",
    "last_checked_at",
    "last_discovered_at",
    "last_error",
    "approved_at",
)
_SERVED_FIELDS = ("instructions", "prompts_json", "resources_json", "templates_json")
_REST_FIELDS = (
    "summary",
    "openapi_url",
    "server_name",
    "server_version",
    "imported_at",
    "import_warnings",
)


@admin.register(McpServer)
class McpServerAdmin(GatewayChangeAdmin):
    change_form_template = "admin/catalog/mcpserver/change_form.html"
    list_display = [
        "product",
        "upstream",
        "transport",
        "served",
        "held",
        "new",
        "flagged",
        "approved_at",
        "last_discovered_at",
        "problem",
    ]
    list_select_related = ["product", "upstream"]
    list_filter = ["transport"]
    search_fields = ["product__name", "product__slug", "upstream__name"]
    inlines = [McpToolInline]
    actions = ["discover_now", "approve"]
    readonly_fields = tuple(dict.fromkeys((*_DISCOVERY_FIELDS, *_SERVED_FIELDS, *_REST_FIELDS)))
    fieldsets = [
        (None, {"fields": ["product", "upstream", "transport"]}),
        (
            "Discovery",
            {
                "fields": _DISCOVERY_FIELDS,
                "description": "The server is listed again every PORTICO_MCP_REFRESH_SECONDS. "
                "A tool that changes upstream is held for review; its approved definition "
                "keeps being served.",
            },
        ),
        ("Served as discovered once the server is approved", {"fields": _SERVED_FIELDS}),
    ]

    def get_fieldsets(self, request, obj=None):  # type: ignore[no-untyped-def]
        if obj is None or not obj.is_rest:
            return super().get_fieldsets(request, obj)
        # A REST service's server: no transport, nothing discovered; its imports instead.
        return [
            (None, {"fields": ["product", "upstream"]}),
            (
                "Tools from the REST service",
                {
                    "fields": _REST_FIELDS,
                    "description": "Import an OpenAPI document or add tools by hand (the "
                    "buttons below). A later import that changes a tool is held for review; "
                    "its approved version keeps being served.",
                },
            ),
        ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[McpServer]:
        # The counts come with the list query, not from queries per row.
        return (
            super()
            .get_queryset(request)
            .annotate(
                served_count=Count("tools", filter=Q(tools__status__in=McpTool.SERVED)),
                held_count=Count("tools", filter=Q(tools__status=McpTool.Status.CHANGED)),
                new_count=Count("tools", filter=Q(tools__status=McpTool.Status.NEW)),
                flagged_count=Count("tools", filter=Q(tools__flags__0__isnull=False)),
            )
        )

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "product"] if obj is not None else fields

    @admin.display(description="Served", ordering="served_count")
    def served(self, obj: McpServer) -> int:
        return getattr(obj, "served_count", 0)

    @admin.display(description="Held (changed)", ordering="held_count")
    def held(self, obj: McpServer) -> int:
        return getattr(obj, "held_count", 0)

    @admin.display(description="New", ordering="new_count")
    def new(self, obj: McpServer) -> int:
        return getattr(obj, "new_count", 0)

    @admin.display(description="Flagged tools", ordering="flagged_count")
    def flagged(self, obj: McpServer) -> SafeString | int | str:
        count = getattr(obj, "flagged_count", 0)
        more = " + prompts/resources" if obj.flags else ""
        if not count and not more:
            return 0
        return format_html('<strong style="color:#ba2121">⚠ {}{}</strong>', count, more)

    @admin.display(description="Last problem")
    def problem(self, obj: McpServer) -> str:
        return obj.last_error.splitlines()[0][:120] if obj.last_error else ""

    @admin.display(description="Summary")
    def summary(self, obj: McpServer) -> str:
        return _server_summary(obj)

    @admin.display(description="Last imported")
    def imported_at(self, obj: McpServer) -> object:
        return obj.last_discovered_at or "—"

    @admin.display(description="Left out or adapted by the last import")
    def import_warnings(self, obj: McpServer) -> SafeString | str:
        if not obj.last_error:
            return "—"
        return format_html(
            "<ul>{}</ul>",
            format_html_join("", "<li>{}</li>", ((line,) for line in obj.last_error.splitlines())),
        )

    @admin.display(description="Injection markers in the instructions, prompts and resources")
    def server_flags(self, obj: McpServer) -> SafeString | str:
        return flags_html(obj.flags)

    @admin.display(description="Prompts")
    def prompts_json(self, obj: McpServer) -> SafeString:
        return _json_block(obj.prompts)

    @admin.display(description="Resources")
    def resources_json(self, obj: McpServer) -> SafeString:
        return _json_block(obj.resources)

    @admin.display(description="Resource templates")
    def templates_json(self, obj: McpServer) -> SafeString:
        return _json_block(obj.resource_templates)

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        super().save_model(request, obj, form, change)
        if not change or {"upstream", "transport"} & set(form.changed_data):
            services.mcp_servers_schedule_discovery(servers=[obj])

    def save_related(self, request, form, formsets, change):  # type: ignore[no-untyped-def]
        super().save_related(request, form, formsets, change)
        # A tool deleted in the inline is no longer served, nor found by the search.
        services.product_refresh_search_document(product=form.instance.product)

    def response_change(self, request: HttpRequest, obj: McpServer) -> HttpResponse:
        if "_discover" in request.POST:
            _discover(request, [obj])
        elif "_approve_tools" in request.POST:
            _approve_servers(request, [obj])
        else:
            return super().response_change(request, obj)
        # Back to the same page, where the outcome shows.
        return HttpResponseRedirect(request.get_full_path())

    # REST-to-MCP: importing OpenAPI documents and defining tools by hand.

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        own = [
            path(
                "<path:object_id>/import-openapi/",
                view(self.import_openapi_view),
                name="catalog_mcpserver_import_openapi",
            ),
            path(
                "<path:object_id>/rest-tools/add/",
                view(self.rest_tool_view),
                name="catalog_mcpserver_rest_tool_add",
            ),
            path(
                "<path:object_id>/rest-tools/<int:tool_id>/",
                view(self.rest_tool_view),
                name="catalog_mcpserver_rest_tool_change",
            ),
        ]
        # Before the default ones: "<path:object_id>/" would take these too.
        return own + super().get_urls()

    def _rest_server(self, request: HttpRequest, object_id: str) -> McpServer:
        """The REST service's server ``object_id``, if this admin may change it."""
        server = self.get_object(request, object_id)
        if server is None:
            raise Http404("No such MCP server.")
        if not self.has_change_permission(request, server):
            raise PermissionDenied
        if not server.is_rest:
            raise Http404("This MCP server is hosted: its tools are discovered, not imported.")
        return server

    def _rest_context(self, request: HttpRequest, server: McpServer, title: str) -> dict[str, Any]:
        return {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "original": server,
            "title": title,
            "change_url": reverse("admin:catalog_mcpserver_change", args=[server.pk]),
        }

    def import_openapi_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Import an OpenAPI document (uploaded, or fetched from its URL) as the tools."""
        server = self._rest_server(request, object_id)
        if request.method == "POST":
            form = OpenApiImportForm(request.POST, request.FILES)
            if form.is_valid():
                url = form.cleaned_data["url"] or ""
                try:
                    document = services.openapi_fetch(url=url) if url else form.uploaded_document()
                    result = services.rest_server_import_openapi(
                        server=server, document=document, source_url=url
                    )
                except ValidationError as exc:
                    form.add_error(None, exc.messages)
                else:
                    _report_import(request, server, result)
                    return HttpResponseRedirect(
                        reverse("admin:catalog_mcpserver_change", args=[server.pk])
                    )
        else:
            form = OpenApiImportForm(initial={"url": server.openapi_url})
        context = self._rest_context(request, server, f"Import an OpenAPI document: {server}")
        context["form"] = form
        return TemplateResponse(request, "admin/catalog/mcpserver/import_openapi.html", context)

    def rest_tool_view(
        self, request: HttpRequest, object_id: str, tool_id: int | None = None
    ) -> HttpResponse:
        """Define a REST tool by hand, or edit one (imported ones too)."""
        server = self._rest_server(request, object_id)
        tool = None
        if tool_id is not None:
            tool = McpTool.objects.filter(server=server, pk=tool_id, rest__isnull=False).first()
            if tool is None:
                raise Http404("No such REST tool on this server.")
        # What is served, when there is one: the edit replaces it (and any held change).
        definition = (tool.pinned_definition or tool.discovered_definition) if tool else None
        call_json = (tool.pinned_rest or tool.rest) if tool else None
        editing = tool is not None
        if request.method == "POST":
            form = RestToolForm(
                request.POST, editing=editing, initial={"name": tool.name} if tool else None
            )
            arguments = RestArgumentFormSet(request.POST, prefix="arguments")
            if form.is_valid() and arguments.is_valid():
                try:
                    built, call = rest_tool_build(
                        form, arguments, previous=definition, name=tool.name if tool else None
                    )
                    saved = services.rest_tool_save(
                        server=server, definition=built, rest=call, tool=tool
                    )
                except ValidationError as exc:
                    form.add_error(None, exc.messages)
                else:
                    flagged = " It is flagged: read its page." if saved.flags else ""
                    messages.success(
                        request, f"{saved.name} is saved, pinned and served as it is.{flagged}"
                    )
                    return HttpResponseRedirect(
                        reverse("admin:catalog_mcpserver_change", args=[server.pk])
                    )
        else:
            if definition is not None and call_json is not None:
                initial, rows = rest_tool_initial(definition, rest_call_from_json(call_json))
            else:
                initial, rows = {"method": "GET"}, []
            form = RestToolForm(initial=initial, editing=editing)
            arguments = RestArgumentFormSet(initial=rows, prefix="arguments")
        title = f"Edit the tool {tool.name}" if tool else f"Add a tool to {server}"
        context = self._rest_context(request, server, title)
        context.update(
            form=form,
            arguments=arguments,
            tool=tool,
            held=tool is not None and tool.status == McpTool.Status.CHANGED,
            base_url=server.upstream.base_url,
        )
        return TemplateResponse(request, "admin/catalog/mcpserver/rest_tool_form.html", context)

    @admin.action(description="Discover now (list the tools again)")
    def discover_now(self, request: HttpRequest, queryset: QuerySet[McpServer]) -> None:
        _discover(request, queryset)

    @admin.action(description="Approve tools (pin every discovered definition and serve it)")
    def approve(self, request: HttpRequest, queryset: QuerySet[McpServer]) -> None:
        _approve_servers(request, queryset.select_related("product"))


_TOOL_PAGE_FIELDS = (
    "server",
    "name",
    "status",
    "flags_display",
    "diff",
    "pinned",
    "discovered",
    "first_seen_at",
    "changed_at",
    "approved_at",
)


def _with_rest(definition: object, rest: object) -> object:
    """A REST tool's definition and call shown (and compared) as one: both are pinned."""
    return {"definition": definition, "REST call": rest}


@admin.register(McpTool)
class McpToolAdmin(GatewayChangeAdmin):
    change_form_template = "admin/catalog/mcptool/change_form.html"
    list_display = ["name", "server", "status", "flag_count", "changed_at", "approved_at"]
    list_filter = ["status", "server"]
    list_select_related = ["server__product"]
    search_fields = ["name", "server__product__name"]
    actions = ["approve"]
    # Nothing is editable here: a tool is what its server says (or, a REST tool, what
    # the last import or hand edit said); an admin only approves it.
    fields = _TOOL_PAGE_FIELDS
    readonly_fields = (*_TOOL_PAGE_FIELDS, "rest_edit")

    def get_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        if obj is not None and obj.rest is not None:
            return ("rest_edit", *_TOOL_PAGE_FIELDS)
        return _TOOL_PAGE_FIELDS

    @admin.display(description="REST tool")
    def rest_edit(self, obj: McpTool) -> SafeString:
        return format_html(
            'Its REST call is shown with its definition below. <a href="{}">Edit it by hand</a> '
            "(saving pins and serves the edit).",
            _rest_tool_url(obj),
        )

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False  # tools come from discovery

    @admin.display(description="Flags")
    def flag_count(self, obj: McpTool) -> SafeString | int:
        count = len(obj.flags) if isinstance(obj.flags, list) else 0
        return format_html('<strong style="color:#ba2121">⚠ {}</strong>', count) if count else 0

    @admin.display(description="Injection markers (in the discovered definition)")
    def flags_display(self, obj: McpTool) -> SafeString | str:
        return flags_html(obj.flags)

    @admin.display(description="Pinned → discovered")
    def diff(self, obj: McpTool) -> SafeString | str:
        if obj.rest is None:
            return definition_diff(obj.pinned_definition, obj.discovered_definition)
        pinned = (
            None
            if obj.pinned_definition is None
            else _with_rest(obj.pinned_definition, obj.pinned_rest)
        )
        return definition_diff(pinned, _with_rest(obj.discovered_definition, obj.rest))

    @admin.display(description="Pinned definition (what the gateway serves)")
    def pinned(self, obj: McpTool) -> SafeString | str:
        if obj.pinned_definition is None:
            return "—"
        if obj.rest is None:
            return _json_block(obj.pinned_definition)
        return _json_block(_with_rest(obj.pinned_definition, obj.pinned_rest))

    @admin.display(description="Discovered definition (what the server, or the last import, says)")
    def discovered(self, obj: McpTool) -> SafeString:
        if obj.rest is None:
            return _json_block(obj.discovered_definition)
        return _json_block(_with_rest(obj.discovered_definition, obj.rest))

    def save_related(self, request, form, formsets, change):  # type: ignore[no-untyped-def]
        # Nothing here is editable: a save must not publish.
        return None

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        return None

    def delete_model(self, request, obj):  # type: ignore[no-untyped-def]
        product = obj.server.product
        super().delete_model(request, obj)
        services.product_refresh_search_document(product=product)

    def delete_queryset(self, request, queryset):  # type: ignore[no-untyped-def]
        products = list(Product.objects.filter(mcp_server__tools__in=queryset).distinct())
        super().delete_queryset(request, queryset)
        services.products_refresh_search_documents(products=products)

    def response_change(self, request: HttpRequest, obj: McpTool) -> HttpResponse:
        if "_approve" in request.POST:
            _approve_tools(request, [obj])
            return HttpResponseRedirect(request.get_full_path())
        return super().response_change(request, obj)

    @admin.action(description="Approve (pin the discovered definition and serve it)")
    def approve(self, request: HttpRequest, queryset: QuerySet[McpTool]) -> None:
        _approve_tools(request, queryset.select_related("server__product"))


# Agents -----------------------------------------------------------------------------------

PRESET_CHOICES = [
    ("", "none: write the REST call below"),
    *((name, name) for name in REST_AGENT_PRESETS),
]


class AgentTargetForm(forms.ModelForm):
    preset = forms.ChoiceField(
        label="REST call preset",
        choices=PRESET_CHOICES,
        required=False,
        help_text="REST agents: fills in an empty REST call (openai-chat: an OpenAI-style "
        "chat completions API, then set the model; webhook: POSTs {message, session} and "
        "reads reply).",
    )

    class Meta:
        model = AgentTarget
        fields = ["upstream", "name", "weight", "position", "rest"]

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        preset = cleaned.get("preset")
        if preset and cleaned.get("rest") is None:
            cleaned["rest"] = rest_agent_preset(preset)
        return cleaned


class AgentTargetInline(admin.StackedInline):
    """The agent's targets; what the last card fetch and health check found is read-only."""

    model = AgentTarget
    form = AgentTargetForm
    extra = 0
    fields = [
        ("upstream", "name", "weight", "position"),
        "preset",
        "rest",
        "card_summary",
        ("interface_url", "protocol_version", "streaming"),
        ("health", "last_checked_at"),
        "last_error",
    ]
    readonly_fields = [
        "card_summary",
        "interface_url",
        "protocol_version",
        "streaming",
        "health",
        "last_checked_at",
        "last_error",
    ]
    verbose_name_plural = "Targets (versions), in order; A2A cards are fetched on save"

    @admin.display(description="Card")
    def card_summary(self, obj: AgentTarget) -> str:
        if obj.pk is None or obj.is_rest:
            return "—"
        return obj.card_summary or "Not fetched yet."


@admin.register(Agent)
class AgentAdmin(GatewayChangeAdmin):
    list_display = ["product", "affinity", "requests_per_minute", "target_count", "unhealthy"]
    list_select_related = ["product"]
    search_fields = ["product__name", "product__slug"]
    inlines = [AgentTargetInline]
    actions = ["fetch_cards_now"]
    fields = [
        "product",
        "affinity",
        "requests_per_minute",
        "health_check_seconds",
        "skills",
        "served_card",
    ]
    readonly_fields = ["served_card"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Agent]:
        # The counts come with the list query, not from queries per row.
        return (
            super()
            .get_queryset(request)
            .annotate(
                target_count=Count("targets"),
                unhealthy_count=Count(
                    "targets", filter=Q(targets__health=AgentTarget.Health.UNHEALTHY)
                ),
            )
        )

    def get_readonly_fields(self, request, obj=None):  # type: ignore[no-untyped-def]
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "product"] if obj is not None else fields

    @admin.display(description="Targets", ordering="target_count")
    def target_count(self, obj: Agent) -> int:
        return getattr(obj, "target_count", 0)

    @admin.display(description="Unhealthy", ordering="unhealthy_count")
    def unhealthy(self, obj: Agent) -> int:
        return getattr(obj, "unhealthy_count", 0)

    @admin.display(description="Card served (the gateway puts its own interfaces in)")
    def served_card(self, obj: Agent) -> SafeString | str:
        if obj.pk is None:
            return "—"
        return _json_block(services.agent_served_card(agent=obj))

    def save_formset(self, request, form, formset, change):  # type: ignore[no-untyped-def]
        super().save_formset(request, form, formset, change)
        if formset.model is AgentTarget and (formset.new_objects or formset.changed_objects):
            # A new target, or one moved to another upstream: fetch its card.
            services.agents_schedule_refresh(agents=[form.instance])

    def save_related(self, request, form, formsets, change):  # type: ignore[no-untyped-def]
        super().save_related(request, form, formsets, change)
        # The served card (a target removed, skills edited) is what the search matches.
        services.product_refresh_search_document(product=form.instance.product)

    @admin.action(description="Fetch agent cards now (and check REST agents)")
    def fetch_cards_now(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        agents = list(queryset)
        services.agents_schedule_refresh(agents=agents)
        self.message_user(
            request,
            f"Checking {len(agents)} agent{'s' if len(agents) != 1 else ''}; reload in a few "
            "seconds.",
            messages.INFO,
        )
