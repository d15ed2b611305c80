"""The engine never imports the metrics: it reports through its sensor (streams/engine/sensor.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[4] / "streams" / "engine"
FORBIDDEN = "streams.metrics"


def imported_modules(source: str) -> set[str]:
    """Every module a source imports, type-checking-only imports included; ``from a import b`` names a.b too."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


def _imports_metrics(source: str) -> bool:
    return any(name == FORBIDDEN or name.startswith(FORBIDDEN + ".") for name in imported_modules(source))


@pytest.mark.parametrize(
    ("source", "forbidden"),
    [
        ("from streams.metrics import RECORDS_SKIPPED", True),
        ("from streams import metrics", True),
        ("import streams.metrics as m", True),
        ("if TYPE_CHECKING:\n    from streams.metrics import PrometheusAgentSensor", True),
        ("from streams.engine.sensor import AgentSensor", False),
        ("from streams import metrics_other", False),
    ],
)
def test_the_check_recognises_every_spelling_of_the_import(source: str, forbidden: bool) -> None:
    assert _imports_metrics(source) is forbidden


def test_no_engine_module_imports_the_metrics() -> None:
    modules = sorted(ENGINE.rglob("*.py"))
    assert any(path.name == "runner.py" for path in modules), f"no engine sources under {ENGINE}"
    offenders = [path.relative_to(ENGINE).as_posix() for path in modules if _imports_metrics(path.read_text())]
    assert offenders == []
