from __future__ import annotations

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import User

from config.admin import ReadOnlyAdmin
from gatewaysync.admin import GatewayChangeAdmin
from portal import services
from portal.models import AuditEvent, Membership, Portal, PortalDomain


class PortalDomainInline(admin.TabularInline):
    model = PortalDomain
    extra = 1


@admin.register(Portal)
class PortalAdmin(admin.ModelAdmin):
    inlines = [PortalDomainInline]
    list_display = ["name", "slug", "is_default", "developer_approval", "subscription_approval"]
    prepopulated_fields = {"slug": ["name"]}


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
