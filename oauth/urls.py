"""The authorization server's routes, in the ``oauth:`` namespace.

Protocol endpoints have no trailing slash (what clients are configured with, and what
the metadata names); the developer's pages follow the portal's style.
"""

from django.urls import path

from oauth import views

app_name = "oauth"

urlpatterns = [
    path(
        ".well-known/oauth-authorization-server",
        views.server_metadata,
        name="server_metadata",
    ),
    path("oauth/register", views.register, name="register"),
    path("oauth/authorize", views.authorize, name="authorize"),
    path("oauth/authorize/decide", views.authorize_decide, name="authorize_decide"),
    path("oauth/token", views.token, name="token"),
    path("oauth/revoke", views.revoke, name="revoke"),
    path("oauth/grants/<int:pk>/revoke/", views.grant_revoke, name="grant_revoke"),
]
