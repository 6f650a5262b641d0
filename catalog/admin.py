from __future__ import annotations

from django import forms
from django.contrib import admin, messages

from catalog import services
from catalog.models import ModelRoute, Plan, Product, Upstream
from gatewaysync.admin import GatewayChangeAdmin


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


@admin.register(Product)
class ProductAdmin(GatewayChangeAdmin):
    list_display = ["name", "slug", "kind", "status", "updated_at"]
    list_filter = ["kind", "status", "portals"]
    search_fields = ["name", "slug", "description"]
    prepopulated_fields = {"slug": ["name"]}
    filter_horizontal = ["portals"]
    inlines = [ModelRouteInline, PlanInline]
    actions = ["retire"]

    @admin.action(description="Retire (the gateway refuses them from the next revision)")
    def retire(self, request, queryset):  # type: ignore[no-untyped-def]
        for product in queryset:
            services.product_retire(product=product)
        self.message_user(request, f"Retired {len(queryset)} products.", messages.SUCCESS)


@admin.register(Plan)
class PlanAdmin(GatewayChangeAdmin):
    list_display = ["name", "product", "requests_per_minute", "tokens_per_minute", "tokens_per_day"]
    list_select_related = ["product"]
