"""``python -m bench``: measure Portico, side by side with its ceiling and its peers.

Suites (``--suites``, all by default), each a section of ``bench/results/<date>.md``:

- ``proxy`` (here): gateway throughput, latency and CPU per request against the bare
  proxy, the upstream alone and the LiteLLM proxy;
- ``keyscale`` (``bench/keyscale.py``): 10,000- and 1,000,000-key revisions — apply
  time under traffic, RSS, lookup cost;
- ``revocation`` (``bench/revocation.py``): time from a key's revocation committing in
  the control plane to a 401 at every gateway process;
- ``pages`` (``bench/portal_pages.py``): portal pages and API lists at 10,000 products
  and 100,000 consumers — server time and query counts.

The proxy suite's method. Every server runs as one process. The server under test is
pinned to core 0; the mock upstream and wrk (one thread) share core 1, so the figures
are per core of the server under test. Each target is measured non-streaming and with 20-chunk
streams, at 1 connection (latency) and 50 connections (throughput), for ``--runs``
runs of ``--duration`` seconds after a warm-up; the report gives min/median/max over
runs. CPU per request is the server process's user+system CPU time over the run
divided by the requests wrk completed.

Targets:
- ``direct``: wrk straight at the mock upstream (what the upstream alone can do);
- ``bare``: ``bench/bare_proxy.py``, a raw-ASGI proxy with one aiohttp session and no
  policy — the ceiling for a Python proxy here;
- ``gateway``: ``python -m gateway`` with a pushed revision, key authentication,
  subscription check, usage events to a Redis stream (when ``redis-server`` is
  installed; else to the disk spool) — the full path an app's call takes today;
- ``gateway-local``: the same without Redis (usage to the disk spool, limits counted
  in-process); it runs the policy scenarios only;
- ``gateway-2p``: the same with two worker processes, unpinned, to see how it scales
  (see the report's note: this machine has no spare core for the load generator);
- ``litellm``: the LiteLLM proxy (``litellm[proxy]==1.108.7``, installed into its own
  virtualenv under ``var/bench/litellm`` on first use), one worker, no database, a
  random master key, the local model cost map — against the same mock.

The gateways also run the policy scenarios (``POLICY_SCENARIOS``): the full policy
chain with a plan's limits counted on every call, and Anthropic's ``/v1/messages``
converted to the OpenAI-wire mock, streaming and not; ``mcp-tool``, the same chat
completion made by an MCP client as a REST-to-MCP ``tools/call`` on ``/mcp/bench-tools``;
and ``a2a-rest``, the same completion made by an A2A client as a ``SendMessage`` to a
REST agent wrapping the mock's chat endpoint (``/agents/bench-agent``).

Writes ``bench/results/<date>.md`` and prints its summary table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec

from bench.common import bench_revision, cpu_times, pin
from devstack.procs import PYTHON, Stack, free_port, wait_until
from gateway import schema
from gateway.keys import generate_key, hash_key
from gateway.revision import encode
from gateway.secrets import GatewayKeys

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SCENARIOS = {
    # name: (upstream model, public model on the gateway, stream)
    "non-stream": ("mock", "bench", False),
    "stream-20": ("mock-chunks-20", "bench-stream", True),
}
# Gateway-only scenarios: (public model, stream, path, body format, limited plan).
# "limits": the full policy chain with a plan's request and token limits counted (in
# Redis on "gateway", in-process on "gateway-local") and never reached; "messages":
# Anthropic's /v1/messages converted to the OpenAI-wire mock and back.
POLICY_SCENARIOS = {
    "limits": ("bench", False, "/v1/chat/completions", "openai", True),
    "limits-stream": ("bench-stream", True, "/v1/chat/completions", "openai", True),
    "messages": ("bench", False, "/v1/messages", "anthropic", False),
    "messages-stream": ("bench-stream", True, "/v1/messages", "anthropic", False),
}
# "mcp-tool": the same chat completion as "non-stream", made by an MCP client as a
# REST-to-MCP tool call (tools/call at 2026-07-28 on /mcp/bench-tools: header checks,
# the pinned schema's validation, the request built from the arguments, the answer
# turned into a tool result).
MCP_PRODUCT = "bench-tools"
MCP_TOOL = "complete"
# "a2a-rest": the same chat completion as an A2A v1.0 SendMessage to a REST agent whose
# call template posts the message's text to the mock (ids wrapped, the reply selected
# and turned into an agent message).
AGENT_PRODUCT = "bench-agent"
# Limits that are counted on every call and never refuse one in a run.
BENCH_LIMITS = schema.Plan(
    id=2,
    name="Bench limited",
    requests_per_minute=1_000_000_000,
    tokens_per_minute=1_000_000_000,
    tokens_per_day=1_000_000_000,
)
CONCURRENCY = (1, 50, 500)
LITELLM_VERSION = "1.108.7"
LITELLM_VENV = ROOT / "var" / "bench" / "litellm"
ALL_TARGETS = "direct,bare,gateway,gateway-local,gateway-2p,litellm"


@dataclass
class Run:
    steal_pct: float
    rps: float
    requests: int
    non_2xx: int
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float | None


@dataclass
class Result:
    target: str
    scenario: str
    connections: int
    runs: list[Run] = field(default_factory=list)

    def median(self, attr: str) -> float:
        values = [getattr(r, attr) for r in self.runs if getattr(r, attr) is not None]
        return statistics.median(values) if values else float("nan")

    def spread(self, attr: str) -> tuple[float, float, float]:
        values = [getattr(r, attr) for r in self.runs]
        return min(values), statistics.median(values), max(values)


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk is missing; installing it with apt-get…", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk could not be installed")
    return found


def ensure_litellm() -> Path:
    """The LiteLLM proxy's executable, installed into its own virtualenv on first use."""
    exe = LITELLM_VENV / "bin" / "litellm"
    stamp = LITELLM_VENV / f".installed-{LITELLM_VERSION}"
    if exe.exists() and stamp.exists():
        return exe
    print(f"installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV}…", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    pip = [str(LITELLM_VENV / "bin" / "pip"), "install", "-q"]
    subprocess.run([*pip, f"litellm[proxy]=={LITELLM_VERSION}"], check=True)
    stamp.touch()
    return exe


def litellm_config(path: Path, mock_url: str, upstream_key: str, master_key: str) -> None:
    """LiteLLM's config: the bench's public models routed to the mock, as the gateway's."""
    lines = ["model_list:"]
    for upstream, public, _ in SCENARIOS.values():
        lines += [
            f"  - model_name: {public}",
            "    litellm_params:",
            f"      model: openai/{upstream}",
            f"      api_base: {mock_url}",
            f"      api_key: {upstream_key}",
        ]
    lines += ["general_settings:", f"  master_key: {master_key}"]
    path.write_text("\n".join(lines) + "\n")


def cpu_seconds(pids: int | list[int]) -> float:
    """User+system CPU seconds of the server process(es) under test."""
    total = 0
    for pid in [pids] if isinstance(pids, int) else pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """The worker processes of a uvicorn supervisor."""
    tasks = Path(f"/proc/{pid}/task")
    found: list[int] = []
    for task in tasks.iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _ready_everywhere(port: int, workers: int) -> bool:
    """True when every worker answers ready: enough consecutive 200s to have hit each."""
    try:
        with httpx.Client() as client:  # a fresh connection each time, spread by the kernel
            return all(
                client.get(
                    f"http://127.0.0.1:{port}/readyz", headers={"Connection": "close"}
                ).status_code
                == 200
                for _ in range(10 * workers)
            )
    except httpx.HTTPError:
        return False


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk_script(
    path: Path, body: dict[str, object], key: str | None, headers: dict[str, str] | None = None
) -> None:
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {json.dumps(json.dumps(body))}",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    if key:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {key}"')
    for name, value in (headers or {}).items():
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")


def mcp_product(
    keys: GatewayKeys, mock_url: str, upstream_key: str
) -> tuple[dict[str, schema.Upstream], schema.Product]:
    """The MCP product of the "mcp-tool" scenario: one REST-to-MCP tool posting its
    ``request`` argument to the mock's chat completions."""
    tool = schema.McpTool(
        name=MCP_TOOL,
        definition={
            "name": MCP_TOOL,
            "description": "Complete a chat.",
            "inputSchema": {
                "type": "object",
                "properties": {"request": {"type": "object"}},
                "required": ["request"],
            },
        },
        rest=schema.RestCall(
            method="POST",
            path="/chat/completions",
            arguments=[schema.RestArgument(name="request", in_="whole_body")],
        ),
    )
    upstream = schema.Upstream(vendor="rest", base_url=mock_url, secret=keys.seal(upstream_key))
    product = schema.Product(
        id=2,
        slug=MCP_PRODUCT,
        kind="mcp",
        mcp=schema.McpServer(upstream="mock-rest", tools=[tool]),
    )
    return {"mock-rest": upstream}, product


def mcp_call(model: str) -> tuple[dict[str, object], dict[str, str]]:
    """A 2026-07-28 ``tools/call`` of the scenario's tool, and its headers."""
    body: dict[str, object] = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": MCP_TOOL,
            "arguments": {
                "request": {
                    "model": model,
                    "messages": [{"role": "user", "content": "Say something short."}],
                }
            },
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": MCP_TOOL,
    }
    return body, headers


