"""The usage agent and its views live in a subpackage: Faust's autodiscovery (venusian) must still find
them, and its price table must load without them (the Quix contestant's environment has no Faust)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]

# A fresh interpreter: in this one, other tests have imported the modules already.
_DISCOVER = """
import json, venusian
from faust.app.base import SCAN_IGNORE
import agents
from streams.engine import registered_agents
from streams.web import registered_views

def fail(name):
    raise RuntimeError(f"autodiscovery could not import {name}")

venusian.Scanner().scan(agents, ignore=SCAN_IGNORE, onerror=fail)
print(json.dumps({"agents": [spec.name for spec in registered_agents()],
                  "views": [view.view_path for view in registered_views()]}))
"""

_PRICES_ALONE = """
import sys
from agents.usage.pricing import PriceTable
PriceTable.load()
print(sorted(name for name in sys.modules if name.split(".")[0] in {"streams", "faust", "schemas"}))
"""


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True).stdout


def test_autodiscovery_of_agents_registers_the_usage_agent_and_its_views() -> None:
    found = json.loads(_run(_DISCOVER))

    assert "usage" in found["agents"]
    assert {"/usage", "/usage/{tenant}"} <= set(found["views"])


def test_the_price_table_loads_without_the_engine() -> None:
    assert _run(_PRICES_ALONE).strip() == "[]"
