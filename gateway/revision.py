"""Decoding, validating and indexing revisions.

An :class:`AppliedRevision` is immutable once built: the request path reads it without
locks, and swapping in a new one is a single reference assignment, so requests in
flight finish on the revision they started with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from gateway.schema import SCHEMA_VERSION, Delta, ModelRoute, Product, Revision, Upstream
from gateway.secrets import GatewayKeys, SecretError


class RevisionError(ValueError):
    """A revision or delta that must not be applied, with a reason for the sender."""


@dataclass(frozen=True, slots=True)
class ModelTarget:
    """A public model name resolved to everything needed to call it."""

    name: str
    product: Product
    route: ModelRoute
    upstream: Upstream
    upstream_secret: str | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class AppliedRevision:
    """A validated revision with the indexes the hot path uses."""

    doc: Revision
    models: dict[str, ModelTarget] = field(default_factory=dict)

    @property
    def number(self) -> int:
        return self.doc.revision


_revision_decoder = msgspec.json.Decoder(Revision)
_delta_decoder = msgspec.json.Decoder(Delta)
_encoder = msgspec.json.Encoder()


def decode_revision(raw: bytes) -> Revision:
    try:
        return _revision_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise RevisionError(f"invalid revision: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise RevisionError(f"revision is not valid JSON: {exc}") from exc


def decode_delta(raw: bytes) -> Delta:
    try:
        return _delta_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise RevisionError(f"invalid delta: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise RevisionError(f"delta is not valid JSON: {exc}") from exc


def encode(doc: Revision | Delta) -> bytes:
    return _encoder.encode(doc)


def build(doc: Revision, keys: GatewayKeys) -> AppliedRevision:
    """Check cross-references, open sealed secrets and build the indexes.

    Raises :class:`RevisionError` naming the first problem found; a revision that
    fails here is never applied.
    """
    if doc.schema != SCHEMA_VERSION:
        raise RevisionError(f"unsupported schema {doc.schema}")
    secrets: dict[str, str | None] = {}
    for upstream_id, upstream in doc.upstreams.items():
        if upstream.secret is None:
            secrets[upstream_id] = None
            continue
        try:
            secrets[upstream_id] = keys.unseal(upstream.secret)
        except SecretError as exc:
            raise RevisionError(f"upstream {upstream_id}: {exc}") from exc
    models: dict[str, ModelTarget] = {}
    for slug, product in doc.products.items():
        if product.slug != slug:
            raise RevisionError(f"product key {slug!r} differs from its slug {product.slug!r}")
        for name, route in product.models.items():
            if name in models:
                raise RevisionError(
                    f"model {name!r} is routed by both {models[name].product.slug!r} and {slug!r}"
                )
            target = doc.upstreams.get(route.upstream)
            if target is None:
                raise RevisionError(f"model {name!r} names unknown upstream {route.upstream!r}")
            models[name] = ModelTarget(name, product, route, target, secrets[route.upstream])
    for consumer_key, consumer in doc.consumers.items():
        if str(consumer.id) != consumer_key:
            raise RevisionError(f"consumer key {consumer_key!r} differs from its id {consumer.id}")
    for key_hash, credential in doc.credentials.items():
        _check_credential(doc, key_hash, credential.consumer)
    return AppliedRevision(doc=doc, models=models)


def _check_credential(doc: Revision, key_hash: str, consumer_id: int) -> None:
    if len(key_hash) != 64:
        raise RevisionError(f"credential hash {key_hash[:12]!r}… is not a SHA-256 hex digest")
    if str(consumer_id) not in doc.consumers:
        raise RevisionError(
            f"credential {key_hash[:12]}… belongs to unknown consumer {consumer_id}"
        )


def apply_delta(current: AppliedRevision, delta: Delta) -> AppliedRevision:
    """Apply credential changes on top of ``current`` (which must be ``delta.base``)."""
    if delta.schema != SCHEMA_VERSION:
        raise RevisionError(f"unsupported schema {delta.schema}")
    if delta.base != current.number:
        raise RevisionError(f"delta is based on {delta.base}, applied is {current.number}")
    if delta.revision <= delta.base:
        raise RevisionError("delta revision must be newer than its base")
    credentials = dict(current.doc.credentials)
    for key_hash in delta.credentials_remove:
        credentials.pop(key_hash, None)
    for key_hash, credential in delta.credentials_upsert.items():
        _check_credential(current.doc, key_hash, credential.consumer)
        credentials[key_hash] = credential
    doc = msgspec.structs.replace(
        current.doc,
        revision=delta.revision,
        created_at=delta.created_at,
        credentials=credentials,
    )
    # Products, upstreams and consumers are untouched, so the model index carries over.
    return AppliedRevision(doc=doc, models=current.models)