def agent_product(
    keys: GatewayKeys, mock_url: str, upstream_key: str
) -> tuple[dict[str, schema.Upstream], schema.Product]:
    """The agent product of the "a2a-rest" scenario: a REST agent posting the message's
    text to the mock's chat completions and answering with the reply."""
    upstream = schema.Upstream(
        vendor="rest-agent", base_url=mock_url, secret=keys.seal(upstream_key), name="mock-agent"
    )
    call = schema.RestAgentCall(
        path="/chat/completions",
        request={"model": "mock", "messages": [{"role": "user", "content": "{{text}}"}]},
        reply="choices.0.message.content",
    )
    product = schema.Product(
        id=3,
        slug=AGENT_PRODUCT,
        kind="agent",
        agent=schema.AgentProduct(
            card={"name": "Bench agent", "description": "", "version": "1", "skills": []},
            targets=[schema.AgentTarget(upstream="mock-agent", rest=call)],
            health_check_seconds=0,
        ),
    )
    return {"mock-agent": upstream}, product


def agent_call() -> tuple[dict[str, object], dict[str, str]]:
    """An A2A v1.0 ``SendMessage`` to the scenario's agent, and its headers."""
    body: dict[str, object] = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendMessage",
        "params": {
            "message": {
                "messageId": "bench-1",
                "role": "ROLE_USER",
                "parts": [{"text": "Say something short."}],
            }
        },
    }
    return body, {"A2A-Version": "1.0"}


