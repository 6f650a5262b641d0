"""Endpoints the gateways call: heartbeats and usage ingest (bearer-token auth)."""

from __future__ import annotations

from typing import Any

import msgspec
from django.db import transaction
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from consumers.services import usage_records_ingest
from gateway import schema
from gatewaysync import selectors, services
from gatewaysync.compiler import gateway_keys


class GatewayPrincipal:
    """The authenticated caller of the gateway endpoints: a gateway process."""

    is_authenticated = True


class GatewayTokenAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[GatewayPrincipal, None] | None:
        header = request.META.get("HTTP_AUTHORIZATION")
        if not gateway_keys().check_bearer(header):
            raise exceptions.AuthenticationFailed("invalid gateway token")
        return GatewayPrincipal(), None

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="portico-gateway"'


class IsGateway(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.user, GatewayPrincipal)


class _GatewayApi(APIView):
    authentication_classes = [GatewayTokenAuthentication]
    permission_classes = [IsGateway]

    def decode(self, request: Request, kind: type[Any]) -> Any:
        try:
            return msgspec.json.decode(request.body, type=kind)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise exceptions.ValidationError({"detail": str(exc)}) from exc


class GatewayHeartbeatApi(_GatewayApi):
    def post(self, request: Request) -> Response:
        beat: schema.Heartbeat = self.decode(request, schema.Heartbeat)
        instance = services.instance_heartbeat(beat=beat)
        latest = selectors.revision_latest_number()
        applied = instance.applied_revision
        if applied is not None and (latest is None or applied > latest):
            # The gateway is ahead of this database; see services.revision_publish.
            services.gateway_changed()
        elif latest is not None and applied != latest:
            from gatewaysync.tasks import revision_deliver_task

            transaction.on_commit(lambda: revision_deliver_task.delay(instance.pk))
        return Response({"latest_revision": latest})


class GatewayUsageIngestApi(_GatewayApi):
    def post(self, request: Request) -> Response:
        batch: schema.UsageBatch = self.decode(request, schema.UsageBatch)
        stored = usage_records_ingest(events=batch.events)
        return Response({"received": len(batch.events), "stored": stored})
