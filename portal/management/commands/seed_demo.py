"""``manage.py seed_demo``: create (or refresh) the demo data and print it as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from portal.demo import seed_demo, seed_demo_mcp_tools


class Command(BaseCommand):
    help = "Seed the demo portal, products, developer, subscriptions and key (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--mock-llm-url", default="http://127.0.0.1:9100/v1")
        parser.add_argument(
            "--demo-mcp-url",
            help="also seed the demo MCP product served there (python -m devstack.demo_mcp), "
            "and discover and approve its tools if the server is running",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        seed = seed_demo(mock_llm_url=options["mock_llm_url"], demo_mcp_url=options["demo_mcp_url"])
        if options["demo_mcp_url"]:
            try:
                seed_demo_mcp_tools()
            except RuntimeError as exc:
                self.stderr.write(str(exc))
        self.stdout.write(json.dumps(asdict(seed)))