def run_wrk(
    wrk: str, url: str, script: Path, connections: int, duration: int, server_pid: int | list[int]
) -> Run:
    before = cpu_seconds(server_pid)
    steal_before, total_before = cpu_times()
    # A generous timeout: a slow server's requests count as slow, not as lost.
    argv = [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "30s", "--latency"]
    argv += ["-s", str(script), url]
    completed = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: pin(0, 1),
    )
    after = cpu_seconds(server_pid)
    steal_after, total_after = cpu_times()
    out = completed.stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx_match = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, flags=re.MULTILINE))
    if set(latency) != {"50", "99"}:
        raise RuntimeError(f"wrk measured nothing at {url}:\n{out}\n{completed.stderr}")
    return Run(
        # Time the hypervisor gave to other guests: figures taken under high steal are
        # noise, so every run reports it.
        steal_pct=100.0 * (steal_after - steal_before) / max(1, total_after - total_before),
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        requests=requests,
        non_2xx=int(non_2xx_match.group(1)) if non_2xx_match else 0,
        p50_ms=_ms(latency["50"]),
        p99_ms=_ms(latency["99"]),
        cpu_us_per_request=(after - before) * 1e6 / requests if requests else None,
    )


def versions() -> str:
    names = ["uvicorn", "uvloop", "httptools", "aiohttp", "orjson", "msgspec", "Django"]
    return ", ".join(f"{n} {importlib.metadata.version(n)}" for n in names)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


