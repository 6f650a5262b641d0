"""Compiled revisions and the gateway instances they are delivered to."""

from __future__ import annotations

from django.db import models


class Revision(models.Model):
    """A numbered, self-contained document in the schema ``gateway/schema.py`` owns.

    ``delta`` holds the credential-only changes from revision ``number - 1`` when
    nothing else changed, so a key revocation travels as a few bytes.
    """

    number = models.PositiveBigIntegerField(unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Hash of the content with secrets fingerprinted, so recompiling an unchanged state
    # (whose sealed secrets differ by nonce) is recognised and makes no new revision.
    content_hash = models.CharField(max_length=64)
    document = models.BinaryField()
    delta = models.BinaryField(null=True)
    credentials = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-number"]

    def __str__(self) -> str:
        return f"revision {self.number}"


class GatewayInstance(models.Model):
    """A gateway process, as it last described itself in a heartbeat."""

    instance_id = models.CharField(max_length=200, unique=True)
    admin_url = models.CharField(max_length=500)
    applied_revision = models.PositiveBigIntegerField(null=True, blank=True)
    version = models.CharField(max_length=64, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    first_seen_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField()
    last_delivery_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-last_seen_at"]

    def __str__(self) -> str:
        return self.instance_id
