"""Decoding, validating and indexing revisions.

An :class:`AppliedRevision` is swapped in with a single reference assignment, so
requests in flight finish on the revision they started with. Everything but the
credentials is immutable once built; the credentials index is changed in place by
deltas (see :func:`apply_delta` for why that is safe).

A revision may carry a million keys (~120 MB of JSON). Decoding that in one
``msgspec`` call holds the GIL for most of a second, and a thread does not help: the
event loop cannot run while the GIL is held. So the gateway decodes a large document
in pieces on the event loop itself (:func:`open_revision`, :func:`build_incrementally`),
handing the loop a turn every few milliseconds, and keeps the credentials in many
small dicts (:class:`CredentialIndex`) so that no single dict resize or deallocation
stalls it either.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice
from operator import attrgetter
from typing import TypeVar

import msgspec

from gateway.a2a.index import AgentIndexError, ServedAgent, index_agents
from gateway.mcp.index import McpIndex, McpIndexError, index_mcp
from gateway.routing import Route, RouteError, index_routes
from gateway.schema import (
    SCHEMA_VERSION,
    Consumer,
    Credential,
    Delta,
    Revision,
)
from gateway.secrets import GatewayKeys

Buffer = bytes | bytearray
_T = TypeVar("_T")

# A power of two. At a million keys a shard holds ~4,000, so growing or freeing one
# takes well under a millisecond, where one dict of a million takes 70-240 ms to
# resize and ~70 ms to free.
_SHARDS = 256
_SHARD_MASK = _SHARDS - 1
# Documents up to this size decode in one call (a few milliseconds at most).
_SMALL_DOCUMENT = 1 << 20
# Bytes of JSON decoded per step (~1,100 credentials, under a millisecond).
_PIECE_BYTES = 128 * 1024
# Entries validated, indexed, encoded or freed per step.
_BATCH = 4096


class RevisionError(ValueError):
    """A revision or delta that must not be applied, with a reason for the sender."""


class Pacer:
    """Hands the event loop a turn whenever a run of work has taken ``budget`` seconds.

    Long jobs on the event loop (decoding, indexing, encoding, freeing a large
    revision) call it between small steps, so requests wait at most about ``budget``
    plus one step, while the job itself loses little time to switching.
    """

    __slots__ = ("_budget", "_until")

    def __init__(self, budget: float = 0.004) -> None:
        self._budget = budget
        self._until = time.perf_counter() + budget

    async def __call__(self) -> None:
        if time.perf_counter() >= self._until:
            await asyncio.sleep(0)
            self._until = time.perf_counter() + self._budget


class CredentialIndex(Mapping[str, Credential]):
    """The usable credentials of a revision, keyed by the SHA-256 hex of the key.

    Split into shards by the key's hash so it can be built and freed in small steps.
    A lookup costs one list index more than a plain dict.
    """

    __slots__ = ("_shards",)

    def __init__(self) -> None:
        self._shards: list[dict[str, Credential]] = [{} for _ in range(_SHARDS)]

    def get(  # type: ignore[override]
        self, key_hash: str, default: Credential | None = None
    ) -> Credential | None:
        """The credential for ``key_hash``: the lookup of the request path."""
        return self._shards[hash(key_hash) & _SHARD_MASK].get(key_hash, default)

    def __getitem__(self, key_hash: str) -> Credential:
        return self._shards[hash(key_hash) & _SHARD_MASK][key_hash]

    def __contains__(self, key_hash: object) -> bool:
        return isinstance(key_hash, str) and key_hash in self._shards[hash(key_hash) & _SHARD_MASK]

    def __iter__(self) -> Iterator[str]:
        for shard in self._shards:
            yield from shard

    def __len__(self) -> int:
        return sum(map(len, self._shards))

    def shards(self) -> list[dict[str, Credential]]:
        """The shards themselves, for encoding in steps. Do not change them."""
        return self._shards

    def put(self, key_hash: str, credential: Credential) -> None:
        self._shards[hash(key_hash) & _SHARD_MASK][key_hash] = credential

    def discard(self, key_hash: str) -> None:
        self._shards[hash(key_hash) & _SHARD_MASK].pop(key_hash, None)

    async def clear(self, pacer: Pacer) -> None:
        """Empty the index shard by shard, so freeing a million entries never stalls."""
        for shard in self._shards:
            shard.clear()
            await pacer()


@dataclass(frozen=True, slots=True)
class AppliedRevision:
    """A validated revision with the indexes the hot path uses.

    ``credentials`` is what requests look keys up in. The gateway builds its revisions
    with :func:`build_incrementally`, whose ``doc.credentials`` is empty so that a
    million keys are held once. :func:`build` (the control plane's check of what it
    compiled) keeps the document it was given, credentials included, and
    :func:`apply_delta` keeps that view up to date (``doc_credentials``).
    """

    doc: Revision
    models: dict[str, Route] = field(default_factory=dict)
    credentials: CredentialIndex = field(default_factory=CredentialIndex)
    doc_credentials: bool = False
    mcp: McpIndex = field(default_factory=McpIndex)
    agents: dict[str, ServedAgent] = field(default_factory=dict)

    @property
    def number(self) -> int:
        return self.doc.revision


_revision_decoder = msgspec.json.Decoder(Revision)
_delta_decoder = msgspec.json.Decoder(Delta)
_consumers_decoder = msgspec.json.Decoder(dict[str, Consumer])
_credentials_decoder = msgspec.json.Decoder(dict[str, Credential])
_encoder = msgspec.json.Encoder()


def decode_revision(raw: Buffer) -> Revision:
    """Decode a whole document in one call (what the control plane uses)."""
    try:
        return _revision_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise RevisionError(f"invalid revision: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise RevisionError(f"revision is not valid JSON: {exc}") from exc


def decode_delta(raw: Buffer) -> Delta:
    try:
        return _delta_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise RevisionError(f"invalid delta: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise RevisionError(f"delta is not valid JSON: {exc}") from exc


def encode(doc: Revision | Delta) -> bytes:
    return _encoder.encode(doc)


# Building ------------------------------------------------------------------------------


class _Assembly:
    """Validates and indexes a revision's parts as they are decoded, in order.

    Consumers must all be added before the first credential, which is checked against
    them; both a document's layout and :func:`_parts_of` guarantee that order.
    """

    def __init__(self, head: Revision, keys: GatewayKeys, consumers: dict[str, Consumer]) -> None:
        if head.schema != SCHEMA_VERSION:
            raise RevisionError(f"unsupported schema {head.schema}")
        self.head = head
        self.models = _index_models(head, keys)
        try:
            self.mcp = index_mcp(head, keys)
            self.agents = index_agents(head, keys)
        except (McpIndexError, AgentIndexError) as exc:
            raise RevisionError(str(exc)) from exc
        self.consumers = consumers
        self.credentials = CredentialIndex()
        self._consumer_ids: set[int] | None = None

    def add_consumers(self, items: Iterable[tuple[str, Consumer]], *, merge: bool) -> None:
        for consumer_key, consumer in items:
            if str(consumer.id) != consumer_key:
                raise RevisionError(
                    f"consumer key {consumer_key!r} differs from its id {consumer.id}"
                )
            if merge:
                self.consumers[consumer_key] = consumer

    def add_credentials(self, part: Mapping[str, Credential]) -> None:
        if self._consumer_ids is None:
            self._consumer_ids = {consumer.id for consumer in self.consumers.values()}
        # Checked a part at a time with C-level loops; the entry-by-entry search that
        # names the culprit runs only when there is one.
        if not set(map(len, part)) <= {64} or not self._consumer_ids.issuperset(
            map(_consumer_of, part.values())
        ):
            for key_hash, credential in part.items():
                _check_credential(key_hash, credential, self._consumer_ids)
        shards = self.credentials.shards()
        for key_hash, credential in part.items():
            shards[hash(key_hash) & _SHARD_MASK][key_hash] = credential

    def result(self, doc: Revision | None = None) -> AppliedRevision:
        if doc is not None:
            return AppliedRevision(
                doc,
                self.models,
                self.credentials,
                doc_credentials=True,
                mcp=self.mcp,
                agents=self.agents,
            )
        doc = msgspec.structs.replace(self.head, consumers=self.consumers, credentials={})
        return AppliedRevision(
            doc=doc,
            models=self.models,
            credentials=self.credentials,
            mcp=self.mcp,
            agents=self.agents,
        )

    async def discard(self, pacer: Pacer) -> None:
        """Free what was built so far in small steps (a rejected revision can be big)."""
        await self.credentials.clear(pacer)
        await _clear_dict(self.consumers, pacer)


_consumer_of = attrgetter("consumer")


def _check_credential(key_hash: str, credential: Credential, consumer_ids: Container[int]) -> None:
    if len(key_hash) != 64:
        raise RevisionError(f"credential hash {key_hash[:12]!r}… is not a SHA-256 hex digest")
    if credential.consumer not in consumer_ids:
        raise RevisionError(
            f"credential {key_hash[:12]}… belongs to unknown consumer {credential.consumer}"
        )


class _ConsumerIds(Container[int]):
    """The ids of a revision's consumers, without building a set of a million ints."""

    __slots__ = ("_consumers",)

    def __init__(self, consumers: Mapping[str, Consumer]) -> None:
        self._consumers = consumers

    def __contains__(self, consumer_id: object) -> bool:
        return str(consumer_id) in self._consumers