SUITES = "proxy,keyscale,revocation,pages"


def main() -> int:
    parser = argparse.ArgumentParser(description="Portico benchmarks")
    parser.add_argument("--suites", default=SUITES, help=f"comma-separated subset of {SUITES}")
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="report path")
    parser.add_argument("--keys", default="10000,1000000", help="keyscale: revision sizes in keys")
    parser.add_argument(
        "--revocation-keys", type=int, default=100_000, help="revocation: keys in the database"
    )
    parser.add_argument("--trials", type=int, default=50, help="revocation: trials")
    parser.add_argument("--products", type=int, default=10_000, help="pages: products")
    parser.add_argument("--consumers", type=int, default=100_000, help="pages: consumers")
    parser.add_argument("--samples", type=int, default=50, help="pages: requests per page")
    parser.add_argument(
        "--targets", default=ALL_TARGETS, help=f"comma-separated subset of {ALL_TARGETS}"
    )
    parser.add_argument(
        "--concurrency",
        default=",".join(map(str, CONCURRENCY)),
        help="comma-separated connection counts",
    )
    parser.add_argument("--no-redis", action="store_true", help="gateway usage to the disk spool")
    args = parser.parse_args()
    suites = args.suites.split(",")
    header = [
        f"# Benchmark results, {dt.date.today().isoformat()}",
        "",
        f"- machine: {os.cpu_count()} cores ({cpu_model()}), "
        f"Python {platform.python_version()}, {platform.platform()}",
        f"- versions: {versions()}",
        f"- command: `python -m bench {' '.join(sys.argv[1:])}`",
        "",
    ]
    sections = ["\n".join(header)]
    if "proxy" in suites:
        sections.append(proxy_suite(args))
    if "keyscale" in suites:
        from bench import keyscale

        keys = [int(k) for k in args.keys.split(",")]
        sections.append(keyscale.run(keys=keys, runs=args.runs))
    if "revocation" in suites:
        from bench import revocation

        sections.append(revocation.run(keys=args.revocation_keys, trials=args.trials, gateways=2))
    if "pages" in suites:
        from bench import portal_pages

        sections.append(
            portal_pages.run(products=args.products, consumers=args.consumers, samples=args.samples)
        )
    out = args.out or RESULTS / f"{dt.date.today().isoformat()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n\n".join(section.strip("\n") for section in sections) + "\n")
    print(f"\nwrote {out}")
    return 0


