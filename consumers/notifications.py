"""Email to developers about decisions on their access."""

from __future__ import annotations

from django.conf import settings
from django.core.mail import send_mail

from consumers.models import Subscription

_SUBJECTS = {
    Subscription.Status.APPROVED: "Approved: {app} can use {product}",
    Subscription.Status.REJECTED: "Not approved: {app}'s request for {product}",
    Subscription.Status.REVOKED: "Revoked: {app} can no longer use {product}",
    Subscription.Status.SUSPENDED: "Suspended: {app}'s access to {product}",
}


def subscription_decided(*, subscription_id: int) -> bool:
    """Send the owner the decision; returns whether a message was sent.

    A developer's own cancellation, and a subscription gone by the time the task runs,
    send nothing.
    """
    subscription = (
        Subscription.objects.select_related("consumer__owner", "product", "plan")
        .filter(pk=subscription_id)
        .first()
    )
    if subscription is None or subscription.status not in _SUBJECTS:
        return False
    owner = subscription.consumer.owner
    if not owner.email:
        return False
    names = {"app": subscription.consumer.name, "product": subscription.product.name}
    lines = [
        "Hello,",
        "",
        f"Your app “{names['app']}” and the product “{names['product']}” "
        f"({subscription.plan.name} plan): {subscription.get_status_display().lower()}.",
    ]
    if subscription.decision_reason:
        lines += ["", f"The administrator's reason: {subscription.decision_reason}"]
    lines += ["", f"Your apps: {settings.PORTICO_PORTAL_URL}/apps/{subscription.consumer_id}/"]
    send_mail(
        _SUBJECTS[subscription.status].format(**names),  # type: ignore[index]
        "\n".join(lines),
        None,
        [owner.email],
    )
    return True
