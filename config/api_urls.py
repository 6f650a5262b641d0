"""Routes of the REST API.

- ``urlpatterns``: the developer and admin endpoints, included at ``api/v1/`` under the
  namespace ``api``;
- ``schema_urlpatterns``: the OpenAPI 3 schema (``schema/``) and the docs page
  (``docs/``), included at ``api/`` under the namespace ``api-docs``.
"""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.renderers import OpenApiJsonRenderer, OpenApiYamlRenderer
from drf_spectacular.views import SpectacularAPIView

from catalog import apis as catalog_apis
from consumers import apis as consumer_apis
from portal import apis as portal_apis

urlpatterns: list[URLPattern | URLResolver] = [
    # Catalog: anyone reads; staff publish and retire.
    path("products/", catalog_apis.ProductListApi.as_view(), name="product-list"),
    path("products/<slug:slug>/", catalog_apis.ProductDetailApi.as_view(), name="product-detail"),
    path(
        "products/<slug:slug>/publish/",
        catalog_apis.ProductPublishApi.as_view(),
        name="product-publish",
    ),
    path(
        "products/<slug:slug>/retire/",
        catalog_apis.ProductRetireApi.as_view(),
        name="product-retire",
    ),
    # The developer's own apps, keys and subscriptions.
    path("apps/", consumer_apis.AppListApi.as_view(), name="app-list"),
    path("apps/<int:pk>/", consumer_apis.AppDetailApi.as_view(), name="app-detail"),
    path("apps/<int:pk>/keys/", consumer_apis.KeyListApi.as_view(), name="key-list"),
    path(
        "apps/<int:pk>/subscriptions/",
        consumer_apis.SubscriptionListApi.as_view(),
        name="subscription-list",
    ),
    path("keys/<int:pk>/revoke/", consumer_apis.KeyRevokeApi.as_view(), name="key-revoke"),
    path("keys/<int:pk>/rotate/", consumer_apis.KeyRotateApi.as_view(), name="key-rotate"),
    path(
        "subscriptions/<int:pk>/cancel/",
        consumer_apis.SubscriptionCancelApi.as_view(),
        name="subscription-cancel",
    ),
    # Staff: subscription review.
    path(
        "subscriptions/",
        consumer_apis.SubscriptionReviewListApi.as_view(),
        name="subscription-review-list",
    ),
    path(
        "subscriptions/<int:pk>/approve/",
        consumer_apis.SubscriptionApproveApi.as_view(),
        name="subscription-approve",
    ),
    path(
        "subscriptions/<int:pk>/reject/",
        consumer_apis.SubscriptionRejectApi.as_view(),
        name="subscription-reject",
    ),
    # Personal access tokens for scripts (managed from a browser session).
    path("tokens/", portal_apis.AccessTokenListApi.as_view(), name="token-list"),
    path(
        "tokens/<int:pk>/revoke/",
        portal_apis.AccessTokenRevokeApi.as_view(),
        name="token-revoke",
    ),
]

# What the schema and the docs describe: the public API as mounted, and nothing else
# (not the gateways' own endpoints, which live under api/v1/gateway/).
_documented: list[URLPattern | URLResolver] = [path("api/v1/", include((urlpatterns, "api")))]

schema_urlpatterns: list[URLPattern | URLResolver] = [
    path(
        "schema/",
        SpectacularAPIView.as_view(
            patterns=_documented,
            # JSON unless the client asks for YAML (Accept or ?format=yaml).
            renderer_classes=[OpenApiJsonRenderer, OpenApiYamlRenderer],
        ),
        name="schema",
    ),
    path("docs/", portal_apis.ApiDocsApi.as_view(patterns=_documented), name="docs"),
]