def _index_models(doc: Revision, keys: GatewayKeys) -> dict[str, Route]:
    try:
        return index_routes(doc, keys)
    except RouteError as exc:
        raise RevisionError(str(exc)) from exc


def _batches(items: Iterable[_T]) -> Iterator[list[_T]]:
    iterator = iter(items)
    while batch := list(islice(iterator, _BATCH)):
        yield batch


def build(doc: Revision, keys: GatewayKeys) -> AppliedRevision:
    """Check cross-references, open sealed secrets and build the indexes, in one go.

    Raises :class:`RevisionError` naming the first problem found; a revision that
    fails here is never applied. The result's ``doc`` is ``doc`` itself.
    """
    assembly = _Assembly(doc, keys, doc.consumers)
    assembly.add_consumers(doc.consumers.items(), merge=False)
    assembly.add_credentials(doc.credentials)
    return assembly.result(doc)


@dataclass(frozen=True, slots=True)
class IncomingRevision:
    """A full document as received: its head is decoded, the bulk not yet.

    ``head.revision`` is known before the (possibly large) rest is decoded, so a stale
    or repeated push costs next to nothing.
    """

    head: Revision
    raw: Buffer | None = field(default=None, repr=False)
    # Offsets of the members of "consumers" and "credentials" in ``raw``.
    spans: tuple[int, int, int, int] | None = None

    @property
    def number(self) -> int:
        return self.head.revision


