"""The developer's apps, keys and subscriptions over the REST API, and staff review.

The same flows as the portal pages (consumers/views.py), through the same services and
access helpers: another developer's object is a 404, an admin operation a 403 for
anyone but staff. Keys are shown once, in the response that creates them.
"""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from catalog.selectors import product_get_published
from consumers import selectors, services
from consumers.models import Subscription
from portal.apis import ApiPagination, PorticoApi, request_user, shown_once

# ---------------------------------------------------------------------------------------
# Apps


class AppSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    status = serializers.CharField(help_text="active or suspended (by an administrator).")
    created_at = serializers.DateTimeField()


class AppListApi(PorticoApi):
    """Your apps: each has its own keys and subscriptions."""

    pagination_class = ApiPagination

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=120)

    class OutputSerializer(AppSerializer):
        live_keys = serializers.IntegerField(help_text="Keys not revoked.")

    @extend_schema(responses=OutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        apps = selectors.consumer_list_for_user(user=request_user(request))
        return self.paginate(request, apps.order_by("name", "pk"), self.OutputSerializer)

    @extend_schema(request=InputSerializer, responses={201: AppSerializer})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        app = services.consumer_create(
            owner=request_user(request),
            name=data.validated_data["name"],
            portal=request.portal,
        )
        return Response(AppSerializer(app).data, status=201)


class AppDetailApi(PorticoApi):
    """One of your apps: read it, rename it, or delete it with its keys and subscriptions."""

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=120, required=False)

    @extend_schema(responses=AppSerializer)
    def get(self, request: Request, pk: int) -> Response:
        app = selectors.consumer_get_for_user(user=request_user(request), pk=pk)
        return Response(AppSerializer(app).data)

    @extend_schema(request=InputSerializer, responses=AppSerializer)
    def patch(self, request: Request, pk: int) -> Response:
        app = selectors.consumer_get_for_user(user=request_user(request), pk=pk)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        if "name" in data.validated_data:
            app = services.consumer_rename(consumer=app, name=data.validated_data["name"])
        return Response(AppSerializer(app).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, pk: int) -> Response:
        app = selectors.consumer_get_for_user(user=request_user(request), pk=pk)
        services.consumer_delete(consumer=app)
        return Response(status=204)


# ---------------------------------------------------------------------------------------
# Keys


class KeySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    app = serializers.IntegerField(source="consumer_id")
    name = serializers.CharField()
    display_prefix = serializers.CharField(
        help_text="The key's first characters, to tell keys apart."
    )
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    is_active = serializers.BooleanField()


class KeyCreatedSerializer(KeySerializer):
    key = serializers.CharField(help_text="Shown in this response only; store it now.")


def _issued(issued: services.IssuedCredential) -> dict[str, object]:
    """A new key's fields and, this once, the key itself (``KeyCreatedSerializer``)."""
    return {**KeySerializer(issued.credential).data, "key": issued.key}


class KeyListApi(PorticoApi):
    """An app's keys (display prefixes only), and creating one (shown once)."""

    pagination_class = ApiPagination

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=120, default="default")
        expires_at = serializers.DateTimeField(required=False, allow_null=True)

    @extend_schema(responses=KeySerializer(many=True))
    def get(self, request: Request, pk: int) -> Response:
        app = selectors.consumer_get_for_user(user=request_user(request), pk=pk)
        keys = selectors.credentials_for_consumer(consumer=app).order_by("-created_at", "-pk")
        return self.paginate(request, keys, KeySerializer)

    @extend_schema(request=InputSerializer, responses={201: KeyCreatedSerializer})
    def post(self, request: Request, pk: int) -> Response:
        app = selectors.consumer_get_for_user(user=request_user(request), pk=pk)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        issued = services.credential_create(
            consumer=app,
            name=data.validated_data["name"],
            expires_at=data.validated_data.get("expires_at"),
        )
        return shown_once(_issued(issued))


class KeyRevokeApi(PorticoApi):
    """Revoke a key: the gateways refuse it within moments."""

    @extend_schema(request=None, responses=KeySerializer)
    def post(self, request: Request, pk: int) -> Response:
        credential = selectors.credential_get_for_user(user=request_user(request), pk=pk)
        credential = services.credential_revoke(credential=credential)
        return Response(KeySerializer(credential).data)


class KeyRotateApi(PorticoApi):
    """Replace a key: the new one is shown once; the old one works `grace_seconds` more.

    With `grace_seconds: 0` the old key is revoked at once.
    """

    class InputSerializer(serializers.Serializer):
        grace_seconds = serializers.IntegerField(min_value=0, max_value=30 * 86400)

    class OutputSerializer(KeyCreatedSerializer):
        replaced = KeySerializer(help_text="The old key, with its new expiry or revocation.")

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer})
    def post(self, request: Request, pk: int) -> Response:
        credential = selectors.credential_get_for_user(user=request_user(request), pk=pk)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        issued = services.credential_rotate(
            credential=credential, grace_seconds=data.validated_data["grace_seconds"]
        )
        return shown_once({**_issued(issued), "replaced": KeySerializer(credential).data})


