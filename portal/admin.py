from __future__ import annotations

from django.contrib import admin

from portal.models import Portal, PortalDomain


class PortalDomainInline(admin.TabularInline):
    model = PortalDomain
    extra = 1


@admin.register(Portal)
class PortalAdmin(admin.ModelAdmin):
    inlines = [PortalDomainInline]
    list_display = ["name", "slug", "is_default", "developer_approval", "subscription_approval"]
    prepopulated_fields = {"slug": ["name"]}
