from django.urls import path

from gatewaysync import apis

urlpatterns = [
    path("heartbeat", apis.GatewayHeartbeatApi.as_view(), name="gateway-heartbeat"),
    path("usage", apis.GatewayUsageIngestApi.as_view(), name="gateway-usage"),
]
