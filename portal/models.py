"""Portals: branded developer front doors, each with its own domains and rules."""

from __future__ import annotations

from django.core.validators import RegexValidator
from django.db import models

_colour = RegexValidator(r"^#[0-9a-fA-F]{6}$", "Use a hex colour such as #1f6feb.")


class Portal(models.Model):
    class Approval(models.TextChoices):
        AUTOMATIC = "automatic", "Automatic"
        MANUAL = "manual", "By an admin"

    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=60, unique=True)
    is_default = models.BooleanField(
        default=False, help_text="Serves requests whose Host matches no portal."
    )
    primary_color = models.CharField(max_length=7, default="#1f6feb", validators=[_colour])
    developer_approval = models.CharField(
        max_length=16, choices=Approval.choices, default=Approval.AUTOMATIC
    )
    subscription_approval = models.CharField(
        max_length=16,
        choices=Approval.choices,
        default=Approval.AUTOMATIC,
        help_text="Default for products that do not set their own.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=models.Q(is_default=True),
                name="portal_single_default",
            )
        ]

    def __str__(self) -> str:
        return self.name


class PortalDomain(models.Model):
    """A host name a portal answers on: the portal is chosen by the request's Host."""

    portal = models.ForeignKey(Portal, on_delete=models.CASCADE, related_name="domains")
    domain = models.CharField(max_length=253, unique=True)

    class Meta:
        ordering = ["domain"]

    def __str__(self) -> str:
        return self.domain

    def save(self, *args: object, **kwargs: object) -> None:
        self.domain = self.domain.lower()
        super().save(*args, **kwargs)  # type: ignore[arg-type]
