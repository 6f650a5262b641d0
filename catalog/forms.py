"""Forms of the catalog pages."""

from __future__ import annotations

from collections.abc import Iterable

from django import forms

from catalog.models import Category


class CatalogSearchForm(forms.Form):
    """The catalog's search box and category filter, read from the query string."""

    q = forms.CharField(
        label="Search",
        required=False,
        max_length=200,
        widget=forms.TextInput(
            attrs={"type": "search", "placeholder": "Search by name, model, tag…"}
        ),
    )
    category = forms.ChoiceField(
        label="Category",
        required=False,
        error_messages={
            "invalid_choice": "That category has no products here; showing all categories."
        },
    )

    def __init__(self, *args: object, categories: Iterable[Category], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.fields["category"].choices = [("", "All categories")] + [  # type: ignore[attr-defined]
            (category.slug, category.name) for category in categories
        ]

    def search_arguments(self) -> dict[str, str]:
        """The valid part of the input: a bad field is reported and ignored, not fatal."""
        self.is_valid()
        cleaned = getattr(self, "cleaned_data", {})
        return {"q": cleaned.get("q") or "", "category": cleaned.get("category") or ""}
