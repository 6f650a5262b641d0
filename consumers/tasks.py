"""Celery tasks for consumers: thin, taking ids."""

from __future__ import annotations

from celery import shared_task

from consumers import notifications


@shared_task(name="consumers.subscription_notify")
def subscription_notify_task(subscription_id: int) -> None:
    """Email the developer the decision on their subscription."""
    notifications.subscription_decided(subscription_id=subscription_id)
