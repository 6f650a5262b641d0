"""Top-level URL routes of the control plane."""

from django.contrib import admin
from django.urls import include, path

from config import api_urls

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("api/v1/gateway/", include("gatewaysync.urls")),
    path("api/v1/", include(("config.api_urls", "api"))),
    path("api/", include((api_urls.schema_urlpatterns, "api-docs"))),
    path("", include("oauth.urls")),
    path("", include("portal.urls")),
]
