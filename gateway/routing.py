"""Model routes: which targets serve a public model name, in which order, and their health.

A revision's model index (:func:`index_routes`) maps each public model name to a
:class:`Route`: its targets (an upstream with its adapter, the model's name there, a
weight, and one :class:`~gateway.providers.base.Endpoint` per credential of the
upstream's pool) and its fallbacks. The index is immutable and rebuilt only when
products or upstreams change.

What changes with traffic lives in one :class:`Router` per process and outlives
revisions, keyed by strings that stay equal across them (an upstream's id and model, a
credential's fingerprint): in-flight counts and latency for the strategies, and the
health record that ejects a failing target for a cooldown and takes a refused or
rate-limited credential out of the pool.

:meth:`Router.plan` gives the order in which a call tries its targets:

1. the route's targets, first the one the strategy picks (``weighted``: random by
   weight; ``least_busy``: fewest calls in flight; ``lowest_latency``: best moving
   average of the time to the upstream's answer), then the others by the same rule;
   ejected targets go last, so that a call still has somewhere to go when all are;
2. then each fallback route's targets, in the fallback order.

A caller pins a call to one upstream with ``x-portico-upstream: <upstream name>``. A
route with ``affinity: consumer`` pins each consumer instead: the weighted order is drawn
from a hash of the consumer and the target rather than at random (rendezvous hashing),
so a consumer keeps to one target while it is healthy, the weights still set the share
of consumers each target gets, and adding a target moves only the consumers it takes.
The gateway (``gateway.app``) walks the plan and decides by failure class whether to
go on (see ``gateway.providers.base.FailureKind``).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from gateway.providers import adapter_for
from gateway.providers.base import Adapter, Endpoint, FailureKind, UpstreamFailure
from gateway.schema import NON_MODEL_VENDORS, ModelRoute, Product, Revision, Target, Upstream
from gateway.secrets import GatewayKeys, SecretError

# A target that failed this many times in a row is ejected.
EJECT_AFTER = 3
# How long an ejected target waits before traffic probes it again; doubles with each
# ejection in a row, up to the maximum.
EJECT_SECONDS = 10.0
EJECT_MAX_SECONDS = 300.0
# A credential the vendor refused (401/403) stays out this long, or until a revision
# brings a different secret (its fingerprint changes).
CREDENTIAL_REFUSED_SECONDS = 600.0
# A rate-limited credential without a retry-after hint rests this long.
RATE_LIMITED_SECONDS = 1.0
# Weight of the newest sample in the latency moving average.
_EWMA = 0.2


class RouteError(ValueError):
    """A revision's routes are inconsistent; the message names the culprit."""


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """One upstream model that can serve a route, with its credential pool."""

    key: str  # "<upstream id>/<model>": the health and statistics key
    label: str  # "<upstream name>/<model>": the x-portico-target header
    upstream_id: str
    upstream: Upstream
    adapter: Adapter
    model: str
    weight: int
    endpoints: tuple[Endpoint, ...] = field(repr=False)
    credential_keys: tuple[str, ...] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Route:
    """A public model name resolved to its targets and fallbacks."""

    name: str
    product: Product
    spec: ModelRoute
    targets: tuple[RouteTarget, ...]
    fallbacks: tuple[str, ...]


def index_routes(doc: Revision, keys: GatewayKeys) -> dict[str, Route]:
    """Every public model name of ``doc``; raises :class:`RouteError` when inconsistent."""
    pools: dict[str, tuple[tuple[str | None, ...], tuple[str, ...]]] = {}
    for upstream_id, upstream in doc.upstreams.items():
        if upstream.vendor in NON_MODEL_VENDORS:
            continue
        sealed = ([upstream.secret] if upstream.secret is not None else []) + upstream.secrets
        try:
            opened = tuple(keys.unseal(value) for value in sealed)
        except SecretError as exc:
            raise RouteError(f"upstream {upstream_id}: {exc}") from exc
        if adapter_for(upstream.vendor) is None:
            raise RouteError(f"upstream {upstream_id} has unknown vendor {upstream.vendor!r}")
        fingerprints = tuple(
            hashlib.sha256(keys.seal_key + secret.encode()).hexdigest()[:16] for secret in opened
        )
        pools[upstream_id] = (opened or (None,), fingerprints or ("none",))
    routes: dict[str, Route] = {}
    for slug, product in doc.products.items():
        if product.slug != slug:
            raise RouteError(f"product key {slug!r} differs from its slug {product.slug!r}")
        for name, spec in product.models.items():
            if name in routes:
                raise RouteError(
                    f"model {name!r} is routed by both {routes[name].product.slug!r} and {slug!r}"
                )
            first = Target(
                upstream=spec.upstream, upstream_model=spec.upstream_model, weight=spec.weight
            )
            targets = tuple(
                _target(name, target, doc.upstreams, pools) for target in (first, *spec.targets)
            )
            for fallback in spec.fallbacks:
                if fallback not in product.models or fallback == name:
                    raise RouteError(
                        f"model {name!r} falls back to {fallback!r}, which is not another "
                        f"model of the product {slug!r}"
                    )
                if product.models[fallback].kind != spec.kind:
                    raise RouteError(f"model {name!r} falls back to {fallback!r} of another kind")
            routes[name] = Route(name, product, spec, targets, tuple(spec.fallbacks))
    return routes


