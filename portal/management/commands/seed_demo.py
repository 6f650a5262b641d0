"""``manage.py seed_demo``: create (or refresh) the demo data and print it as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from portal.demo import seed_demo


class Command(BaseCommand):
    help = "Seed the demo portal, product, developer, subscription and key (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--mock-llm-url", default="http://127.0.0.1:9100/v1")

    def handle(self, *args: Any, **options: Any) -> None:
        seed = seed_demo(mock_llm_url=options["mock_llm_url"])
        self.stdout.write(json.dumps(asdict(seed)))