_CONSUMERS_KEY = b',"consumers":{'
_CREDENTIALS_KEY = b'},"credentials":{'
_EMPTY_TAIL = b',"consumers":{},"credentials":{}}'
# Where a piece may end: after a whole credential (``{...}``) and after a whole
# consumer (which closes a plan, a subscription and its subscriptions at once).
# A cut anywhere else leaves a piece that is not a JSON object, which is detected.
_CREDENTIAL_CUT = b'},"'
_CONSUMER_CUT = b'}}}},"'


def open_revision(raw: Buffer) -> IncomingRevision:
    """Decode the head of a full document; raises :class:`RevisionError` if invalid.

    A large document in the layout ``msgspec`` writes (the control plane's, and this
    gateway's own snapshots) has "consumers" and "credentials" last; those two are
    left for :func:`build_incrementally`. Anything else is decoded whole here.
    """
    if len(raw) > _SMALL_DOCUMENT:
        found = _split(raw)
        if found is not None:
            return found
    return IncomingRevision(head=decode_revision(raw))


def _split(raw: Buffer) -> IncomingRevision | None:
    """Find the consumers and credentials members of a compact document.

    Sound by construction: the head is the document with both objects emptied, and it
    must decode as a valid revision, which it only does when the cut points are the
    top-level keys. If a later piece does not decode, :func:`build_incrementally`
    falls back to decoding the whole document.
    """
    end = len(raw)
    while end and raw[end - 1] in b" \t\r\n":
        end -= 1
    if raw[end - 2 : end] != b"}}":
        return None
    start = raw.find(_CONSUMERS_KEY)
    for _ in range(4):  # a product named "consumers" can come first; try the next one
        if start < 0:
            return None
        cut = raw.find(_CREDENTIALS_KEY, start)
        if cut < 0:
            return None
        try:
            head = _revision_decoder.decode(bytes(raw[:start]) + _EMPTY_TAIL)
        except msgspec.DecodeError:
            start = raw.find(_CONSUMERS_KEY, start + 1)
            continue
        spans = (start + len(_CONSUMERS_KEY), cut, cut + len(_CREDENTIALS_KEY), end - 2)
        return IncomingRevision(head=head, raw=raw, spans=spans)
    return None


