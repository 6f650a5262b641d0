"""Reads for consumers, credentials, subscriptions and usage.

Every object a developer reaches by id goes through one ``*_get_for_user`` helper,
so the ownership rule lives in one place: the owner and staff may see it; anyone
else gets a 404 (not a 403, which would confirm the object exists).
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import Count, Q, QuerySet
from django.http import Http404

from catalog.models import Plan, Product
from consumers.models import Consumer, Credential, Subscription
from portal.models import Membership, Portal


def consumer_list_for_user(*, user: User) -> QuerySet[Consumer]:
    return (
        Consumer.objects.filter(owner=user)
        .annotate(
            live_keys=Count("credentials", filter=Q(credentials__revoked_at__isnull=True)),
        )
        .order_by("name")
    )


def consumer_get_for_user(*, user: User | AnonymousUser, pk: int) -> Consumer:
    if not user.is_authenticated:
        raise Http404("No such app.")
    consumers = Consumer.objects.select_related("owner")
    if not user.is_staff:
        consumers = consumers.filter(owner=user)
    try:
        return consumers.get(pk=pk)
    except Consumer.DoesNotExist:
        raise Http404("No such app.") from None


def credential_get_for_user(*, user: User | AnonymousUser, pk: int) -> Credential:
    if not user.is_authenticated:
        raise Http404("No such key.")
    credentials = Credential.objects.select_related("consumer")
    if not user.is_staff:
        credentials = credentials.filter(consumer__owner=user)
    try:
        return credentials.get(pk=pk)
    except Credential.DoesNotExist:
        raise Http404("No such key.") from None


def subscription_get_for_user(*, user: User | AnonymousUser, pk: int) -> Subscription:
    if not user.is_authenticated:
        raise Http404("No such subscription.")
    subscriptions = Subscription.objects.select_related("consumer", "product", "plan")
    if not user.is_staff:
        subscriptions = subscriptions.filter(consumer__owner=user)
    try:
        return subscriptions.get(pk=pk)
    except Subscription.DoesNotExist:
        raise Http404("No such subscription.") from None


# The product page lists this many of the visitor's subscriptions to the product; the
# rest are on each app's page. A thousand apps on one product must not make a long page.
PANEL_SUBSCRIPTIONS = 20


@dataclass(frozen=True)
class SubscriptionPanel:
    """What the product page offers the visitor: which apps can subscribe under which plan."""

    can_subscribe: bool
    reason: str
    # (pk, name) of the visitor's apps: only what the form's <select> shows, since a
    # developer may own thousands (see consumers/templatetags/select_options.py).
    apps: list[tuple[int, str]]
    plans: list[Plan]
    # The newest of the visitor's subscriptions to the product, at most
    # PANEL_SUBSCRIPTIONS; ``more_subscriptions`` says whether there are older ones.
    subscriptions: list[Subscription]
    more_subscriptions: bool = False


def subscription_panel_for(
    *, user: User | AnonymousUser, portal: Portal | None, product: Product
) -> SubscriptionPanel:
    plans = list(product.plans.order_by("name"))
    if not user.is_authenticated:
        return SubscriptionPanel(False, "Sign in to subscribe an app.", [], plans, [])
    standing = membership_status(user=user, portal=portal)
    apps = list(Consumer.objects.filter(owner=user).order_by("name").values_list("pk", "name"))
    subscriptions = list(
        Subscription.objects.filter(consumer__owner=user, product=product)
        .select_related("consumer", "plan")
        .order_by("-created_at", "-pk")[: PANEL_SUBSCRIPTIONS + 1]
    )
    more = len(subscriptions) > PANEL_SUBSCRIPTIONS
    subscriptions = subscriptions[:PANEL_SUBSCRIPTIONS]
    if standing != Membership.Status.APPROVED:
        reason = (
            "Your developer account is suspended on this portal."
            if standing == Membership.Status.SUSPENDED
            else "Your developer account is waiting for an administrator's approval."
        )
        return SubscriptionPanel(False, reason, apps, plans, subscriptions, more)
    if not plans:
        return SubscriptionPanel(
            False, "This product has no plans yet.", apps, plans, subscriptions, more
        )
    return SubscriptionPanel(True, "", apps, plans, subscriptions, more)


def membership_status(*, user: User | AnonymousUser, portal: Portal | None) -> str | None:
    """The user's standing on ``portal`` (staff are always approved)."""
    if not user.is_authenticated:
        return None
    if user.is_staff:
        return Membership.Status.APPROVED
    if portal is None:
        return None
    return (
        Membership.objects.filter(portal=portal, user=user).values_list("status", flat=True).first()
    )


def credentials_for_consumer(*, consumer: Consumer) -> QuerySet[Credential]:
    return consumer.credentials.order_by("-created_at")


def subscriptions_for_consumer(*, consumer: Consumer) -> QuerySet[Subscription]:
    return consumer.subscriptions.select_related("product", "plan").order_by("-created_at")


def subscription_list_for_review(*, status: str | None) -> QuerySet[Subscription]:
    """Staff's review queue: every developer's subscriptions, the oldest request first."""
    subscriptions = Subscription.objects.select_related("consumer__owner", "product", "plan")
    if status:
        subscriptions = subscriptions.filter(status=status)
    return subscriptions.order_by("created_at", "pk")