def _target(
    name: str,
    target: Target,
    upstreams: dict[str, Upstream],
    pools: dict[str, tuple[tuple[str | None, ...], tuple[str, ...]]],
) -> RouteTarget:
    upstream = upstreams.get(target.upstream)
    if upstream is None or upstream.vendor in NON_MODEL_VENDORS:
        raise RouteError(f"model {name!r} names unknown upstream {target.upstream!r}")
    adapter = adapter_for(upstream.vendor)
    assert adapter is not None  # checked with the pools
    secrets, fingerprints = pools[target.upstream]
    base_url = upstream.base_url.rstrip("/")
    endpoints = tuple(
        Endpoint(base_url, target.upstream_model, secret, upstream.options) for secret in secrets
    )
    return RouteTarget(
        key=f"{target.upstream}/{target.upstream_model}",
        label=f"{upstream.name or target.upstream}/{target.upstream_model}",
        upstream_id=target.upstream,
        upstream=upstream,
        adapter=adapter,
        model=target.upstream_model,
        weight=target.weight,
        endpoints=endpoints,
        credential_keys=fingerprints,
    )


@dataclass(slots=True)
class _TargetState:
    in_flight: int = 0
    latency: float | None = None  # moving average, seconds
    failures: int = 0  # in a row
    ejections: int = 0  # in a row
    out_until: float = 0.0


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of a plan: a target and the index of the credential to use."""

    route: Route
    target: RouteTarget
    credential: int

    @property
    def endpoint(self) -> Endpoint:
        return self.target.endpoints[self.credential]


class Router:
    """The per-process state behind routing decisions (see the module docstring)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._targets: dict[str, _TargetState] = {}
        self._credentials_out: dict[str, float] = {}  # fingerprint -> until
        self._next_credential: dict[str, int] = {}
        self._rng = rng or random.Random()  # noqa: S311 (load balancing, not secrets)
        self._now = clock

    def state(self, target: RouteTarget) -> _TargetState:
        return self.state_of(target.key)

    def state_of(self, key: str) -> _TargetState:
        """The record of the target ``key`` (agent targets use it directly)."""
        state = self._targets.get(key)
        if state is None:
            state = self._targets[key] = _TargetState()
        return state

    def healthy(self, target: RouteTarget) -> bool:
        return self.state(target).out_until <= self._now()

    def is_out(self, key: str) -> bool:
        """Whether the target ``key`` is ejected now."""
        return self.state_of(key).out_until > self._now()

    # Planning ---------------------------------------------------------------------------

    def plan(
        self,
        route: Route,
        routes: dict[str, Route],
        *,
        pin: str | None = None,
        consumer: int | None = None,
    ) -> Iterator[Attempt]:
        """The attempts for a call to ``route``, best first (lazily: most calls need one).

        Each target appears once, with a credential that is not resting if it has one;
        a pinned call only ever goes to targets of the pinned upstream.
        """
        seen: set[str] = set()
        for current in (route, *(routes[name] for name in route.fallbacks if name in routes)):
            targets = current.targets
            if pin is not None:
                targets = tuple(t for t in targets if pin in (t.upstream.name, t.upstream_id))
            for target in self._order(current, targets, consumer):
                if target.key in seen:
                    continue
                seen.add(target.key)
                yield Attempt(current, target, self._credential(target))

    def _order(
        self, route: Route, targets: tuple[RouteTarget, ...], consumer: int | None
    ) -> list[RouteTarget]:
        if len(targets) == 1:
            return list(targets)
        now = self._now()
        healthy = [t for t in targets if self.state(t).out_until <= now]
        ejected = [t for t in targets if self.state(t).out_until > now]
        strategy = route.spec.strategy
        if strategy == "least_busy":
            healthy.sort(key=lambda t: (self.state(t).in_flight, -t.weight))
        elif strategy == "lowest_latency":
            # Unmeasured targets first, so every target gets measured.
            healthy.sort(key=lambda t: self.state(t).latency or 0.0)
        elif route.spec.affinity == "consumer" and consumer is not None:
            healthy = weighted_order(healthy, lambda t: unit_hash(consumer, t.key))
        else:
            healthy = weighted_order(healthy, lambda _: self._rng.random())
        ejected.sort(key=lambda t: self.state(t).out_until)
        return healthy + ejected

    def _credential(self, target: RouteTarget) -> int:
        count = len(target.endpoints)
        if count == 1:
            return 0
        now = self._now()
        start = self._next_credential.get(target.key, 0)
        self._next_credential[target.key] = (start + 1) % count
        best, best_until = start % count, float("inf")
        for step in range(count):
            index = (start + step) % count
            until = self._credentials_out.get(target.credential_keys[index], 0.0)
            if until <= now:
                return index
            if until < best_until:
                best, best_until = index, until
        return best

    def other_credential(self, attempt: Attempt) -> Attempt | None:
        """The same target with a credential that is not resting, if the pool has one."""
        target = attempt.target
        now = self._now()
        for step in range(1, len(target.endpoints)):
            index = (attempt.credential + step) % len(target.endpoints)
            if self._credentials_out.get(target.credential_keys[index], 0.0) <= now:
                return Attempt(attempt.route, target, index)
        return None

    # Outcomes ---------------------------------------------------------------------------

    def started(self, attempt: Attempt) -> float:
        self.state(attempt.target).in_flight += 1
        return time.perf_counter()

    def finished(self, attempt: Attempt) -> None:
        self.state(attempt.target).in_flight -= 1

    def succeeded(self, attempt: Attempt, started: float) -> None:
        state = self.state(attempt.target)
        elapsed = time.perf_counter() - started
        state.latency = (
            elapsed
            if state.latency is None
            else (state.latency + _EWMA * (elapsed - state.latency))
        )
        self.target_up(attempt.target.key)

    def target_up(self, key: str) -> None:
        """The target ``key`` answered: its failure record is cleared and, if it was
        ejected, it is back."""
        state = self.state_of(key)
        state.failures = 0
        state.ejections = 0
        state.out_until = 0.0

    def target_down(self, key: str) -> None:
        """The target ``key`` failed (no answer, a server error, a timeout): after
        :data:`EJECT_AFTER` in a row it is ejected for a cooldown that doubles with
        each ejection in a row."""
        state = self.state_of(key)
        state.failures += 1
        if state.failures >= EJECT_AFTER:
            cooldown = min(EJECT_SECONDS * (2**state.ejections), EJECT_MAX_SECONDS)
            state.out_until = self._now() + cooldown
            state.ejections += 1
            # Probed back in by the next call after the cooldown: one more failure
            # ejects it again, for longer; a success clears the record.
            state.failures = EJECT_AFTER - 1

    def failed(self, attempt: Attempt, failure: UpstreamFailure) -> None:
        """Record a failure: rest the credential or count towards ejecting the target."""
        now = self._now()
        fingerprint = attempt.target.credential_keys[attempt.credential]
        kind = failure.kind
        if kind is FailureKind.RATE_LIMITED:
            rest = failure.retry_after if failure.retry_after is not None else RATE_LIMITED_SECONDS
            self._credentials_out[fingerprint] = now + rest
        elif kind is FailureKind.AUTH:
            self._credentials_out[fingerprint] = now + CREDENTIAL_REFUSED_SECONDS
        elif kind in (FailureKind.SERVER, FailureKind.TIMEOUT, FailureKind.UNREACHABLE):
            self.target_down(attempt.target.key)

    def resting_for(self, target: RouteTarget) -> float | None:
        """Seconds until a credential of ``target`` is usable again (None: one is now)."""
        now = self._now()
        waits = [self._credentials_out.get(key, 0.0) - now for key in target.credential_keys]
        soonest = min(waits)
        return soonest if soonest > 0 else None


class Weighted(Protocol):
    @property
    def weight(self) -> int: ...


_W = TypeVar("_W", bound=Weighted)


def weighted_order(targets: list[_W], draw: Callable[[_W], float]) -> list[_W]:
    """An order in which heavier targets tend to come first (weight 0: last), from one
    uniform draw in [0, 1) per target."""
    keyed = []
    for target in targets:
        if target.weight <= 0:
            keyed.append((math.inf, target))
        else:
            # Efraimidis-Spirakis: sorting by -log(u)/w samples without replacement
            # with probabilities proportional to the weights.
            u = draw(target) or 1e-12
            keyed.append((-math.log(u) / target.weight, target))
    keyed.sort(key=lambda item: item[0])
    return [target for _, target in keyed]


def unit_hash(consumer: int, key: str) -> float:
    """A number in [0, 1) fixed by the consumer and the target, uniform across both."""
    digest = hashlib.blake2b(f"{consumer}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64
