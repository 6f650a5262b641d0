from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import ValidationError
from django.shortcuts import render
from django.utils.html import format_html

from catalog.admin import CommaSeparatedField
from catalog.models import McpTool, Product
from config.admin import ReadOnlyAdmin
from consumers import services
from consumers.models import Consumer, Credential, Subscription, UsageRecord
from gatewaysync.admin import GatewayChangeAdmin


class RejectForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=2000,
        help_text="The developer reads this in the portal and in the email.",
    )


class CredentialInline(admin.TabularInline):
    model = Credential
    extra = 0
    can_delete = False
    fields = ["name", "display_prefix", "created_at", "expires_at", "last_used_at", "revoked_at"]
    readonly_fields = [
        "name",
        "display_prefix",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    ]

    def has_add_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        # Keys are issued to developers in the portal, where they are shown once.
        return False


@admin.register(Consumer)
class ConsumerAdmin(GatewayChangeAdmin):
    list_display = ["name", "owner", "status", "created_at"]
    list_filter = ["status"]
    list_select_related = ["owner"]
    search_fields = ["name", "owner__username", "owner__email"]
    inlines = [CredentialInline]


@admin.register(Credential)
class CredentialAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "display_prefix",
        "consumer",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    ]
    list_select_related = ["consumer"]
    list_filter = ["revoked_at"]
    search_fields = ["name", "display_prefix", "consumer__name"]
    fields = ["consumer", "name", "display_prefix", "created_at", "expires_at", "last_used_at"]
    readonly_fields = [
        "consumer",
        "name",
        "display_prefix",
        "created_at",
        "expires_at",
        "last_used_at",
        "revoked_at",
    ]
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_delete_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False  # revoke instead, so usage keeps pointing at a known key

    @admin.action(description="Revoke selected keys")
    def revoke(self, request, queryset):  # type: ignore[no-untyped-def]
        for credential in queryset:
            services.credential_revoke(credential=credential)
        self.message_user(request, f"Revoked {len(queryset)} keys.", messages.SUCCESS)


class ToolNamesField(CommaSeparatedField):
    """An allow-list of tool names; empty is ``None``: every tool."""

    def to_python(self, value: object) -> list[str] | None:  # type: ignore[override]
        return super().to_python(value) or None


class SubscriptionForm(forms.ModelForm):
    requests_per_minute = forms.IntegerField(
        label="Requests per minute (this app)",
        required=False,
        min_value=1,
        help_text="A limit for this app alone on this product, on top of its plan's. Empty: "
        "the plan's only.",
    )
    allowed_tools = ToolNamesField(
        required=False,
        help_text="MCP products only: comma-separated names of the tools this app may list "
        "and call. Empty: every tool the product serves.",
    )

    class Meta:
        model = Subscription
        fields = ["consumer", "product", "plan", "allowed_tools", "requests_per_minute"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        product_id = self.instance.product_id
        if product_id is not None:
            names = list(
                McpTool.objects.filter(server__product_id=product_id).values_list("name", flat=True)
            )
            if names:
                # Escaped: the admin shows help texts as HTML, and the server names its tools.
                field = self.fields["allowed_tools"]
                field.help_text = format_html(
                    "{} This product's tools: {}.", field.help_text, ", ".join(names)
                )

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        tools, product = cleaned.get("allowed_tools"), cleaned.get("product")
        if tools is not None and isinstance(product, Product):
            for problem in services.allowed_tools_errors(product=product, names=tools):
                self.add_error("allowed_tools", problem)
        return cleaned


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    form = SubscriptionForm
    list_display = ["consumer", "product", "plan", "status", "created_at", "decided_at"]
    list_filter = ["status", "product"]
    list_select_related = ["consumer", "product", "plan", "plan__product"]
    readonly_fields = ["status", "decision_reason", "created_at", "decided_at"]
    actions = ["approve", "reject", "revoke"]

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        tools = form.cleaned_data.get("allowed_tools")
        rpm = form.cleaned_data.get("requests_per_minute")
        if change:
            super().save_model(request, obj, form, change)
            # Through the services: audited, and the gateway learns it.
            if "allowed_tools" in form.changed_data:
                services.subscription_set_allowed_tools(subscription=obj, tools=tools)
            if "requests_per_minute" in form.changed_data:
                services.subscription_set_requests_per_minute(
                    subscription=obj, requests_per_minute=rpm
                )
            return
        try:
            created = services.subscription_create(
                consumer=obj.consumer, product=obj.product, plan=obj.plan
            )
            if tools is not None:
                services.subscription_set_allowed_tools(subscription=created, tools=tools)
            if rpm is not None:
                services.subscription_set_requests_per_minute(
                    subscription=created, requests_per_minute=rpm
                )
        except ValidationError as exc:
            self.message_user(request, "; ".join(exc.messages), messages.ERROR)
            return
        obj.pk = created.pk

    def _each(self, request, queryset, action, verb):  # type: ignore[no-untyped-def]
        done = 0
        for subscription in queryset:
            try:
                action(subscription)
                done += 1
            except ValidationError as exc:
                self.message_user(request, f"{subscription}: {exc.messages[0]}", messages.WARNING)
        self.message_user(request, f"{verb} {done} subscriptions.", messages.SUCCESS)

    @admin.action(description="Approve selected subscriptions")
    def approve(self, request, queryset):  # type: ignore[no-untyped-def]
        self._each(
            request, queryset, lambda s: services.subscription_approve(subscription=s), "Approved"
        )

    @admin.action(description="Reject selected subscriptions (with a reason)…")
    def reject(self, request, queryset):  # type: ignore[no-untyped-def]
        # An intermediate page asks for the reason the developer will read.
        form = RejectForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            reason = form.cleaned_data["reason"]
            self._each(
                request,
                queryset,
                lambda subscription: services.subscription_reject(
                    subscription=subscription, reason=reason
                ),
                "Rejected",
            )
            return None
        return render(
            request,
            "admin/consumers/subscription/reject.html",
            {
                **self.admin_site.each_context(request),
                "title": "Reject subscriptions",
                "subscriptions": queryset,
                "form": form,
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
                "opts": self.model._meta,
            },
        )

    @admin.action(description="Revoke selected subscriptions")
    def revoke(self, request, queryset):  # type: ignore[no-untyped-def]
        self._each(
            request, queryset, lambda s: services.subscription_revoke(subscription=s), "Revoked"
        )


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = ["ts", "request_id", "route", "model", "status", "latency_ms", "consumer_id"]
    list_filter = ["status", "route"]
    date_hierarchy = "ts"
