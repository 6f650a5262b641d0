from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib import admin
from django.db.models import Case, Subquery, When
from django.utils import timezone

from gatewaysync.models import GatewayInstance, Revision
from gatewaysync.services import gateway_changed


@admin.register(Revision)
class RevisionAdmin(admin.ModelAdmin):
    list_display = ["number", "created_at", "credentials", "is_delta"]
    fields = ["number", "created_at", "content_hash", "credentials"]
    readonly_fields = ["number", "created_at", "content_hash", "credentials"]

    @admin.display(boolean=True, description="Delta")
    def is_delta(self, obj: Revision) -> bool:
        return obj.delta is not None

    def get_queryset(self, request):  # type: ignore[no-untyped-def]
        # The documents can be large; the list never needs them.
        return super().get_queryset(request).defer("document", "delta")

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False

    def has_change_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return False


@admin.register(GatewayInstance)
class GatewayInstanceAdmin(admin.ModelAdmin):
    list_display = [
        "instance_id",
        "admin_url",
        "applied_revision",
        "lag",
        "last_seen_at",
        "is_live",
        "last_delivery_error",
    ]
    readonly_fields = [
        "instance_id",
        "admin_url",
        "applied_revision",
        "version",
        "pid",
        "started_at",
        "first_seen_at",
        "last_seen_at",
        "last_delivery_error",
    ]

    def get_queryset(self, request):  # type: ignore[no-untyped-def]
        # Lag and liveness come from the database in the list query itself, not from a
        # query per row.
        latest = Revision.objects.order_by("-number").values("number")[:1]
        cutoff = timezone.now() - timedelta(seconds=settings.PORTICO_GATEWAY_INSTANCE_TTL)
        return (
            super()
            .get_queryset(request)
            .annotate(
                latest_number=Subquery(latest),
                live=Case(When(last_seen_at__gte=cutoff, then=True), default=False),
            )
        )

    @admin.display(description="Lag (revisions)")
    def lag(self, obj: GatewayInstance) -> int | str:
        latest = getattr(obj, "latest_number", None)
        if latest is None:
            return "—"
        return latest - (obj.applied_revision or 0)

    @admin.display(boolean=True, description="Live")
    def is_live(self, obj: GatewayInstance) -> bool:
        return bool(getattr(obj, "live", False))

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False


class GatewayChangeAdmin(admin.ModelAdmin):
    """Admin for models the gateway depends on: every change publishes a revision.

    It also composes with another admin (``class UserAdmin(GatewayChangeAdmin,
    DjangoUserAdmin)``): its methods defer to the next admin in line.
    """

    def save_model(self, request, obj, form, change):  # type: ignore[no-untyped-def]
        super().save_model(request, obj, form, change)
        gateway_changed()

    def save_related(self, request, form, formsets, change):  # type: ignore[no-untyped-def]
        super().save_related(request, form, formsets, change)
        gateway_changed()

    def delete_model(self, request, obj):  # type: ignore[no-untyped-def]
        super().delete_model(request, obj)
        gateway_changed()

    def delete_queryset(self, request, queryset):  # type: ignore[no-untyped-def]
        super().delete_queryset(request, queryset)
        gateway_changed()
