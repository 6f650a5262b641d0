"""The developer portal's pages, in one namespace: ``portal:<name>``."""

from django.urls import path

from catalog import views as catalog_views
from consumers import views as consumer_views
from portal import usage_views, views

app_name = "portal"

urlpatterns = [
    path("", catalog_views.catalog, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("branding/<slug:slug>/logo-<str:version>.png", views.portal_logo, name="logo"),
    # Catalog (catalog/views.py)
    path("catalog/", catalog_views.catalog, name="catalog"),
    path("catalog/<str:kind>/", catalog_views.catalog, name="catalog_kind"),
    path("products/<slug:slug>/", catalog_views.product_detail, name="product"),
    # The developer's own apps, keys and subscriptions (consumers/views.py)
    path("apps/", consumer_views.app_list, name="apps"),
    path("apps/<int:pk>/", consumer_views.app_detail, name="app"),
    path("apps/<int:pk>/rename/", consumer_views.app_rename, name="app_rename"),
    path("apps/<int:pk>/delete/", consumer_views.app_delete, name="app_delete"),
    path("apps/<int:pk>/keys/", consumer_views.key_create, name="key_create"),
    path("keys/<int:pk>/revoke/", consumer_views.key_revoke, name="key_revoke"),
    path("keys/<int:pk>/rotate/", consumer_views.key_rotate, name="key_rotate"),
    path("subscribe/<slug:slug>/", consumer_views.subscribe, name="subscribe"),
    path(
        "subscriptions/<int:pk>/cancel/",
        consumer_views.subscription_cancel,
        name="subscription_cancel",
    ),
    # Personal access tokens for the REST API (portal/views.py)
    path("tokens/", views.tokens, name="tokens"),
    path("tokens/<int:pk>/revoke/", views.token_revoke, name="token_revoke"),
    # The try-it playground (portal/views.py, portal/playground.py)
    path("playground/", views.playground, name="playground"),
    path("playground/chat/", views.playground_chat, name="playground_chat"),
    path("playground/mcp/", views.playground_mcp, name="playground_mcp"),
    path("playground/agents/", views.playground_agent, name="playground_agent"),
    path("playground/agents/send/", views.playground_agent_send, name="playground_agent_send"),
    # Usage dashboards (portal/usage_views.py)
    path("usage/", usage_views.usage, name="usage"),
    path("usage.csv", usage_views.usage_csv, name="usage_csv"),
]
