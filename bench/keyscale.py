"""``python -m bench.keyscale``: what a revision with N keys costs a running gateway.

Method. One real ``python -m gateway`` process per key count, pinned to core 0; the mock
LLM (``devstack.mock_llm``) and a load process on core 1. The load process calls ``POST
/v1/chat/completions`` with a valid key open-loop at ``--rate`` requests per second
(each request starts at its scheduled time, whatever the previous ones do, and its
latency counts from that time, so a stalled gateway shows as latency rather than as
fewer requests). Each run then pushes a full revision with N keys (spread over N/10
consumers, each subscribed) over the admin API (with curl, pinned to core 1), as the
control plane does, and records: the time from the start of the PUT to its 200 (the
revision is validated, swapped in and written to disk) and until ``GET /status`` (polled
every 5 ms) shows it; the gateway's VmRSS before and after, and its peak (VmHWM, reset
before the push); the latency of the load's requests scheduled during the PUT against
those scheduled outside any push. Then a delta revoking one key is posted and timed
(PUT-to-200 likewise includes its append to the on-disk delta log). After the runs the
gateway is restarted on its state directory and the time until ``/readyz`` answers 200
is taken (process start included), with the load time the gateway logs. The key lookup
is timed in this process with ``timeit`` on the real index built from the same document:
``CredentialIndex.get`` of a present hash (cycling through 100,000 random ones, so cache
misses count), of an absent one, and with the key's SHA-256 included, which is the whole
per-request cost of authentication.

``run(keys, runs)`` returns the Markdown section; ``__main__`` prints it.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import datetime as dt
import gc
import hashlib
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec

from bench.common import bench_revision, percentile, pin
from devstack.procs import PYTHON, Service, Stack, free_port, wait_until
from gateway import schema
from gateway.keys import generate_key, hash_key
from gateway.revision import AppliedRevision, Pacer, build_incrementally, encode, open_revision
from gateway.secrets import GatewayKeys

ROOT = Path(__file__).resolve().parent.parent
KEYS_PER_CONSUMER = 10


@dataclass
class Run:
    apply_s: float
    visible_s: float
    rss_before_mb: float
    rss_after_mb: float
    rss_peak_mb: float
    during_p99_ms: float
    during_max_ms: float
    during_count: int
    errors: int
    delta_s: float


@dataclass
class Scale:
    keys: int
    document_mb: float = 0.0
    runs: list[Run] = field(default_factory=list)
    outside_p99_ms: float = 0.0
    outside_max_ms: float = 0.0
    outside_count: int = 0
    restart_ready_s: float = 0.0
    restart_load_s: float | None = None
    lookup_hit_ns: float = 0.0
    lookup_miss_ns: float = 0.0
    lookup_with_hash_ns: float = 0.0
    dict_hit_ns: float = 0.0


# The load process ----------------------------------------------------------------------


async def _load(url: str, key: str, rate: float, out: Path) -> None:
    import aiohttp

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    starts, latencies, statuses = array.array("d"), array.array("d"), array.array("i")
    body = msgspec.json.encode({"model": "bench", "messages": [{"role": "user", "content": "hi"}]})
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=256)
    tasks: set[asyncio.Task[None]] = set()

    async def one(session: aiohttp.ClientSession, scheduled: float) -> None:
        try:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                status = response.status
        except aiohttp.ClientError:
            status = 0
        starts.append(scheduled)
        latencies.append(time.monotonic() - scheduled)
        statuses.append(status)

    async with aiohttp.ClientSession(connector=connector) as session:
        interval = 1.0 / rate
        next_at = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            while next_at <= now:
                task = loop.create_task(one(session, next_at))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*tasks, return_exceptions=True)
    with out.open("wb") as handle:
        array.array("q", [len(starts)]).tofile(handle)
        starts.tofile(handle)
        latencies.tofile(handle)
        statuses.tofile(handle)


def _read_samples(path: Path) -> tuple[list[float], list[float], list[int]]:
    data = path.read_bytes()
    count = array.array("q", data[:8])[0]
    doubles = array.array("d")
    doubles.frombytes(data[8 : 8 + 16 * count])
    statuses = array.array("i")
    statuses.frombytes(data[8 + 16 * count :])
    return list(doubles[:count]), list(doubles[count:]), list(statuses)


# Helpers -------------------------------------------------------------------------------


def _proc_mb(pid: int, field_name: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field_name)


def _reset_peak(pid: int) -> None:
    # Writing 5 resets VmHWM to the current RSS (Linux >= 4.0).
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _key_hash(i: int) -> str:
    return hashlib.sha256(b"keyscale-%d" % i).hexdigest()


def _document(
    n: int, keys: GatewayKeys, mock_url: str, upstream_key: str, app_key: str
) -> schema.Revision:
    consumers = max(1, n // KEYS_PER_CONSUMER)
    more = {
        _key_hash(i): schema.Credential(
            id=i + 1, consumer=i % consumers + 1, expires_at=None if i % 2 else 4102444800.0
        )
        for i in range(1, n)
    }
    return bench_revision(
        keys,
        mock_url=mock_url,
        upstream_key=upstream_key,
        app_key=app_key,
        models={"bench": "mock"},
        plan=schema.Plan(id=1, name="Bench", requests_per_minute=1_000_000),
        consumers=consumers,
        more_credentials=more,
    )


def _put(url: str, path: Path, token: str, tmp: Path) -> object:
    """PUT a file with curl (pinned to core 1), or httpx without curl.

    curl sends from the file with little CPU of its own; an httpx upload of 130 MB
    costs this process a second of CPU that the load process would have to share.
    """
    curl = shutil.which("curl")
    if curl is None:
        with httpx.Client(timeout=300) as client:
            response = client.put(
                url, content=path.read_bytes(), headers={"Authorization": f"Bearer {token}"}
            )
        return response.json()
    out = subprocess.run(
        [
            curl,
            "-sS",
            "-T",
            str(path),
            "-H",
            f"Authorization: Bearer {token}",
            "-H",
            "Content-Type: application/json",
            url,
        ],
        capture_output=True,
        check=True,
        preexec_fn=lambda: pin(0, 1),
    )
    return msgspec.json.decode(out.stdout)


class _StatusPoller(threading.Thread):
    """Polls ``/status`` until it shows ``number``; records when (monotonic)."""

    def __init__(self, admin_url: str, token: str, number: int) -> None:
        super().__init__(daemon=True)
        self.admin_url, self.token, self.number = admin_url, token, number
        self.seen_at: float | None = None
        self.stop = False

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(timeout=10) as client:
            while not self.stop and self.seen_at is None:
                try:
                    status = client.get(self.admin_url + "/status", headers=headers).json()
                except httpx.HTTPError:
                    status = {}
                if status.get("applied") == self.number:
                    self.seen_at = time.monotonic()
                    return
                time.sleep(0.005)


# The measurement -----------------------------------------------------------------------


def _start_gateway(
    stack: Stack, name: str, secret: str, state: Path, port: int, admin: int
) -> Service:
    service = stack.start(
        name,
        [PYTHON, "-m", "gateway"],
        env={
            "PORTICO_GATEWAY_SECRET": secret,
            "PORTICO_EGRESS_ALLOW": "127.0.0.0/8,::1",  # the mock upstream is local
            "PORTICO_GATEWAY_PORT": str(port),
            "PORTICO_GATEWAY_ADMIN_PORT": str(admin),
            "PORTICO_GATEWAY_STATE_DIR": str(state),
            "PORTICO_CONTROL_PLANE_URL": f"http://127.0.0.1:{free_port()}",
            "PORTICO_LOG_LEVEL": "INFO",
        },
        ready_url=f"http://127.0.0.1:{port}/healthz",
        ready_timeout=120,
        cwd=ROOT,
    )
    pin(service.process.pid, 0)
    return service


def _measure(
    n: int, runs: int, rate: float, stack: Stack, tmp: Path, mock_url: str, upstream_key: str
) -> Scale:
    secret = secrets.token_urlsafe(48)
    keys = GatewayKeys.from_secret(secret)
    app_key = generate_key()
    port, admin = free_port(), free_port()
    state = tmp / f"state-{n}"
    admin_url = f"http://127.0.0.1:{admin}"
    auth = {"Authorization": f"Bearer {keys.auth_token}"}
    scale = Scale(keys=n)
    doc = _document(n, keys, mock_url, upstream_key, app_key)
    gateway = _start_gateway(stack, f"gateway-{n}", secret, state, port, admin)
    http = httpx.Client(timeout=120)
    small = msgspec.structs.replace(
        doc, credentials={hash_key(app_key): doc.credentials[hash_key(app_key)]}
    )
    http.put(admin_url + "/revision", content=encode(small), headers=auth).raise_for_status()
    samples_path = tmp / f"load-{n}.bin"
    load = stack.start(
        f"load-{n}",
        [
            PYTHON,
            "-m",
            "bench.keyscale",
            "--load-worker",
            f"http://127.0.0.1:{port}/v1/chat/completions",
            app_key,
            str(rate),
            str(samples_path),
        ],
        cwd=ROOT,
    )
    pin(load.process.pid, 1)
    windows: list[tuple[float, float]] = []
    try:
        time.sleep(2.0)  # the load settles; these seconds are "outside" samples too
        for r in range(1, runs + 1):
            number = 10 * r
            raw = tmp / "push.json"
            raw.write_bytes(encode(msgspec.structs.replace(doc, revision=number)))
            scale.document_mb = raw.stat().st_size / 1e6
            gc.collect()
            pid = gateway.process.pid
            rss_before = _proc_mb(pid, "VmRSS")
            _reset_peak(pid)
            poller = _StatusPoller(admin_url, keys.auth_token, number)
            started = time.monotonic()
            poller.start()
            answered = _put(admin_url + "/revision", raw, keys.auth_token, tmp)
            finished = time.monotonic()
            assert answered == {"applied": number}, answered
            poller.join(timeout=30)
            windows.append((started, finished))
            time.sleep(2.0)  # the replaced revision is freed in the background
            rss_after = _proc_mb(pid, "VmRSS")
            peak = _proc_mb(pid, "VmHWM")
            # A one-key revocation as a delta.
            delta = schema.Delta(
                schema=1,
                base=number,
                revision=number + 1,
                created_at=dt.datetime.now(dt.UTC).isoformat(),
                credentials_remove=[_key_hash(r)],
            )
            body = encode(delta)
            delta_started = time.monotonic()
            answer = http.post(admin_url + "/revision/delta", content=body, headers=auth)
            delta_s = time.monotonic() - delta_started
            assert answer.json() == {"applied": number + 1}, answer.text
            scale.runs.append(
                Run(
                    apply_s=finished - started,
                    visible_s=(poller.seen_at or float("nan")) - started,
                    rss_before_mb=rss_before,
                    rss_after_mb=rss_after,
                    rss_peak_mb=peak,
                    during_p99_ms=0.0,
                    during_max_ms=0.0,
                    during_count=0,
                    errors=0,
                    delta_s=delta_s,
                )
            )
            time.sleep(1.0)
    finally:
        load.process.send_signal(signal.SIGTERM)
        load.process.wait(timeout=60)
    starts, latencies, statuses = _read_samples(samples_path)
    margin = 0.05
    outside = []
    for run, (lo, hi) in zip(scale.runs, windows, strict=True):
        during = [lat for s, lat in zip(starts, latencies, strict=True) if lo <= s <= hi]
        run.during_count = len(during)
        run.during_p99_ms = percentile(during, 0.99) * 1000
        run.during_max_ms = max(during, default=float("nan")) * 1000
        run.errors = sum(
            1 for s, st in zip(starts, statuses, strict=True) if lo <= s <= hi and st != 200
        )
    for s, lat in zip(starts, latencies, strict=True):
        if all(not (lo - margin <= s <= hi + 2.0) for lo, hi in windows):
            outside.append(lat)
    scale.outside_count = len(outside)
    scale.outside_p99_ms = percentile(outside, 0.99) * 1000
    scale.outside_max_ms = max(outside, default=float("nan")) * 1000

    # Restart on the state directory: the snapshot plus the delta log.
    gateway.stop()
    started = time.monotonic()
    restarted = _start_gateway(stack, f"gateway-{n}-restart", secret, state, port, admin)
    wait_until(
        lambda: httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200,
        timeout=120,
        what="the restarted gateway to be ready",
    )
    scale.restart_ready_s = time.monotonic() - started
    logged = re.search(r"loaded in ([\d.]+) s", restarted.log_path.read_text(errors="replace"))
    scale.restart_load_s = float(logged.group(1)) if logged else None
    restarted.stop()

    _time_lookups(scale, doc, keys, app_key)
    http.close()
    return scale


def _time_lookups(scale: Scale, doc: schema.Revision, keys: GatewayKeys, app_key: str) -> None:
    async def build(raw: bytes) -> AppliedRevision:
        return await build_incrementally(open_revision(raw), keys, Pacer())

    applied = asyncio.run(build(encode(doc)))
    index = applied.credentials
    n = len(index)
    rng = random.Random(7)
    present = [
        _key_hash(rng.randrange(1, n)) if n > 1 else hash_key(app_key) for _ in range(100_000)
    ]
    absent = [_key_hash(-1 - i) for i in range(1000)]
    key = app_key.encode()

    def per_call(stmt: str, namespace: dict[str, object], number: int) -> float:
        return min(timeit.repeat(stmt, globals=namespace, number=number, repeat=5)) / number * 1e9

    cycle = {"get": index.get, "items": present, "n": len(present)}
    scale.lookup_hit_ns = per_call("for h in items: get(h)", cycle, 1) / len(present)
    miss = {"get": index.get, "items": absent}
    scale.lookup_miss_ns = per_call("for h in items: get(h)", miss, 100) / len(absent)
    whole = {"get": index.get, "hash_key": hash_key, "key": key}
    scale.lookup_with_hash_ns = per_call("get(hash_key(key))", whole, 100_000)
    plain = dict(index.items())
    cycle_plain = {"get": plain.get, "items": present}
    scale.dict_hit_ns = per_call("for h in items: get(h)", cycle_plain, 1) / len(present)
    del plain


# Reporting -----------------------------------------------------------------------------


def _spread(values: list[float], fmt: str = "{:.2f}") -> str:
    clean = [v for v in values if v == v]
    if not clean:
        return "n/a"
    return " / ".join(fmt.format(v) for v in (min(clean), statistics.median(clean), max(clean)))


def render(scales: list[Scale], runs: int, rate: float) -> str:
    lines = [
        "## Revisions with many keys (`python -m bench.keyscale`)",
        "",
        f"{runs} runs per key count; min / median / max over runs. Load: {rate:.0f} "
        "chat completions per second, open-loop, through the gateway to the mock LLM.",
        "",
        "| keys | document | full push: PUT → 200 (s) | → visible in /status (s) "
        "| RSS before / after (MB) | peak RSS (MB) | latency during push p99 / max (ms) "
        "| latency outside pushes p99 / max (ms) | errors | 1-key revocation delta (ms) "
        "| restart → ready (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in scales:
        r = s.runs
        lines.append(
            f"| {s.keys:,} | {s.document_mb:.1f} MB | {_spread([x.apply_s for x in r])} "
            f"| {_spread([x.visible_s for x in r])} "
            f"| {statistics.median(x.rss_before_mb for x in r):.0f} / "
            f"{statistics.median(x.rss_after_mb for x in r):.0f} "
            f"| {_spread([x.rss_peak_mb for x in r], '{:.0f}')} "
            f"| {_spread([x.during_p99_ms for x in r], '{:.1f}')} ; "
            f"{_spread([x.during_max_ms for x in r], '{:.1f}')} "
            f"| {s.outside_p99_ms:.1f} / {s.outside_max_ms:.1f} "
            f"| {sum(x.errors for x in r)} "
            f"| {_spread([x.delta_s * 1000 for x in r], '{:.1f}')} "
            f"| {s.restart_ready_s:.2f}"
            + (f" (load {s.restart_load_s:.2f})" if s.restart_load_s is not None else "")
            + " |"
        )
    lines += [
        "",
        "Key lookup in the real index (ns per call, best of 5):",
        "",
        "| keys | hit, random keys | miss | SHA-256 of the key + lookup "
        "| plain dict hit, same keys |",
        "|---|---|---|---|---|",
    ]
    for s in scales:
        lines.append(
            f"| {s.keys:,} | {s.lookup_hit_ns:.0f} | {s.lookup_miss_ns:.0f} "
            f"| {s.lookup_with_hash_ns:.0f} | {s.dict_hit_ns:.0f} |"
        )
    lines += ["", " ".join(__doc__.split("\n\n")[1].split()), ""]
    lines.append(
        "Samples during a push: requests scheduled between the start of the PUT and its "
        "200; outside: every other request, except those within 2 s after a push (when "
        "the replaced revision is being freed). Latency counts from the scheduled start."
    )
    return "\n".join(lines) + "\n"


def run(keys: list[int], runs: int, rate: float = 500.0) -> str:
    """Measure each key count ``runs`` times; returns the Markdown section."""
    tmp = Path(tempfile.mkdtemp(prefix="portico-keyscale-"))
    stack = Stack(log_dir=tmp / "log")
    upstream_key = "sk-keyscale-" + secrets.token_urlsafe(16)
    mock_port = free_port()
    scales = []
    try:
        mock = stack.start(
            "mock",
            [
                PYTHON,
                "-m",
                "devstack.mock_llm",
                "--port",
                str(mock_port),
                "--require-key",
                upstream_key,
            ],
            ready_url=f"http://127.0.0.1:{mock_port}/v1/models",
            cwd=ROOT,
        )
        pin(mock.process.pid, 1)
        for n in keys:
            print(f"keyscale: {n:,} keys…", file=sys.stderr, flush=True)
            scales.append(
                _measure(
                    n, runs, rate, stack, tmp, f"http://127.0.0.1:{mock_port}/v1", upstream_key
                )
            )
    finally:
        stack.stop_all()
    return render(scales, runs, rate)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--load-worker":
        url, key, rate, out = sys.argv[2:6]
        asyncio.run(_load(url, key, float(rate), Path(out)))
        return 0
    parser = argparse.ArgumentParser(description="Gateway cost of revisions with many keys")
    parser.add_argument("--keys", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rate", type=float, default=500.0, help="load, requests per second")
    args = parser.parse_args()
    print(run(args.keys, args.runs, args.rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
