"""Starting, watching and stopping the real processes of a local Portico.

Used by ``make run`` (``python -m devstack``) and by the end-to-end tests, so both
bring the system up the same way: each service is a child process with its output
in a log file, ready when an HTTP check answers, stopped with SIGTERM and then, after
a grace period, SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PYTHON = sys.executable


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM it when the runner dies, even by SIGKILL.

    Children live in their own sessions (so a Ctrl-C reaches only the runner, which
    stops them in order); without this, a runner killed outright would leave them
    running and holding their ports.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceFailed(RuntimeError):
    """A service exited or never became ready; the message ends with its log's tail."""


@dataclass
class Service:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes]

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def is_running(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def wait_until(
    check: Callable[[], bool], *, timeout: float, interval: float = 0.1, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def http_ok(url: str, *, status: int = 200) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == status
    except httpx.HTTPError:
        return False


@dataclass
class Stack:
    """A set of child processes that stop together."""

    log_dir: Path
    base_env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    services: dict[str, Service] = field(default_factory=dict)

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        ready_url: str | None = None,
        ready_timeout: float = 60.0,
        cwd: Path | None = None,
    ) -> Service:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        merged = {**self.base_env, **(env or {})}
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                argv,
                env=merged,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches only the runner
                preexec_fn=_die_with_parent,
            )
        service = Service(name=name, argv=argv, log_path=log_path, process=process)
        self.services[name] = service
        if ready_url is not None:
            self.wait_ready(service, ready_url, timeout=ready_timeout)
        return service

    def wait_ready(self, service: Service, url: str, *, timeout: float) -> None:
        def ready() -> bool:
            if not service.is_running():
                raise ServiceFailed(
                    f"{service.name} exited with {service.process.returncode}:\n"
                    f"{service.log_tail()}"
                )
            return http_ok(url)

        try:
            wait_until(ready, timeout=timeout, what=f"{service.name} at {url}")
        except TimeoutError as exc:
            raise ServiceFailed(f"{exc}\n{service.log_tail()}") from None

    def check_alive(self) -> None:
        for service in self.services.values():
            if not service.is_running():
                raise ServiceFailed(
                    f"{service.name} exited with {service.process.returncode}:\n"
                    f"{service.log_tail()}"
                )

    def stop_all(self, grace: float = 15.0) -> dict[str, int | None]:
        """SIGTERM every service at once (newest first), SIGKILL what outlives ``grace``.

        All at once, so stopping takes as long as the slowest service, not their sum.
        Returns each service's exit code.
        """
        services = list(reversed(self.services.values()))
        for service in services:
            if service.is_running():
                service.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        codes: dict[str, int | None] = {}
        for service in services:
            try:
                service.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()
            codes[service.name] = service.process.returncode
        return codes
