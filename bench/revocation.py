"""``python -m bench.revocation``: how long a revoked key keeps working at the gateways.

Method. A fresh database (the embedded SQLite in this benchmark's own var dir,
``var/bench-revocation``, or PostgreSQL when ``DATABASE_URL`` is set: a dedicated
database ``portico_bench_revocation`` next to the configured one) is seeded with
``bulk_create``: one published model product, ``--keys`` keys spread over one app per
100 keys, each app with an approved subscription. The first revision is published in
this process (a full compile), then the real processes start with the embedded
defaults or Redis (``REDIS_URL``): the portal (gateway heartbeats), a Celery worker
(concurrency 2), Celery beat (the reconcile task) and ``--gateways`` gateway
processes, each ``python -m gateway`` on its own port with its own admin listener.
Trials begin once every gateway has applied the latest revision.

Each trial revokes a key that every gateway accepts (checked first) through the real
service, ``consumers.services.credential_revoke``, in this process. The clock starts
when the revoking transaction commits (an ``on_commit`` callback registered before the
service's own, so it runs first). One thread per gateway process then calls
``GET /v1/models`` with the key every 2 ms until that process answers 401, and the
time is taken per gateway; a trial's figure is its slowest gateway. Everything between
the commit and the 401 counts: the broker hop, the worker's publish (the change journal
turns the revocation into a delta), the delivery to every gateway and its swap. Trials
are ``--gap`` seconds apart. The report gives min, median, p99 (nearest rank: with 50
trials, the worst but one) and max over trials. The target is p99 ≤ 1 s.

``run(keys, trials, gateways)`` returns the Markdown section; ``__main__`` prints it.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import secrets
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from bench.common import percentile, setup_django

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VAR_DIR = ROOT / "var" / "bench-revocation"
PG_DB_NAME = "portico_bench_revocation"
TARGET_P99_S = 1.0
KEYS_PER_APP = 100
POLL_INTERVAL_S = 0.002
TRIAL_TIMEOUT_S = 30.0


@contextmanager
def _fresh_database() -> Iterator[str]:
    """Create and migrate the benchmark's database; yields its URL for the children."""
    from django.conf import settings
    from django.db import connection

    if connection.vendor == "sqlite":
        path = Path(settings.VAR_DIR) / "bench_revocation.sqlite3"
        url = f"sqlite:///{path}"
        connection.settings_dict.setdefault("TEST", {})["NAME"] = str(path)
    else:
        parts = urlsplit(os.environ["DATABASE_URL"])
        url = urlunsplit(parts._replace(path=f"/{PG_DB_NAME}"))
        connection.settings_dict.setdefault("TEST", {})["NAME"] = PG_DB_NAME
    old_name = connection.settings_dict["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        yield url
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


@dataclass
class Seeded:
    keys: int
    apps: int
    trial_keys: list[tuple[int, str]]  # (credential id, key)
    seconds: float


def seed(*, keys: int, trials: int) -> Seeded:
    """One product, ``keys`` keys over ``keys / 100`` subscribed apps, all by bulk_create."""
    from django.contrib.auth.models import User

    from consumers.models import Consumer, Credential, Subscription
    from gateway.keys import display_prefix, generate_key, hash_key
    from tests.conftest import make_catalog

    started = time.perf_counter()
    catalog = make_catalog(base_url="http://127.0.0.1:9/v1")
    owner = User.objects.create_user("bench", "bench@example.com", None)
    apps = max(1, math.ceil(keys / KEYS_PER_APP))
    Consumer.objects.bulk_create(
        [Consumer(owner=owner, name=f"app-{i}") for i in range(apps)], batch_size=5_000
    )
    app_ids = list(Consumer.objects.order_by("pk").values_list("pk", flat=True))
    Subscription.objects.bulk_create(
        [
            Subscription(
                consumer_id=pk,
                product=catalog.product,
                plan=catalog.plan,
                status=Subscription.Status.APPROVED,
            )
            for pk in app_ids
        ],
        batch_size=5_000,
    )
    # Real keys for the trials, spread over the apps; random hashes for the rest.
    trial_count = min(trials, keys)
    step = max(1, keys // max(1, trial_count))
    real: dict[int, str] = {i * step: generate_key() for i in range(trial_count)}
    batch: list[Credential] = []
    for i in range(keys):
        key = real.get(i)
        batch.append(
            Credential(
                consumer_id=app_ids[i % apps],
                name=f"key-{i}",
                key_hash=hash_key(key) if key else secrets.token_hex(32),
                display_prefix=display_prefix(key) if key else "portico_xxxx",
            )
        )
        if len(batch) == 10_000:
            Credential.objects.bulk_create(batch)
            batch = []
    if batch:
        Credential.objects.bulk_create(batch)
    by_hash = dict(
        Credential.objects.filter(key_hash__in=[hash_key(k) for k in real.values()]).values_list(
            "key_hash", "pk"
        )
    )
    trial_keys = [(by_hash[hash_key(k)], k) for k in real.values()]
    return Seeded(
        keys=keys, apps=apps, trial_keys=trial_keys, seconds=time.perf_counter() - started
    )


@dataclass
class Gateway:
    name: str
    url: str


@dataclass
class Trial:
    per_gateway: dict[str, float] = field(default_factory=dict)  # seconds from commit to 401

    @property
    def slowest(self) -> float:
        return max(self.per_gateway.values())


def _status(client: httpx.Client, gateway: Gateway, key: str) -> int:
    try:
        return client.get(
            f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {key}"}
        ).status_code
    except httpx.HTTPError:
        return 0


def _wait_accepted(clients: dict[str, httpx.Client], gateways: list[Gateway], key: str) -> None:
    deadline = time.monotonic() + 600
    for gateway in gateways:
        while _status(clients[gateway.name], gateway, key) != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{gateway.name} never accepted the trial key")
            time.sleep(0.05)


def one_trial(
    clients: dict[str, httpx.Client], gateways: list[Gateway], credential_id: int, key: str
) -> Trial:
    from django.db import transaction

    from consumers.models import Credential
    from consumers.services import credential_revoke

    credential = Credential.objects.get(pk=credential_id)
    committed = threading.Event()
    start: list[float] = []
    trial = Trial()

    def poll(gateway: Gateway) -> None:
        committed.wait()
        client = clients[gateway.name]
        while True:
            status = _status(client, gateway, key)
            now = time.perf_counter()
            if status == 401:
                trial.per_gateway[gateway.name] = now - start[0]
                return
            if now - start[0] > TRIAL_TIMEOUT_S:
                trial.per_gateway[gateway.name] = math.inf
                return
            time.sleep(POLL_INTERVAL_S)

    def stamp() -> None:
        start.append(time.perf_counter())
        committed.set()

    threads = [threading.Thread(target=poll, args=(g,)) for g in gateways]
    for thread in threads:
        thread.start()
    with transaction.atomic():
        transaction.on_commit(stamp)  # registered first, so it runs first after commit
        credential_revoke(credential=credential)
    for thread in threads:
        thread.join()
    return trial


def _start_stack(
    stack: Any, gateways: int, state_dir: Path, gateway_code: Path | None
) -> list[Gateway]:
    from django.conf import settings

    from devstack.portico import Ports, start_beat, start_portal, start_worker
    from devstack.procs import PYTHON, free_port

    ports = Ports(portal=free_port(), gateway=0, mock_llm=0)
    start_portal(stack, ports)
    start_worker(stack)
    start_beat(stack, str(state_dir / "beat-schedule"))
    found = []
    for i in range(gateways):
        port = free_port()
        name = f"gateway-{i + 1}"
        stack.start(
            name,
            [PYTHON, "-m", "gateway"],
            env={
                "PORTICO_GATEWAY_PORT": str(port),
                "PORTICO_GATEWAY_STATE_DIR": str(state_dir / name),
                "PORTICO_GATEWAY_INSTANCE_ID": f"bench-{name}",
                "PORTICO_CONTROL_PLANE_URL": ports.portal_url,
                "PORTICO_GATEWAY_HEARTBEAT_SECONDS": "1",
                "PORTICO_GATEWAY_SECRET": settings.PORTICO_GATEWAY_SECRET,
                "PORTICO_EGRESS_ALLOW": "127.0.0.0/8,::1",  # the mock upstream is local
                **({"PYTHONPATH": str(gateway_code)} if gateway_code else {}),
            },
            cwd=gateway_code,
            ready_url=f"http://127.0.0.1:{port}/healthz",
        )
        found.append(Gateway(name=name, url=f"http://127.0.0.1:{port}"))
    return found


def _row(label: str, values: list[float]) -> str:
    def ms(v: float) -> str:
        return "timeout" if math.isinf(v) else f"{v * 1000:.0f}"

    return (
        f"| {label} | {len(values)} | {ms(min(values))} | {ms(statistics.median(values))} | "
        f"{ms(percentile(values, 0.99))} | {ms(max(values))} |"
    )


def report(
    seeded: Seeded,
    gateways: list[Gateway],
    trials: list[Trial],
    publish_s: float,
    gap: float,
    gateway_code: Path | None = None,
) -> str:
    from django.conf import settings
    from django.db import connection

    slowest = [t.slowest for t in trials]
    p99 = percentile(slowest, 0.99)
    verdict = "meets" if p99 <= TARGET_P99_S else "misses"
    database = "PostgreSQL" if connection.vendor == "postgresql" else "SQLite (embedded)"
    broker = "Redis" if settings.REDIS_URL else "file-system (embedded)"
    lines = [
        "## Key revocation → 401 at every gateway process",
        "",
        f"{seeded.keys:,} keys over {seeded.apps:,} apps; {len(gateways)} gateway "
        f"processes; {len(trials)} trials {gap:g} s apart. Database: {database}; broker: "
        f"{broker}. {os.cpu_count()} CPUs, Python {platform.python_version()}. Seeding took "
        f"{seeded.seconds:.0f} s, the first (full) publish {publish_s:.1f} s.",
        "",
        "Method: each trial revokes a key through `consumers.services.credential_revoke` "
        "in the benchmark process; the clock starts at that transaction's commit and stops "
        "when a gateway process answers 401 to `GET /v1/models` with the key (polled every "
        "2 ms per process). Real processes: portal (heartbeats), Celery worker, beat, and "
        "one `python -m gateway` per process. See `bench/revocation.py`."
        + (f" Gateways run from `{gateway_code}`." if gateway_code else ""),
        "",
        "| gateway | trials | min ms | median ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for gateway in gateways:
        lines.append(_row(gateway.name, [t.per_gateway[gateway.name] for t in trials]))
    lines.append(_row("**all (slowest per trial)**", slowest))
    lines += [
        "",
        f"p99 {p99 * 1000:.0f} ms: {verdict} the target of {TARGET_P99_S * 1000:.0f} ms.",
    ]
    return "\n".join(lines)


def run(
    keys: int = 10_000,
    trials: int = 50,
    gateways: int = 2,
    *,
    gap: float = 0.5,
    var_dir: Path | None = None,
    gateway_code: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> str:
    """Seed, start the stack, revoke ``trials`` keys; return a Markdown section."""
    say = progress or (lambda message: None)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    var = (var_dir or DEFAULT_VAR_DIR).resolve()
    setup_django(var)
    from django.conf import settings
    from django.db import connection

    from devstack.procs import Stack
    from gatewaysync import services as sync_services
    from gatewaysync.models import GatewayInstance

    with _fresh_database() as database_url:
        say(f"seeding {keys:,} keys…")
        seeded = seed(keys=keys, trials=trials)
        say(f"seeded in {seeded.seconds:.0f} s; first publish…")
        started = time.perf_counter()
        first = sync_services.revision_publish(keep=settings.PORTICO_REVISIONS_KEPT, full=True)
        publish_s = time.perf_counter() - started
        assert first is not None
        connection.close()  # the children use the database from here on
        state_dir = var / "run"
        shutil.rmtree(state_dir, ignore_errors=True)
        stack = Stack(log_dir=state_dir / "log")
        stack.base_env = {
            **stack.base_env,
            "DATABASE_URL": database_url,
            "PORTICO_VAR_DIR": str(var),
            "PORTICO_LOG_LEVEL": os.environ.get("PORTICO_LOG_LEVEL", "INFO"),
        }
        clients: dict[str, httpx.Client] = {}
        try:
            say(f"published revision {first.number} in {publish_s:.1f} s; starting the stack…")
            found = _start_stack(stack, gateways, state_dir, gateway_code)
            clients = {g.name: httpx.Client(timeout=5.0) for g in found}
            say("waiting for every gateway to apply the first revision…")
            for _, key in seeded.trial_keys:
                _wait_accepted(clients, found, key)
            say(f"{GatewayInstance.objects.count()} instances registered; revoking…")
            results: list[Trial] = []
            for i, (credential_id, key) in enumerate(seeded.trial_keys):
                _wait_accepted(clients, found, key)
                stack.check_alive()
                trial = one_trial(clients, found, credential_id, key)
                results.append(trial)
                say(f"  trial {i + 1}: {trial.slowest * 1000:.0f} ms")
                time.sleep(gap)
        finally:
            for client in clients.values():
                client.close()
            stack.stop_all()
            connection.close()
        return report(seeded, found, results, publish_s, gap, gateway_code)


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--gateways", type=int, default=2)
    parser.add_argument("--gap", type=float, default=0.5, help="seconds between trials")
    parser.add_argument("--var-dir", type=Path, default=DEFAULT_VAR_DIR)
    parser.add_argument(
        "--gateway-code",
        type=Path,
        default=None,
        help="run the gateways from the `gateway` package in this directory "
        "(e.g. an export of another commit) instead of this checkout's",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.keys < 1 or args.trials < 1 or args.gateways < 1:
        parser.error("need at least 1 key, 1 trial and 1 gateway")
    section = run(
        args.keys,
        args.trials,
        args.gateways,
        gap=args.gap,
        var_dir=args.var_dir,
        gateway_code=args.gateway_code.resolve() if args.gateway_code else None,
        progress=lambda message: print(message, file=sys.stderr, flush=True),
    )
    print(section)


if __name__ == "__main__":
    main()
