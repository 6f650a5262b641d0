"""Portals: branded developer front doors, each with its own domains and rules."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models

_colour = RegexValidator(r"^#[0-9a-fA-F]{6}$", "Use a hex colour such as #1f6feb.")


class Portal(models.Model):
    class Approval(models.TextChoices):
        AUTOMATIC = "automatic", "Automatic"
        MANUAL = "manual", "By an admin"

    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=60, unique=True)
    tagline = models.CharField(
        max_length=200, blank=True, help_text="One line under the name on the catalog page."
    )
    is_default = models.BooleanField(
        default=False, help_text="Serves requests whose Host matches no portal."
    )
    primary_color = models.CharField(max_length=7, default="#1f6feb", validators=[_colour])
    # The logo's bytes live in PortalLogo, so the per-request portal lookup never loads
    # them; this fingerprint versions the logo's URL (blank: no logo).
    logo_version = models.CharField(max_length=16, blank=True, editable=False)
    developer_approval = models.CharField(
        max_length=16, choices=Approval.choices, default=Approval.AUTOMATIC
    )
    signup_enabled = models.BooleanField(
        default=True, help_text="Developers may create accounts with email and password."
    )
    password_login_enabled = models.BooleanField(
        default=True,
        help_text="Developers may sign in with email and password. Turn off to allow "
        "only the sign-in providers chosen below.",
    )
    social_apps: models.ManyToManyField[Any, Any] = models.ManyToManyField(
        "socialaccount.SocialApp",
        blank=True,
        related_name="portals",
        verbose_name="sign-in providers",
        help_text="Social and OpenID Connect providers offered on this portal "
        "(configure them under Social applications).",
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


class PortalLogo(models.Model):
    """A portal's logo: a PNG re-encoded from the admin's upload (``portal_set_logo``)."""

    portal = models.OneToOneField(
        Portal, on_delete=models.CASCADE, primary_key=True, related_name="logo"
    )
    image = models.BinaryField()
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()

    def __str__(self) -> str:
        return f"Logo of {self.portal_id}"


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


class Membership(models.Model):
    """A developer's standing on one portal: pending developers may sign in, not subscribe."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending approval"
        APPROVED = "approved", "Approved"
        SUSPENDED = "suspended", "Suspended"

    portal = models.ForeignKey(Portal, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [models.UniqueConstraint(fields=["portal", "user"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} on {self.portal} ({self.status})"


class PersonalAccessToken(models.Model):
    """A developer's token for the REST API from scripts (not for the gateway).

    Stored like API keys: only the SHA-256 and a display prefix; shown once.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_tokens"
    )
    name = models.CharField(max_length=120)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    display_prefix = models.CharField(max_length=16, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.display_prefix}…)"


class AuditEvent(models.Model):
    """Who changed access to what, when and from where. Written by services; never edited."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    actor_label = models.CharField(max_length=254, blank=True)  # kept if the user goes
    action = models.CharField(max_length=64, db_index=True)  # e.g. "credential.revoke"
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64)
    target_label = models.CharField(max_length=254, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at"]
        indexes = [models.Index(fields=["target_type", "target_id"], name="audit_target")]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M} {self.actor_label} {self.action} {self.target_label}"
