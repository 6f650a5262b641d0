import json

import pytest
from cryptography.exceptions import InvalidTag

from catalog.crypto import decrypt_secret, encrypt_secret


def test_secret_round_trips_and_ciphertext_hides_it():
    stored = encrypt_secret("sk-live-canary-1234567890")
    assert "sk-live-canary" not in stored
    assert decrypt_secret(stored) == "sk-live-canary-1234567890"


def test_each_encryption_uses_a_fresh_data_key():
    a, b = json.loads(encrypt_secret("same")), json.loads(encrypt_secret("same"))
    assert a["dek"] != b["dek"]
    assert a["ct"] != b["ct"]


def test_tampered_ciphertext_is_refused():
    envelope = json.loads(encrypt_secret("secret value"))
    ct = bytearray(envelope["ct"].encode())
    ct[5] = ord("A") if ct[5] != ord("A") else ord("B")
    envelope["ct"] = ct.decode()
    with pytest.raises((InvalidTag, ValueError)):
        decrypt_secret(json.dumps(envelope))


def test_unknown_key_provider_is_refused():
    envelope = json.loads(encrypt_secret("secret value"))
    envelope["kek"] = "aws-kms"
    with pytest.raises(ValueError, match="unknown key provider"):
        decrypt_secret(json.dumps(envelope))