class _Unsplittable(Exception):
    """A piece of a split document did not decode: decode the whole one instead."""


def _pieces(raw: Buffer, start: int, end: int, cut: bytes) -> Iterator[bytes]:
    """``{...}`` objects made of consecutive members between ``start`` and ``end``."""
    view = memoryview(raw)
    comma = cut.index(b",")
    try:
        while start < end:
            found = raw.find(cut, min(start + _PIECE_BYTES, end), end)
            stop = end if found < 0 else found + comma
            yield b"".join((b"{", view[start:stop], b"}"))
            start = stop + 1
    finally:
        view.release()


def _decode_piece(
    decoder: msgspec.json.Decoder[dict[str, _T]], piece: bytes, name: str
) -> dict[str, _T]:
    try:
        return decoder.decode(piece)
    except msgspec.ValidationError as exc:
        # Paths in the piece are relative to it; say where they are in the document.
        message = str(exc).replace("`$", f"`$.{name}")
        raise RevisionError(f"invalid revision: {message}") from exc
    except msgspec.DecodeError as exc:
        raise _Unsplittable from exc


async def build_incrementally(
    incoming: IncomingRevision, keys: GatewayKeys, pacer: Pacer
) -> AppliedRevision:
    """Decode the rest of ``incoming``, validate it and build its indexes, in steps.

    Between steps ``pacer`` gives the event loop a turn, so requests keep being
    served while a million keys are loaded. Raises :class:`RevisionError` as
    :func:`build` does; what was built by then is freed in steps too.
    """
    if incoming.raw is not None and incoming.spans is not None:
        assembly = _Assembly(incoming.head, keys, {})
        try:
            await _assemble_pieces(assembly, incoming.raw, incoming.spans, pacer)
            return assembly.result()
        except _Unsplittable:
            await assembly.discard(pacer)
            doc = decode_revision(incoming.raw)
        except RevisionError:
            await assembly.discard(pacer)
            raise
    else:
        doc = incoming.head
    assembly = _Assembly(doc, keys, doc.consumers)
    try:
        for consumers in _batches(doc.consumers.items()):
            assembly.add_consumers(consumers, merge=False)
            await pacer()
        for credentials in _batches(doc.credentials.items()):
            assembly.add_credentials(dict(credentials))
            await pacer()
    except RevisionError:
        await assembly.credentials.clear(pacer)
        raise
    return assembly.result()


async def _assemble_pieces(
    assembly: _Assembly, raw: Buffer, spans: tuple[int, int, int, int], pacer: Pacer
) -> None:
    consumers_start, consumers_end, credentials_start, credentials_end = spans
    for piece in _pieces(raw, consumers_start, consumers_end, _CONSUMER_CUT):
        consumers = _decode_piece(_consumers_decoder, piece, "consumers")
        assembly.add_consumers(consumers.items(), merge=True)
        await pacer()
    for piece in _pieces(raw, credentials_start, credentials_end, _CREDENTIAL_CUT):
        assembly.add_credentials(_decode_piece(_credentials_decoder, piece, "credentials"))
        await pacer()