# ---------------------------------------------------------------------------------------
# Subscriptions


class SubscriptionSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    app = serializers.IntegerField(source="consumer_id")
    product = serializers.SlugField(source="product.slug")
    plan = serializers.IntegerField(source="plan_id")
    plan_name = serializers.CharField(source="plan.name")
    status = serializers.ChoiceField(choices=Subscription.Status.choices)
    decision_reason = serializers.CharField()
    created_at = serializers.DateTimeField()
    decided_at = serializers.DateTimeField(allow_null=True)


class SubscriptionListApi(PorticoApi):
    """An app's subscriptions, and asking for one (approved at once or pending review)."""

    pagination_class = ApiPagination

    class InputSerializer(serializers.Serializer):
        product = serializers.SlugField(help_text="A product published on this portal.")
        plan = serializers.IntegerField(help_text="The id of one of the product's plans.")

    @extend_schema(responses=SubscriptionSerializer(many=True))
    def get(self, request: Request, pk: int) -> Response:
        app = selectors.consumer_get_for_user(user=request_user(request), pk=pk)
        subscriptions = selectors.subscriptions_for_consumer(consumer=app).order_by(
            "-created_at", "-pk"
        )
        return self.paginate(request, subscriptions, SubscriptionSerializer)

    @extend_schema(request=InputSerializer, responses={201: SubscriptionSerializer})
    def post(self, request: Request, pk: int) -> Response:
        app = selectors.consumer_get_for_user(user=request_user(request), pk=pk)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        portal = request.portal
        try:
            product = product_get_published(portal=portal, slug=data.validated_data["product"])
        except Http404:
            raise serializers.ValidationError(
                {"product": ["No such product on this portal."]}
            ) from None
        # Only this product's plans are candidates: another product's plan id is unknown here.
        plan = product.plans.filter(pk=data.validated_data["plan"]).first()
        if plan is None:
            raise serializers.ValidationError({"plan": ["No such plan for this product."]})
        subscription = services.subscription_request(
            consumer=app, product=product, plan=plan, portal=portal
        )
        return Response(SubscriptionSerializer(subscription).data, status=201)


class SubscriptionCancelApi(PorticoApi):
    """End a subscription; the app loses access to the product at the gateway."""

    @extend_schema(request=None, responses=SubscriptionSerializer)
    def post(self, request: Request, pk: int) -> Response:
        subscription = selectors.subscription_get_for_user(user=request_user(request), pk=pk)
        subscription = services.subscription_cancel(subscription=subscription)
        return Response(SubscriptionSerializer(subscription).data)


# ---------------------------------------------------------------------------------------
# Staff: subscription review


class SubscriptionReviewListApi(PorticoApi):
    """Staff: every developer's subscriptions, the oldest first; `status=pending` to review."""

    permission_classes = [IsAuthenticated, IsAdminUser]
    pagination_class = ApiPagination

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Subscription.Status.choices, required=False)

    class OutputSerializer(SubscriptionSerializer):
        app_name = serializers.CharField(source="consumer.name")
        developer = serializers.CharField(source="consumer.owner.get_username")
        developer_email = serializers.EmailField(source="consumer.owner.email")

    @extend_schema(parameters=[FilterSerializer], responses=OutputSerializer(many=True))
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        subscriptions = selectors.subscription_list_for_review(
            status=filters.validated_data.get("status")
        )
        return self.paginate(request, subscriptions, self.OutputSerializer)


class SubscriptionApproveApi(PorticoApi):
    """Staff: approve a pending subscription; the app may call the product at once."""

    permission_classes = [IsAuthenticated, IsAdminUser]

    @extend_schema(request=None, responses=SubscriptionSerializer)
    def post(self, request: Request, pk: int) -> Response:
        subscription = selectors.subscription_get_for_user(user=request_user(request), pk=pk)
        subscription = services.subscription_approve(subscription=subscription)
        return Response(SubscriptionSerializer(subscription).data)


class SubscriptionRejectApi(PorticoApi):
    """Staff: reject a pending subscription, telling the developer why."""

    permission_classes = [IsAuthenticated, IsAdminUser]

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=2000, help_text="Shown to the developer.")

    @extend_schema(request=InputSerializer, responses=SubscriptionSerializer)
    def post(self, request: Request, pk: int) -> Response:
        subscription = selectors.subscription_get_for_user(user=request_user(request), pk=pk)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        subscription = services.subscription_reject(
            subscription=subscription, reason=data.validated_data["reason"]
        )
        return Response(SubscriptionSerializer(subscription).data)
