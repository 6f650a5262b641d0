from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import Count

from catalog import services
from catalog.models import MAX_TAG_LENGTH, MAX_TAGS, Category, ModelRoute, Plan, Product, Upstream
from gatewaysync.admin import GatewayChangeAdmin
from portal.models import Portal


class UpstreamForm(forms.ModelForm):
    # Write-only: the widget never renders the stored value back into the page.
    secret = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="The vendor API key. Leave empty to keep the current one.",
    )
    clear_secret = forms.BooleanField(required=False, help_text="Remove the stored secret.")

    class Meta:
        model = Upstream
        fields = ["name", "vendor", "base_url", "timeout_seconds"]


@admin.register(Upstream)
class UpstreamAdmin(GatewayChangeAdmin):
    form = UpstreamForm
    list_display = ["name", "vendor", "base_url", "has_secret", "timeout_seconds"]

    @admin.display(boolean=True, description="Secret set")
    def has_secret(self, obj: Upstream) -> bool:
        return obj.has_secret

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        super().save_model(request, obj, form, change)
        if form.cleaned_data.get("clear_secret"):
            services.upstream_set_secret(upstream=obj, secret=None)
        elif form.cleaned_data.get("secret"):
            services.upstream_set_secret(upstream=obj, secret=form.cleaned_data["secret"])


class ModelRouteInline(admin.TabularInline):
    model = ModelRoute
    extra = 0


class PlanInline(admin.TabularInline):
    model = Plan
    extra = 0


class TagsField(forms.CharField):
    """Tags typed as one comma-separated line, stored as a list."""

    def prepare_value(self, value: object) -> object:
        if isinstance(value, list):
            return ", ".join(str(tag) for tag in value)
        return value

    def to_python(self, value: object) -> list[str]:  # type: ignore[override]
        text = super().to_python(value)
        return services.normalize_tags((text or "").split(","))


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
    list_display = ["name", "product", "requests_per_minute", "tokens_per_minute", "tokens_per_day"]
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
