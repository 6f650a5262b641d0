"""Compiled revisions and the gateway instances they are delivered to."""

from __future__ import annotations

from django.db import models


class Revision(models.Model):
    """A numbered, self-contained document in the schema ``gateway/schema.py`` owns.

    ``delta`` holds the credential-only changes from revision ``number - 1`` when
    nothing else changed, so a key revocation travels as a few bytes.

    A revision published incrementally (from the change journal, see
    :class:`PendingChange`) may at first have only its delta: ``document`` and
    ``content_hash`` are filled in later by applying the deltas to the newest full
    document (``services.revision_materialize``), because with a million keys the full
    document is ~100 MB and writing it would cost more than the whole revocation may.
    """

    number = models.PositiveBigIntegerField(unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Hash of the content with secrets fingerprinted, so recompiling an unchanged state
    # (whose sealed secrets differ by nonce) is recognised and makes no new revision.
    # Empty until the document is materialized.
    content_hash = models.CharField(max_length=64, blank=True)
    document = models.BinaryField(null=True)
    delta = models.BinaryField(null=True)
    # The document without its credentials (upstreams, products, consumers): small, so an
    # incremental publish can check a key's consumer without reading the document.
    frame = models.BinaryField(null=True)
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


class PendingChange(models.Model):
    """The change journal: what the next publish must bring to the gateways.

    Written in the same transaction as the change itself, and deleted by the publish
    that carries it (under the publish lock), so every entry is published exactly once.
    A row with a ``credential_id`` says only that credential changed; a row without one
    says something else changed and the next publish must compile the whole state.
    """

    credential_id = models.BigIntegerField(null=True)
    # Kept so a credential whose row is gone can still be removed from the gateways.
    key_hash = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"credential {self.credential_id}" if self.credential_id else "full compile"
