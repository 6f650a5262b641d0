from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from consumers import services
from consumers.models import Credential
from gateway import keys


def test_key_is_generated_with_prefix_and_checksum(consumer):
    issued = services.credential_create(consumer=consumer, name="ci")
    assert issued.key.startswith("portico_")
    assert keys.is_well_formed(issued.key)
    assert not keys.is_well_formed(issued.key[:-1] + ("0" if issued.key[-1] != "0" else "1"))


def test_only_hash_and_display_prefix_are_stored(consumer):
    issued = services.credential_create(consumer=consumer, name="ci")
    row = Credential.objects.get(pk=issued.credential.pk)
    assert row.key_hash == keys.hash_key(issued.key)
    assert issued.key.startswith(row.display_prefix)
    assert len(row.display_prefix) < 16
    # No column of any row anywhere holds the key itself.
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM consumers_credential")
        for record in cursor.fetchall():
            assert all(issued.key not in str(value) for value in record)


def test_keys_are_unique(consumer):
    issued = {services.credential_create(consumer=consumer, name=f"k{i}").key for i in range(20)}
    assert len(issued) == 20


def test_expiry_in_the_past_is_refused(consumer):
    with pytest.raises(ValidationError):
        services.credential_create(
            consumer=consumer, name="old", expires_at=timezone.now() - timedelta(minutes=1)
        )
    assert not Credential.objects.exists()


def test_revoke_is_recorded_once(consumer):
    issued = services.credential_create(consumer=consumer, name="ci")
    first = services.credential_revoke(credential=issued.credential).revoked_at
    again = services.credential_revoke(credential=issued.credential).revoked_at
    assert first is not None
    assert first == again
    assert not Credential.objects.get(pk=issued.credential.pk).is_active
