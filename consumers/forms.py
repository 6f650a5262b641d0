"""Forms of the developer's pages. Each names its fields: nothing else can be set."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.models import User
from django.utils import timezone

from catalog.models import Plan, Product
from consumers.models import Consumer

GRACE_CHOICES = [
    (0, "Revoke the old key now"),
    (3600, "Keep the old key working for 1 hour"),
    (86400, "… for 1 day"),
    (7 * 86400, "… for 7 days"),
]


class AppForm(forms.Form):
    name = forms.CharField(max_length=120, strip=True)


class KeyForm(forms.Form):
    name = forms.CharField(max_length=120, strip=True, initial="default")
    expires_at = forms.DateTimeField(
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="Optional. The key stops working at this time.",
    )

    def clean_expires_at(self) -> Any:
        value = self.cleaned_data["expires_at"]
        if value is not None and value <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future.")
        return value


class RotateForm(forms.Form):
    grace_seconds = forms.TypedChoiceField(choices=GRACE_CHOICES, coerce=int)


class SubscribeForm(forms.Form):
    """Choose one of *your* apps and one of *this product's* plans."""

    app = forms.ModelChoiceField(queryset=Consumer.objects.none())
    plan = forms.ModelChoiceField(queryset=Plan.objects.none())

    def __init__(self, *args: Any, user: User, product: Product, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The querysets are the authorisation: another developer's app or another
        # product's plan is simply not a valid choice.
        self.fields["app"].queryset = Consumer.objects.filter(owner=user)  # type: ignore[attr-defined]
        self.fields["plan"].queryset = product.plans.all()  # type: ignore[attr-defined]
