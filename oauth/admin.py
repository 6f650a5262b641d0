"""OAuth clients and grants in the admin: looked at and revoked, never edited."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from config.admin import ReadOnlyAdmin
from oauth import services
from oauth.models import OAuthClient, OAuthGrant


@admin.register(OAuthClient)
class OAuthClientAdmin(ReadOnlyAdmin):
    """Clients registered themselves (RFC 7591): what they call themselves is
    unverified. They are never deleted, so their grants' ids stay known."""

    list_display = ["client_name", "client_id", "created_at", "registered_from"]
    search_fields = ["client_name", "client_id"]
    fields = readonly_fields = (
        "client_name",
        "client_id",
        "redirect_uris",
        "registered_from",
        "created_at",
    )


@admin.register(OAuthGrant)
class OAuthGrantAdmin(ReadOnlyAdmin):
    """Developers' approvals of MCP clients; revoking one ends its tokens everywhere."""

    list_display = [
        "pk",
        "user",
        "consumer",
        "client",
        "resource",
        "created_at",
        "used_at",
        "revoked_at",
    ]
    list_select_related = ["user", "consumer", "client"]
    list_filter = ["revoked_at"]
    search_fields = ["user__email", "consumer__name", "client__client_name", "resource"]
    fields = readonly_fields = (
        "user",
        "consumer",
        "client",
        "product",
        "resource",
        "scope",
        "created_at",
        "used_at",
        "revoked_at",
        "revoked_reason",
    )
    actions = ["revoke"]

    @admin.action(description="Revoke selected grants")
    def revoke(self, request: HttpRequest, queryset: QuerySet[OAuthGrant]) -> None:
        for grant in queryset:
            services.grant_revoke(grant=grant, reason=f"revoked by {request.user.get_username()}")
        self.message_user(request, f"Revoked {len(queryset)} grants.", messages.SUCCESS)
