"""Delivering revisions to gateway instances over HTTP (httpx).

An instance a few revisions behind receives the deltas in order. Anything else (a new
instance, a gap, a rejected delta) receives the newest full document and then the
deltas published after it: with many keys the latest revision may exist as a delta
alone for a while (``services.revision_materialize`` fills in its document), and this
way no delivery waits for that. Every attempt's outcome is recorded on the instance.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from gatewaysync import selectors, services
from gatewaysync.compiler import gateway_keys
from gatewaysync.models import GatewayInstance, Revision

logger = logging.getLogger(__name__)

_TIMEOUT = httpx.Timeout(connect=2.0, read=60.0, write=60.0, pool=5.0)
# Deltas are tiny; past this many a full revision is simpler than a chain.
_MAX_DELTA_CHAIN = 20


@dataclass(frozen=True, slots=True)
class _Delta:
    number: int
    body: bytes


@dataclass(frozen=True, slots=True)
class _Full:
    """The newest full document and the deltas from it to the latest revision."""

    number: int
    document: bytes
    chain: list[_Delta]


def _headers() -> dict[str, str]:
    return {
        "Authorization": f"Bearer {gateway_keys().auth_token}",
        "Content-Type": "application/json",
    }


def _applied_from(response: httpx.Response) -> int | None:
    try:
        value = response.json().get("applied")
    except ValueError:
        return None
    return value if isinstance(value, int) else None


def _deltas(after: int, latest: Revision, *, limit: int | None) -> list[_Delta] | None:
    """The deltas from ``after`` to ``latest``, or ``None`` if they do not all exist."""
    if limit is not None and latest.number - after > limit:
        return None
    chain = selectors.revision_delta_chain(after=after, up_to=latest.number)
    return None if chain is None else [_Delta(n, delta) for n, delta in chain]


def _full_plan(latest: Revision) -> _Full | None:
    base = selectors.revision_newest_document(up_to=latest.number)
    if base is None:
        return None
    number, document = base
    chain = _deltas(number, latest, limit=None)
    if chain is None:
        return None
    return _Full(number=number, document=document, chain=chain)


def _post_deltas(
    client: httpx.Client, base: str, applied: int | None, chain: list[_Delta]
) -> int | None:
    for delta in chain:
        response = client.post(f"{base}/revision/delta", content=delta.body, headers=_headers())
        if response.status_code != 200:
            break  # base mismatch or rejected: the full document settles it
        applied = _applied_from(response)
    return applied


def _push(
    client: httpx.Client,
    admin_url: str,
    applied: int | None,
    chain: list[_Delta] | None,
    full: _Full | None,
    latest: int,
) -> tuple[int | None, str]:
    """The HTTP part of a delivery (no database access: it runs in a thread pool).

    Sends ``chain`` if given, else (or if the chain did not get there) ``full``.
    """
    base = admin_url.rstrip("/")
    try:
        if chain is not None:
            applied = _post_deltas(client, base, applied, chain)
        if applied == latest:
            return applied, ""
        if full is None:
            return applied, "needs the full document"
        response = client.put(f"{base}/revision", content=full.document, headers=_headers())
        if response.status_code not in (200, 409):
            return applied, f"gateway answered {response.status_code}: {response.text[:500]}"
        applied = _applied_from(response)
        applied = _post_deltas(client, base, applied, full.chain)
        if applied != latest:
            return applied, f"gateway stopped at revision {applied} of {latest}"
    except httpx.HTTPError as exc:
        return applied, f"{type(exc).__name__}: {exc}"
    return applied, ""


def deliver_latest(instance_pk: int | None = None) -> None:
    """Bring every live instance that is behind (or just ``instance_pk``) to the latest."""
    latest = Revision.objects.defer("document", "frame").order_by("-number").first()
    if latest is None:
        return
    instances = selectors.instances_behind(latest.number)
    if instance_pk is not None:
        instances = instances.filter(pk=instance_pk)
    deliver_to_all(list(instances), latest)


def deliver_to_all(instances: list[GatewayInstance], latest: Revision) -> None:
    """Bring every instance to ``latest``, all at once, and record each outcome.

    One slow or dead gateway does not delay the rest; what it answered (or why it
    could not be reached) is kept on its instance row for the admin.
    """
    behind = [i for i in instances if i.applied_revision != latest.number]
    if not behind:
        return
    chains = {
        i.pk: _deltas(i.applied_revision, latest, limit=_MAX_DELTA_CHAIN)
        if i.applied_revision is not None
        else None
        for i in behind
    }
    # The full document is read only when someone needs it: with a million keys it is
    # ~100 MB, and a revocation reaching up-to-date gateways should not wait for it.
    full = _full_plan(latest) if any(chains[i.pk] is None for i in behind) else None
    outcomes = _push_all(behind, chains, full, latest.number)
    retry = [i for i in behind if outcomes[i.pk][0] != latest.number and chains[i.pk]]
    if retry:
        # A delta was refused (the record of what the gateway holds was stale):
        # the full document and the deltas after it settle it.
        full = full or _full_plan(latest)
        if full is not None:
            outcomes.update(_push_all(retry, dict.fromkeys(chains), full, latest.number))
    for instance in behind:
        applied, error = outcomes[instance.pk]
        if error:
            logger.warning(
                "delivery of revision %s to %s failed: %s", latest.number, instance, error
            )
        services.instance_record_delivery(instance=instance, applied=applied, error=error)


def _push_all(
    instances: list[GatewayInstance],
    chains: dict[int, list[_Delta] | None],
    full: _Full | None,
    latest: int,
) -> dict[int, tuple[int | None, str]]:
    with (
        httpx.Client(timeout=_TIMEOUT) as client,
        ThreadPoolExecutor(max_workers=min(16, len(instances))) as pool,
    ):
        outcomes = list(
            pool.map(
                lambda i: _push(
                    client, i.admin_url, i.applied_revision, chains.get(i.pk), full, latest
                ),
                instances,
            )
        )
    return {i.pk: outcome for i, outcome in zip(instances, outcomes, strict=True)}
