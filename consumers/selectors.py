"""Reads for consumers, credentials, subscriptions and usage.

Every object a developer reaches by id goes through one ``*_get_for_user`` helper,
so the ownership rule lives in one place: the owner and staff may see it; anyone
else gets a 404 (not a 403, which would confirm the object exists).
"""

from __future__ import annotations

from django.contrib.auth.models import AnonymousUser, User
from django.db.models import QuerySet
from django.http import Http404

from consumers.models import Consumer, Credential, Subscription


def consumer_list_for_user(*, user: User) -> QuerySet[Consumer]:
    return Consumer.objects.filter(owner=user).order_by("name")


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