def proxy_suite(args: argparse.Namespace) -> str:
    """The proxy throughput and latency table: every target, scenario and concurrency."""
    wrk = ensure_wrk()
    tmp = Path(tempfile.mkdtemp(prefix="portico-bench-"))
    stack = Stack(log_dir=tmp / "log")
    keys_secret = secrets.token_urlsafe(48)
    keys = GatewayKeys.from_secret(keys_secret)
    upstream_key = "sk-bench-" + secrets.token_urlsafe(16)
    app_key = generate_key()
    limited_key = generate_key()
    mock_port, bare_port, gw_port, admin_port, gw2_port, litellm_port, local_port = (
        free_port() for _ in range(7)
    )
    wanted = args.targets.split(",")
    concurrency = [int(c) for c in args.concurrency.split(",")]
    results: list[Result] = []
    app_keys: dict[str, str] = {}  # per target, where it is not the gateway's app key
    usage_sink = "disk spool (no redis-server found)"
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
        )
        pin(mock.process.pid, 1)
        gateway_env = {
            "PORTICO_GATEWAY_SECRET": keys_secret,
            "PORTICO_EGRESS_ALLOW": "127.0.0.0/8,::1",  # the mock upstream is local
            "PORTICO_GATEWAY_PORT": str(gw_port),
            "PORTICO_GATEWAY_ADMIN_PORT": str(admin_port),
            "PORTICO_GATEWAY_STATE_DIR": str(tmp / "gateway"),
            "PORTICO_CONTROL_PLANE_URL": f"http://127.0.0.1:{free_port()}",
            "PORTICO_LOG_LEVEL": "WARNING",
        }
        if shutil.which("redis-server") and not args.no_redis:
            redis_port = free_port()
            stack.start(
                "redis",
                ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
            )
            time.sleep(0.5)
            gateway_env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
            usage_sink = "Redis stream (local redis-server)"
        gateway = stack.start(
            "gateway",
            [PYTHON, "-m", "gateway"],
            env=gateway_env,
            ready_url=f"http://127.0.0.1:{gw_port}/healthz",
        )
        pin(gateway.process.pid, 0)
        doc = bench_revision(
            keys,
            mock_url=f"http://127.0.0.1:{mock_port}/v1",
            upstream_key=upstream_key,
            app_key=app_key,
            models={public: upstream for upstream, public, _ in SCENARIOS.values()},
            plan=schema.Plan(id=1, name="Bench"),
            consumers=2,
            more_credentials={hash_key(limited_key): schema.Credential(id=2, consumer=2)},
        )
        # App 2 runs under limits (the policy scenarios' key); app 1 may call the MCP
        # product too.
        mcp_upstreams, tools = mcp_product(keys, f"http://127.0.0.1:{mock_port}/v1", upstream_key)
        agent_upstreams, agent = agent_product(
            keys, f"http://127.0.0.1:{mock_port}/v1", upstream_key
        )
        free = schema.Plan(id=1, name="Bench")
        doc = msgspec.structs.replace(
            doc,
            upstreams={**doc.upstreams, **mcp_upstreams, **agent_upstreams},
            products={**doc.products, MCP_PRODUCT: tools, AGENT_PRODUCT: agent},
            consumers={
                **doc.consumers,
                "1": schema.Consumer(
                    id=1,
                    subscriptions={
                        "bench": schema.Subscription(id=1, plan=free),
                        MCP_PRODUCT: schema.Subscription(id=3, plan=free),
                        AGENT_PRODUCT: schema.Subscription(id=4, plan=free),
                    },
                ),
                "2": schema.Consumer(
                    id=2, subscriptions={"bench": schema.Subscription(id=2, plan=BENCH_LIMITS)}
                ),
            },
        )
        pushed = httpx.put(
            f"http://127.0.0.1:{admin_port}/revision",
            content=encode(doc),
            headers={"Authorization": f"Bearer {keys.auth_token}"},
        )
        pushed.raise_for_status()
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{gw_port}/readyz").status_code == 200,
            timeout=10,
            what="the gateway to apply the bench revision",
        )
        bare = stack.start(
            "bare",
            [
                PYTHON,
                "-m",
                "bench.bare_proxy",
                "--port",
                str(bare_port),
                "--upstream",
                f"http://127.0.0.1:{mock_port}",
                "--key",
                upstream_key,
            ],
        )
        wait_until(lambda: _listening(bare_port), timeout=15, what="the bare proxy")
        pin(bare.process.pid, 0)

        targets: dict[str, tuple[str, int | list[int], bool]] = {
            "direct": (
                f"http://127.0.0.1:{mock_port}/v1/chat/completions",
                mock.process.pid,
                False,
            ),
            "bare": (f"http://127.0.0.1:{bare_port}/v1/chat/completions", bare.process.pid, False),
            "gateway": (
                f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                gateway.process.pid,
                True,
            ),
        }
        if "gateway-local" in wanted:
            # The same revision, loaded from the first gateway's last-known-good copy.
            wait_until(
                lambda: any((tmp / "gateway").iterdir()),
                timeout=10,
                what="the gateway to save its revision",
            )
            shutil.copytree(tmp / "gateway", tmp / "gateway-local")
            local_env = {
                **gateway_env,
                "PORTICO_GATEWAY_PORT": str(local_port),
                "PORTICO_GATEWAY_ADMIN_PORT": "0",
                "PORTICO_GATEWAY_STATE_DIR": str(tmp / "gateway-local"),
            }
            local_env.pop("REDIS_URL", None)
            local = stack.start(
                "gateway-local",
                [PYTHON, "-m", "gateway"],
                env=local_env,
                ready_url=f"http://127.0.0.1:{local_port}/readyz",
            )
            pin(local.process.pid, 0)
            targets["gateway-local"] = (
                f"http://127.0.0.1:{local_port}/v1/chat/completions",
                local.process.pid,
                True,
            )
        if "gateway-2p" in wanted:
            # Two workers load the revision the single process saved as last-known-good.
            wait_until(
                lambda: any((tmp / "gateway").iterdir()),
                timeout=10,
                what="the gateway to save its revision",
            )
            shutil.copytree(tmp / "gateway", tmp / "gateway-2p")
            two = stack.start(
                "gateway-2p",
                [PYTHON, "-m", "gateway"],
                env={
                    **gateway_env,
                    "PORTICO_GATEWAY_PORT": str(gw2_port),
                    "PORTICO_GATEWAY_ADMIN_PORT": "0",
                    "PORTICO_GATEWAY_WORKERS": "2",
                    "PORTICO_GATEWAY_STATE_DIR": str(tmp / "gateway-2p"),
                },
                ready_url=f"http://127.0.0.1:{gw2_port}/healthz",
            )
            wait_until(
                lambda: _ready_everywhere(gw2_port, 2),
                timeout=30,
                what="both gateway workers to load the revision",
            )
            targets["gateway-2p"] = (
                f"http://127.0.0.1:{gw2_port}/v1/chat/completions",
                _children(two.process.pid),
                True,
            )
        if "litellm" in wanted:
            litellm_exe = ensure_litellm()
            master_key = "sk-" + secrets.token_urlsafe(24)
            config = tmp / "litellm.yaml"
            litellm_config(config, f"http://127.0.0.1:{mock_port}/v1", upstream_key, master_key)
            litellm = stack.start(
                "litellm",
                [
                    # No database or Redis of ours: the reference setup has neither.
                    *("env", "-u", "DATABASE_URL", "-u", "REDIS_URL"),
                    str(litellm_exe),
                    "--config",
                    str(config),
                    "--port",
                    str(litellm_port),
                    "--host",
                    "127.0.0.1",
                    "--num_workers",
                    "1",
                ],
                env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"},
                ready_url=f"http://127.0.0.1:{litellm_port}/health/liveliness",
                ready_timeout=180,
            )
            pin(litellm.process.pid, 0)
            targets["litellm"] = (
                f"http://127.0.0.1:{litellm_port}/v1/chat/completions",
                litellm.process.pid,
                True,
            )
            app_keys["litellm"] = master_key
        for scenario, (upstream_model, public_model, stream) in SCENARIOS.items():
            for target, (url, pid, via_gateway) in targets.items():
                if target not in wanted or target == "gateway-local":
                    continue
                body: dict[str, object] = {
                    "model": public_model if via_gateway else upstream_model,
                    "messages": [{"role": "user", "content": "Say something short."}],
                }
                if stream:
                    body["stream"] = True
                script = tmp / f"{target}-{scenario}.lua"
                # Straight at the mock, wrk presents the upstream key itself; the bare
                # proxy adds it as the gateway does.
                wrk_script(
                    script, body, app_keys.get(target, app_key) if via_gateway else upstream_key
                )
                run_wrk(wrk, url, script, 10, 1, pid)  # warm-up
                for connections in concurrency:
                    result = Result(target, scenario, connections)
                    for _ in range(args.runs):
                        result.runs.append(
                            run_wrk(wrk, url, script, connections, args.duration, pid)
                        )
                    results.append(result)
                    print(_line(result), flush=True)
        for scenario, (public_model, stream, path, form, limited) in POLICY_SCENARIOS.items():
            for target in ("gateway", "gateway-local"):
                if target not in wanted or target not in targets:
                    continue
                url, pid, _ = targets[target]
                url = url.replace("/v1/chat/completions", path)
                body = {
                    "model": public_model,
                    "messages": [{"role": "user", "content": "Say something short."}],
                }
                if form == "anthropic":
                    body["max_tokens"] = 100
                if stream:
                    body["stream"] = True
                script = tmp / f"{target}-{scenario}.lua"
                wrk_script(script, body, limited_key if limited else app_key)
                results.append(measure(wrk, target, scenario, url, script, pid, args))
        mcp_body, mcp_headers = mcp_call("mock")
        a2a_body, a2a_headers = agent_call()
        product_scenarios = (
            # name, path, body, headers, whether a probe's answer shows a completed call
            (
                "mcp-tool",
                f"/mcp/{MCP_PRODUCT}",
                mcp_body,
                mcp_headers,
                lambda answer: answer.get("result", {}).get("isError") is False,
            ),
            (
                "a2a-rest",
                f"/agents/{AGENT_PRODUCT}",
                a2a_body,
                a2a_headers,
                lambda answer: "message" in answer.get("result", {}),
            ),
        )
        for target in ("gateway", "gateway-local"):
            if target not in wanted or target not in targets:
                continue
            base_url, pid, _ = targets[target]
            for scenario, path, body, headers, completed in product_scenarios:
                url = base_url.replace("/v1/chat/completions", path)
                # A JSON-RPC error is a 200 too: make sure the call really completes.
                probe = httpx.post(
                    url, json=body, headers={**headers, "Authorization": f"Bearer {app_key}"}
                ).json()
                if not completed(probe):
                    raise SystemExit(f"the {scenario} scenario does not work: {probe}")
                script = tmp / f"{target}-{scenario}.lua"
                wrk_script(script, body, app_key, headers)
                results.append(measure(wrk, target, scenario, url, script, pid, args))
    finally:
        stack.stop_all()
    print(summary(results))
    return render(results, args, usage_sink)