async def _clear_dict(mapping: dict[str, Consumer], pacer: Pacer) -> None:
    while mapping:
        for _ in range(min(_BATCH, len(mapping))):
            mapping.popitem()
        await pacer()


async def discard(revision: AppliedRevision, pacer: Pacer) -> None:
    """Free a revision that was replaced, in steps (see :class:`CredentialIndex`).

    Only for a revision nothing will look credentials up in again: requests do that
    once, when they start, so the one the store just replaced qualifies.
    """
    await revision.credentials.clear(pacer)
    await _clear_dict(revision.doc.consumers, pacer)


# Deltas and encoding -------------------------------------------------------------------


def apply_delta(current: AppliedRevision, delta: Delta) -> AppliedRevision:
    """Apply credential changes on top of ``current`` (which must be ``delta.base``).

    The whole delta is validated before anything changes; then ``current``'s
    credentials index is changed in place and shared by the result. That costs the
    size of the delta, not a copy of a million entries, and no request can tell:
    requests look their key up once, when they start, and the update runs on the
    event loop without a pause in between.
    """
    if delta.schema != SCHEMA_VERSION:
        raise RevisionError(f"unsupported schema {delta.schema}")
    if delta.base != current.number:
        raise RevisionError(f"delta is based on {delta.base}, applied is {current.number}")
    if delta.revision <= delta.base:
        raise RevisionError("delta revision must be newer than its base")
    consumer_ids = _ConsumerIds(current.doc.consumers)
    for key_hash, credential in delta.credentials_upsert.items():
        _check_credential(key_hash, credential, consumer_ids)
    index = current.credentials
    for key_hash in delta.credentials_remove:
        index.discard(key_hash)
    for key_hash, credential in delta.credentials_upsert.items():
        index.put(key_hash, credential)
    changes: dict[str, object] = {"revision": delta.revision, "created_at": delta.created_at}
    if current.doc_credentials:
        # The control plane's full view (see AppliedRevision); never the gateway's.
        credentials = dict(current.doc.credentials)
        for key_hash in delta.credentials_remove:
            credentials.pop(key_hash, None)
        credentials.update(delta.credentials_upsert)
        changes["credentials"] = credentials
    doc = msgspec.structs.replace(current.doc, **changes)
    # Products, upstreams and consumers are untouched, so the model index carries over.
    return AppliedRevision(
        doc,
        current.models,
        index,
        doc_credentials=current.doc_credentials,
        mcp=current.mcp,
        agents=current.agents,
    )


async def encode_incrementally(revision: AppliedRevision, pacer: Pacer) -> list[bytes]:
    """The full document of ``revision``, as pieces to write one after another.

    Its layout is the one :func:`open_revision` splits, so reloading it is incremental
    too. The caller must keep the credentials from changing until this returns.
    """
    doc = revision.doc
    head = _encoder.encode(msgspec.structs.replace(doc, consumers={}, credentials={}))
    if not head.endswith(_EMPTY_TAIL):  # the order of Revision's fields guarantees it
        raise AssertionError("unexpected revision layout")
    pieces = [head[: -len(_EMPTY_TAIL)], b',"consumers":{']
    parts: Iterator[Mapping[str, object]] = (dict(b) for b in _batches(doc.consumers.items()))
    await _encode_members(pieces, parts, pacer)
    pieces.append(b'},"credentials":{')
    await _encode_members(pieces, iter(revision.credentials.shards()), pacer)
    pieces.append(b"}}")
    return pieces


async def _encode_members(
    pieces: list[bytes], parts: Iterator[Mapping[str, object]], pacer: Pacer
) -> None:
    first = True
    for part in parts:
        if part:
            if not first:
                pieces.append(b",")
            pieces.append(_encoder.encode(part)[1:-1])  # the members, without the braces
            first = False
        await pacer()
