"""Forms of the portal's own pages. Each names its fields: nothing else can be set."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils import timezone


class TokenForm(forms.Form):
    name = forms.CharField(max_length=120, strip=True, initial="scripts")
    expires_at = forms.DateTimeField(
        required=False,
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        help_text="Optional. The token stops working at this time.",
    )

    def clean_expires_at(self) -> Any:
        value = self.cleaned_data["expires_at"]
        if value is not None and value <= timezone.now():
            raise forms.ValidationError("The expiry must be in the future.")
        return value