def measure(
    wrk: str,
    target: str,
    scenario: str,
    url: str,
    script: Path,
    pid: int | list[int],
    args: argparse.Namespace,
) -> Result:
    """A scenario at 50 connections: a second's warm-up, then ``args.runs`` runs."""
    run_wrk(wrk, url, script, 10, 1, pid)
    result = Result(target, scenario, 50)
    for _ in range(args.runs):
        result.runs.append(run_wrk(wrk, url, script, 50, args.duration, pid))
    print(_line(result), flush=True)
    return result


def _listening(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
    except httpx.HTTPError:
        return False
    return True


def _line(r: Result) -> str:
    lo, med, hi = r.spread("rps")
    errors = sum(x.non_2xx for x in r.runs)
    return (
        f"{r.target:8} {r.scenario:10} c={r.connections:<3} req/s {med:9.0f} ({lo:.0f} to {hi:.0f})"
        f"  p50 {r.median('p50_ms'):.3f} ms  p99 {r.median('p99_ms'):.3f} ms"
        f"  cpu/req {r.median('cpu_us_per_request'):.0f} us  non-2xx {errors}"
        f"  steal {r.median('steal_pct'):.0f}%"
    )


def _find(results: list[Result], target: str, scenario: str, connections: int) -> Result | None:
    for r in results:
        if (r.target, r.scenario, r.connections) == (target, scenario, connections):
            return r
    return None


def summary(results: list[Result]) -> str:
    rows = [
        "| target | non-stream req/s (c=50) | 20-chunk streams/s (c=50) | req/s at c=500 "
        "| CPU per request (non-stream, c=50) | p50 at c=1 | p99 at c=1 |",
        "|---|---|---|---|---|---|---|",
    ]
    for target in ALL_TARGETS.split(","):
        ns = _find(results, target, "non-stream", 50)
        st = _find(results, target, "stream-20", 50)
        c1 = _find(results, target, "non-stream", 1)
        c500 = _find(results, target, "non-stream", 500)
        if not (ns and st and c1):
            continue
        rows.append(
            f"| {target} | {ns.median('rps'):,.0f} | {st.median('rps'):,.0f} | "
            f"{c500.median('rps') if c500 else float('nan'):,.0f} | "
            f"{ns.median('cpu_us_per_request'):.0f} µs | {c1.median('p50_ms') * 1000:.0f} µs | "
            f"{c1.median('p99_ms') * 1000:.0f} µs |"
        )
    rows.append("")
    for label, a, b, scenario, attr in [
        (
            "Gateway / bare proxy throughput (non-stream, c=50)",
            "gateway",
            "bare",
            "non-stream",
            "rps",
        ),
        (
            "Gateway / LiteLLM throughput (non-stream, c=50)",
            "gateway",
            "litellm",
            "non-stream",
            "rps",
        ),
        (
            "Gateway / LiteLLM throughput (20-chunk streams, c=50)",
            "gateway",
            "litellm",
            "stream-20",
            "rps",
        ),
        (
            "Two gateway processes / one, throughput (non-stream, c=50)",
            "gateway-2p",
            "gateway",
            "non-stream",
            "rps",
        ),
        (
            "Two gateway processes / one, CPU per request (non-stream, c=50)",
            "gateway-2p",
            "gateway",
            "non-stream",
            "cpu_us_per_request",
        ),
    ]:
        x, y = _find(results, a, scenario, 50), _find(results, b, scenario, 50)
        if x and y:
            rows.append(f"- {label}: {x.median(attr) / y.median(attr):.2f}x")
    for scenario, base in (
        ("limits", "non-stream"),
        ("limits-stream", "stream-20"),
        ("messages", "non-stream"),
        ("messages-stream", "stream-20"),
        ("mcp-tool", "non-stream"),
        ("a2a-rest", "non-stream"),
    ):
        plain = _find(results, "gateway", base, 50)
        for target in ("gateway", "gateway-local"):
            x = _find(results, target, scenario, 50)
            if x and plain:
                rows.append(
                    f"- {target} {scenario} (c=50): {x.median('rps'):,.0f} req/s, "
                    f"{x.median('cpu_us_per_request'):.0f} µs CPU/request, "
                    f"{x.median('rps') / plain.median('rps'):.2f}x the gateway's plain {base}"
                )
    direct, gw = (
        _find(results, "direct", "non-stream", 1),
        _find(results, "gateway", "non-stream", 1),
    )
    if direct and gw:
        rows.append(
            "- Latency the gateway adds at c=1 (non-stream): "
            f"p50 {(gw.median('p50_ms') - direct.median('p50_ms')) * 1000:.0f} µs, "
            f"p99 {(gw.median('p99_ms') - direct.median('p99_ms')) * 1000:.0f} µs"
        )
    return "\n".join(rows)


def render(results: list[Result], args: argparse.Namespace, usage_sink: str) -> str:
    lines = [
        "## Proxy throughput and latency",
        "",
        f"- method: see `bench/__main__.py`; {args.runs} runs of {args.duration} s per cell "
        "after a 1 s warm-up; server under test pinned to core 0, mock and wrk (1 thread) "
        "on core 1",
        f"- gateway usage sink: {usage_sink}",
        "- steal: share of the machine's CPU time the hypervisor gave to other guests during "
        "the run; figures taken under high steal understate what the code can do",
        "",
        "### Summary (medians)",
        "",
        summary(results),
        "",
        "### Every cell (min / median / max over runs)",
        "",
        "| target | scenario | connections | req/s | p50 ms | p99 ms | CPU µs/request | non-2xx "
        "| steal % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lo, med, hi = r.spread("rps")
        p50 = r.spread("p50_ms")
        p99 = r.spread("p99_ms")
        cpu = [x.cpu_us_per_request or 0.0 for x in r.runs]
        cells = [
            r.target,
            r.scenario,
            str(r.connections),
            f"{lo:.0f} / {med:.0f} / {hi:.0f}",
            " / ".join(f"{v:.3f}" for v in p50),
            " / ".join(f"{v:.3f}" for v in p99),
            f"{min(cpu):.0f} / {statistics.median(cpu):.0f} / {max(cpu):.0f}",
            str(sum(x.non_2xx for x in r.runs)),
            " / ".join(f"{x.steal_pct:.0f}" for x in r.runs),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
