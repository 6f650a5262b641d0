"""Products, their upstreams and routes, and the plans developers subscribe under."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

_http_url = RegexValidator(r"^https?://[^\s/$.?#][^\s]*$", "Enter an http:// or https:// URL.")

MAX_TAGS = 12
MAX_TAG_LENGTH = 32


def validate_tags(value: object) -> None:
    """Tags are a short list of short, non-empty strings (they are shown as badges)."""
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise ValidationError("Tags must be a list of strings.")
    if len(value) > MAX_TAGS:
        raise ValidationError(f"Use at most {MAX_TAGS} tags.")
    for tag in value:
        if not tag.strip() or len(tag) > MAX_TAG_LENGTH or tag != tag.strip():
            raise ValidationError(
                f"Each tag is 1 to {MAX_TAG_LENGTH} characters without surrounding spaces "
                f"({tag!r} is not)."
            )


class Upstream(models.Model):
    """A backend the gateway calls. Its secret is write-only and encrypted at rest."""

    class Vendor(models.TextChoices):
        OPENAI = "openai", "OpenAI"
        OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible server"

    name = models.CharField(max_length=120, unique=True)
    vendor = models.CharField(max_length=32, choices=Vendor.choices, default=Vendor.OPENAI)
    base_url = models.CharField(
        max_length=500,
        validators=[_http_url],
        help_text="The API base, e.g. https://api.openai.com/v1",
    )
    # Envelope-encrypted (catalog/crypto.py); never rendered back to anyone.
    secret_ciphertext = models.TextField(blank=True, default="", editable=False)
    timeout_seconds = models.FloatField(default=120.0, validators=[MinValueValidator(0.1)])
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def has_secret(self) -> bool:
        return bool(self.secret_ciphertext)


class Category(models.Model):
    """A shelf of the catalog (Chat, Embeddings…): developers filter products by it."""

    name = models.CharField(max_length=80, unique=True)
    slug = models.SlugField(max_length=60, unique=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "categories"

    def __str__(self) -> str:
        return self.name


class Product(models.Model):
    class Kind(models.TextChoices):
        MODEL = "model", "Model API"
        MCP = "mcp", "MCP server"
        AGENT = "agent", "Agent"

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        PUBLISHED = "published", "Published"
        RETIRED = "retired", "Retired"

    name = models.CharField(max_length=120)
    slug = models.SlugField(
        max_length=60,
        unique=True,
        validators=[RegexValidator(r"^[a-z0-9][a-z0-9-]*$", "Lower-case letters, digits, dashes.")],
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    description = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    subscription_approval = models.CharField(
        max_length=16,
        blank=True,
        choices=[("automatic", "Automatic"), ("manual", "By an admin")],
        help_text="Empty: the portal's default.",
    )
    portals = models.ManyToManyField(
        "portal.Portal", blank=True, related_name="products", help_text="Published to."
    )
    # Catalog listing: shown to developers, never read by the gateway.
    category = models.ForeignKey(
        Category, null=True, blank=True, on_delete=models.SET_NULL, related_name="products"
    )
    tags = models.JSONField(
        default=list, blank=True, validators=[validate_tags], help_text="Short keywords."
    )
    guide_markdown = models.TextField(
        "guide",
        blank=True,
        help_text="Markdown shown on the product page. Raw HTML is sanitised away.",
    )
    # Lower-cased text the catalog search matches against, rebuilt by
    # services.product_refresh_search_document() whenever a part of it changes: one
    # column to scan instead of joins to routes, categories (and later tools and skills).
    search_document = models.TextField(blank=True, default="", editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        indexes = [
            # The catalog lists published products by name, optionally of one kind;
            # the pagination count and the page both start from this index.
            models.Index(fields=["status", "kind", "name"], name="product_catalog_idx"),
            models.Index(fields=["status", "name"], name="product_catalog_name_idx"),
        ]

    def __str__(self) -> str:
        return self.name


class ModelRoute(models.Model):
    """A public model name served by a product, and where the gateway sends it."""

    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="model_routes")
    name = models.CharField(
        max_length=200,
        unique=True,
        help_text="The name apps send as `model`; unique across products.",
    )
    upstream = models.ForeignKey(Upstream, on_delete=models.PROTECT, related_name="routes")
    upstream_model = models.CharField(max_length=200, help_text="The model's name upstream.")

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Plan(models.Model):
    """Limits a subscription runs under; an empty limit means unlimited."""

    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="plans")
    name = models.CharField(max_length=120)
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_day = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["product", "name"]
        constraints = [
            models.UniqueConstraint(fields=["product", "name"], name="plan_unique_name"),
            models.CheckConstraint(
                condition=models.Q(requests_per_minute__gt=0)
                | models.Q(requests_per_minute__isnull=True),
                name="plan_rpm_positive",
            ),
            models.CheckConstraint(
                condition=models.Q(tokens_per_minute__gt=0)
                | models.Q(tokens_per_minute__isnull=True),
                name="plan_tpm_positive",
            ),
            models.CheckConstraint(
                condition=models.Q(tokens_per_day__gt=0) | models.Q(tokens_per_day__isnull=True),
                name="plan_tpd_positive",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.product.slug}: {self.name}"
