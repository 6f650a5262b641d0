from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils.html import format_html

from config.admin import ReadOnlyAdmin
from gatewaysync.admin import GatewayChangeAdmin
from portal import services
from portal.models import AuditEvent, Membership, Portal, PortalDomain


class PortalDomainInline(admin.TabularInline):
    model = PortalDomain
    extra = 1


class PortalAdminForm(forms.ModelForm):
    logo = forms.FileField(
        required=False,
        help_text="PNG, JPEG, GIF or WebP, up to 2 MB; stored as a PNG at most 512 px a side.",
    )
    remove_logo = forms.BooleanField(required=False)

    class Meta:
        model = Portal
        fields = [
            "name",
            "slug",
            "is_default",
            "tagline",
            "primary_color",
            "developer_approval",
            "subscription_approval",
            "signup_enabled",
            "password_login_enabled",
            "social_apps",
        ]

    def clean_logo(self) -> services.LogoImage | None:
        upload = self.cleaned_data.get("logo")
        if not upload:
            return None
        try:
            return services.logo_from_upload(upload)
        except ValidationError as exc:
            raise ValidationError(exc.message_dict["logo"]) from exc

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not data.get("password_login_enabled", True) and not data.get("social_apps"):
            raise ValidationError(
                "Keep email and password sign-in on, or choose at least one sign-in "
                "provider: otherwise nobody can sign in to this portal."
            )
        return data


@admin.register(Portal)
class PortalAdmin(admin.ModelAdmin):
    """Portals: branding, the domains that choose them, approval and sign-in rules."""

    form = PortalAdminForm
    inlines = [PortalDomainInline]
    list_display = ["name", "slug", "is_default", "developer_approval", "subscription_approval"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["current_logo"]
    filter_horizontal = ["social_apps"]
    fieldsets = [
        (None, {"fields": ["name", "slug", "is_default"]}),
        (
            "Branding",
            {"fields": ["tagline", "primary_color", "current_logo", "logo", "remove_logo"]},
        ),
        (
            "Developers",
            {"fields": ["developer_approval", "subscription_approval"]},
        ),
        (
            "Sign-in methods",
            {"fields": ["signup_enabled", "password_login_enabled", "social_apps"]},
        ),
    ]

    @admin.display(description="Current logo")
    def current_logo(self, obj: Portal) -> str:
        if not obj.pk or not obj.logo_version:
            return "—"
        url = reverse("portal:logo", args=[obj.slug, obj.logo_version])
        return format_html('<img src="{}" alt="" style="max-height:64px">', url)

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        super().save_model(request, obj, form, change)
        if form.cleaned_data.get("logo"):
            services.portal_set_logo(portal=obj, logo=form.cleaned_data["logo"])
        elif form.cleaned_data.get("remove_logo") and obj.logo_version:
            services.portal_clear_logo(portal=obj)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    """Developers per portal: approve the pending, suspend the misbehaving."""

    list_display = ["user", "portal", "status", "created_at", "decided_at"]
    list_filter = ["status", "portal"]
    list_select_related = ["user", "portal"]
    search_fields = ["user__email", "user__username"]
    readonly_fields = ["portal", "user", "status", "created_at", "decided_at"]
    actions = ["approve", "suspend"]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False  # developers join by signing up or signing in

    def _set(self, request, queryset, status, verb):  # type: ignore[no-untyped-def]
        for membership in queryset:
            services.membership_set_status(membership=membership, status=status)
        self.message_user(request, f"{verb} {len(queryset)} developers.", messages.SUCCESS)

    @admin.action(description="Approve selected developers")
    def approve(self, request, queryset):  # type: ignore[no-untyped-def]
        self._set(request, queryset, Membership.Status.APPROVED, "Approved")

    @admin.action(description="Suspend selected developers (their keys stop working)")
    def suspend(self, request, queryset):  # type: ignore[no-untyped-def]
        self._set(request, queryset, Membership.Status.SUSPENDED, "Suspended")


admin.site.unregister(User)


@admin.register(User)
class UserAdmin(GatewayChangeAdmin, DjangoUserAdmin):
    """Django's user admin, plus: deactivating or deleting a user reaches the gateway."""


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """The audit log, read-only: nobody edits history."""

    list_display = ["at", "actor_label", "action", "target_type", "target_label", "ip_address"]
    list_filter = ["action", "target_type"]
    search_fields = ["actor_label", "target_label", "target_id", "action"]
    date_hierarchy = "at"
