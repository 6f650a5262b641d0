"""Top-level URL routes of the control plane."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/gateway/", include("gatewaysync.urls")),
    path("", include("portal.urls")),
]
