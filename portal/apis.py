"""The REST API's shared parts, its docs page, and personal access tokens.

Every endpoint of ``/api/v1/`` is one :class:`PorticoApi` subclass per operation, named
``<Entity><Action>Api``, with nested ``InputSerializer`` / ``OutputSerializer`` that
name exactly the fields a caller may send and will see. Views parse input, call a
service or selector, and render; the rules live in the services.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import QuerySet
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import exceptions, serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import AllowAny, BasePermission, IsAuthenticated
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.reverse import reverse
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from portal import selectors, services

# ---------------------------------------------------------------------------------------
# Shared parts


class ApiPagination(LimitOffsetPagination):
    """``?limit=&offset=``; every list answers ``{count, next, previous, results}``."""

    default_limit = 50
    max_limit = 200


def _error_detail(exc: DjangoValidationError) -> dict[str, Any]:
    """A service's ``ValidationError`` in the shape of DRF's serializer errors."""
    non_field = api_settings.NON_FIELD_ERRORS_KEY
    if hasattr(exc, "error_dict"):
        return {
            (non_field if field == NON_FIELD_ERRORS else field): messages
            for field, messages in exc.message_dict.items()
        }
    return {non_field: exc.messages}


class PorticoApi(APIView):
    """Base of the REST API's views.

    A service's ``django.core.exceptions.ValidationError`` becomes a 400 with its
    messages, like a serializer's. The nested serializers get OpenAPI component names
    after their view (``AppCreateInput``…), since every view names them alike.
    """

    # Read by drf-spectacular to document the list responses as paginated.
    pagination_class: type[LimitOffsetPagination] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        stem = cls.__name__.removesuffix("Api")
        for attribute, suffix in (("InputSerializer", "Input"), ("OutputSerializer", "Output")):
            serializer = cls.__dict__.get(attribute)
            # Only where it is defined: a view reusing another's serializer keeps its name.
            if serializer is not None and serializer.__qualname__.startswith(cls.__qualname__):
                extend_schema_serializer(component_name=stem + suffix)(serializer)

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, DjangoValidationError):
            exc = exceptions.ValidationError(detail=_error_detail(exc))
        return super().handle_exception(exc)

    def paginate(
        self, request: Request, queryset: QuerySet[Any], serializer: type[serializers.Serializer]
    ) -> Response:
        paginator = (self.pagination_class or ApiPagination)()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(serializer(page, many=True).data)


def request_user(request: Request) -> User:
    """The signed-in user of a view whose permissions require one."""
    user = request.user
    if not isinstance(user, User):  # the permission classes make this unreachable
        raise exceptions.NotAuthenticated()
    return user


def shown_once(data: Any) -> Response:
    """A 201 carrying a secret (a key, a token) that is never shown again.

    ``no-store``: no browser, proxy or cache may keep a copy of the response.
    """
    response = Response(data, status=201)
    response["Cache-Control"] = "no-store"
    return response


class SessionOnly(BasePermission):
    """Signed in through the browser session, not with a personal access token.

    A leaked token must not be able to mint more tokens, nor revoke the owner's.
    """

    message = (
        "Personal access tokens are managed from a signed-in browser session, not with a token."
    )

    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.successful_authenticator, SessionAuthentication)


class AccessTokenScheme(OpenApiAuthenticationExtension):
    """Documents ``AccessTokenAuthentication`` as an HTTP bearer scheme."""

    target_class = "portal.authentication.AccessTokenAuthentication"
    name = "personalAccessToken"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, str]:
        return build_bearer_security_scheme_object(
            header_name="AUTHORIZATION",
            token_prefix="Bearer",  # noqa: S106 (the scheme name, not a secret)
            bearer_format="portico_pat_…",
        )


def schema_public_endpoints(endpoints: list[tuple[str, str, str, Any]]) -> list[Any]:
    """drf-spectacular preprocessing hook: document ``/api/v1/`` only.

    Keeps the gateways' own endpoints (``/api/v1/gateway/``) out of the public schema,
    also when it is generated from the whole URL conf (``manage.py spectacular``).
    """
    return [
        (path, regex, method, callback)
        for path, regex, method, callback in endpoints
        if path.startswith("/api/v1/") and not path.startswith("/api/v1/gateway/")
    ]


# ---------------------------------------------------------------------------------------
# Personal access tokens


class AccessTokenOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    display_prefix = serializers.CharField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)


class AccessTokenCreatedSerializer(AccessTokenOutputSerializer):
    token = serializers.CharField(help_text="Shown in this response only; store it now.")


class AccessTokenListApi(PorticoApi):
    """Your personal access tokens, for calling this API from scripts.

    Send one as `Authorization: Bearer portico_pat_…`. Tokens are created, listed and
    revoked from a signed-in browser session only. A new token is shown once.
    """

    permission_classes = [IsAuthenticated, SessionOnly]
    pagination_class = ApiPagination

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=120)
        expires_at = serializers.DateTimeField(required=False, allow_null=True)

    @extend_schema(responses=AccessTokenOutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        tokens = selectors.access_token_list_for_user(user=request_user(request))
        return self.paginate(request, tokens, AccessTokenOutputSerializer)

    @extend_schema(request=InputSerializer, responses={201: AccessTokenCreatedSerializer})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        token, plaintext = services.access_token_create(
            user=request_user(request),
            name=data.validated_data["name"],
            expires_at=data.validated_data.get("expires_at"),
        )
        # AccessTokenCreatedSerializer's shape: the fields and, this once, the token.
        return shown_once({**AccessTokenOutputSerializer(token).data, "token": plaintext})


class AccessTokenRevokeApi(PorticoApi):
    """Revoke one of your tokens; requests with it are refused from now on."""

    permission_classes = [IsAuthenticated, SessionOnly]

    @extend_schema(request=None, responses=AccessTokenOutputSerializer)
    def post(self, request: Request, pk: int) -> Response:
        token = selectors.access_token_get_for_user(user=request_user(request), pk=pk)
        token = services.access_token_revoke(token=token)
        return Response(AccessTokenOutputSerializer(token).data)


# ---------------------------------------------------------------------------------------
# Docs


class ApiDocsApi(PorticoApi):
    """Portico's REST API, version 1.

    **Authentication.** From a browser, sign in to the portal: the session works here
    (state changes need the CSRF token, as on every page). From scripts, create a
    personal access token at `/api/v1/tokens/` while signed in, and send it as
    `Authorization: Bearer portico_pat_…`.

    **Lists** are paginated with `?limit=&offset=` and answer
    `{count, next, previous, results}`. **Errors** are JSON: `{"detail": …}`, or the
    invalid fields with their messages.

    The operations are listed below; the OpenAPI 3 schema is at `schema`. Every endpoint
    can also be opened in the browser, where this same page style lets you try it.
    """

    permission_classes = [AllowAny]
    renderer_classes = [JSONRenderer, BrowsableAPIRenderer]
    # Set by config/api_urls.py: the URL patterns the schema and this page describe.
    patterns: list[Any] | None = None

    @extend_schema(exclude=True)
    def get(self, request: Request) -> Response:
        generator = SchemaGenerator(patterns=self.patterns)
        schema = generator.get_schema(request=request, public=True)
        operations = [
            {
                "method": method.upper(),
                "path": path,
                "summary": (operation.get("description") or "").split("\n", 1)[0],
                "operation_id": operation.get("operationId"),
            }
            for path, methods in schema.get("paths", {}).items()
            for method, operation in methods.items()
        ]
        return Response(
            {
                "schema": reverse("api-docs:schema", request=request),
                "operations": operations,
            }
        )
