"""Delivering revisions to gateway instances over HTTP (httpx).

An instance one or a few credential-only revisions behind receives the deltas in
order; anything else (a new instance, a gap, a rejected delta) receives the full
latest revision. Every attempt's outcome is recorded on the instance.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import httpx

from gatewaysync import selectors, services
from gatewaysync.compiler import gateway_keys
from gatewaysync.models import GatewayInstance, Revision

logger = logging.getLogger(__name__)

_TIMEOUT = httpx.Timeout(connect=2.0, read=60.0, write=60.0, pool=5.0)
# Deltas are tiny; past this many a full revision is simpler than a chain.
_MAX_DELTA_CHAIN = 20


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


def _delta_chain(applied: int | None, latest: Revision) -> list[Revision] | None:
    if applied is None or latest.number - applied > _MAX_DELTA_CHAIN:
        return None
    chain = list(selectors.revisions_after(applied).filter(number__lte=latest.number))
    expected = list(range(applied + 1, latest.number + 1))
    if [r.number for r in chain] != expected or any(r.delta is None for r in chain):
        return None
    return chain


def _push(
    client: httpx.Client,
    admin_url: str,
    applied: int | None,
    chain: list[Revision],
    latest: Revision,
) -> tuple[int | None, str]:
    """The HTTP part of a delivery (no database access: it runs in a thread pool)."""
    base = admin_url.rstrip("/")
    try:
        for revision in chain:
            response = client.post(
                f"{base}/revision/delta", content=bytes(revision.delta or b""), headers=_headers()
            )
            if response.status_code != 200:
                break  # base mismatch or rejected: the full revision settles it
            applied = _applied_from(response)
        if applied != latest.number:
            response = client.put(
                f"{base}/revision", content=bytes(latest.document), headers=_headers()
            )
            applied = _applied_from(response) if response.status_code in (200, 409) else applied
            if response.status_code not in (200, 409):
                return applied, f"gateway answered {response.status_code}: {response.text[:500]}"
    except httpx.HTTPError as exc:
        return applied, f"{type(exc).__name__}: {exc}"
    return applied, ""


def deliver_to_all(instances: list[GatewayInstance], latest: Revision) -> None:
    """Bring every instance to ``latest``, all at once, and record each outcome.

    One slow or dead gateway does not delay the rest; what it answered (or why it
    could not be reached) is kept on its instance row for the admin.
    """
    behind = [i for i in instances if i.applied_revision != latest.number]
    if not behind:
        return
    chains = {i.pk: _delta_chain(i.applied_revision, latest) or [] for i in behind}
    with (
        httpx.Client(timeout=_TIMEOUT) as client,
        ThreadPoolExecutor(max_workers=min(16, len(behind))) as pool,
    ):
        outcomes = list(
            pool.map(
                lambda i: _push(client, i.admin_url, i.applied_revision, chains[i.pk], latest),
                behind,
            )
        )
    for instance, (applied, error) in zip(behind, outcomes, strict=True):
        if error:
            logger.warning(
                "delivery of revision %s to %s failed: %s", latest.number, instance, error
            )
        services.instance_record_delivery(instance=instance, applied=applied, error=error)
