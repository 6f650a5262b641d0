"""The catalog's admin: upstreams and their credential pools, products, model routes, plans.

Secrets are write-only here: password inputs that never render a value, a "secret set"
flag in their place, and no POST parameter of an upstream's page in error reports.
Every save of something the gateway serves publishes a revision (GatewayChangeAdmin).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.utils.decorators import method_decorator
from django.utils.html import format_html_join
from django.utils.safestring import SafeString
from django.views.decorators.debug import sensitive_post_parameters

from catalog import services
from catalog.models import (
    MAX_TAG_LENGTH,
    MAX_TAGS,
    OPTION_KEYS,
    Category,
    ModelRoute,
    Plan,
    Product,
    RouteTarget,
    Upstream,
    UpstreamCredential,
    validate_vendor_secret,
)
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


OPTION_LABELS = {"api_version": "API version (Azure OpenAI)", "region": "Region (AWS Bedrock)"}
OPTION_PLACEHOLDERS = {"api_version": "2024-10-21", "region": "us-east-1"}


class VendorOptionsWidget(forms.MultiWidget):
    """One labelled text input per vendor option."""

    def __init__(self) -> None:
        super().__init__(
            {
                key: forms.TextInput(
                    attrs={
                        "placeholder": OPTION_PLACEHOLDERS[key],
                        "aria-label": OPTION_LABELS[key],
                        "size": 20,
                    }
                )
                for key in OPTION_KEYS
            }
        )

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
        return format_html_join("", '<span style="margin-right:1.5em">{} {}</span>', parts)


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
        ":SESSION_TOKEN after it for temporary credentials. Leave empty to keep the current one."
    )
    clear_secret = forms.BooleanField(required=False, help_text="Remove the stored secret.")
    options = VendorOptionsField(
        label="Vendor options",
        help_text="Azure OpenAI: the api_version of the deployment API (empty: the v1 API). "
        "AWS Bedrock: the region, unless the base URL names it. Other vendors take none.",
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
    inlines = [ModelRouteInline, PlanInline]
    actions = ["retire"]

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
