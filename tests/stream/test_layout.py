"""The layout keeps its promises: Kafka clients only where Kafka is talked to, small modules.

Only ``stream/worker/``, ``stream/kafka/`` and the tools that talk to a broker may import
Faust, aiokafka or mode; the pure core (contract, pipeline, features, scoring, models) must
not even load them when imported, so offline training and the in-process tests run the
worker's code without a Kafka client.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

STREAM = Path(__file__).resolve().parents[2] / "stream"
KAFKA_CLIENTS = {"faust", "aiokafka", "mode"}
#: Where a Kafka client may be imported: the worker, the facade, and the tools that talk to
#: a broker (bench baselines and readers, replay, dump).
MAY_IMPORT_KAFKA = (
    "worker/",
    "kafka/",
    "tools/bench/",
    "tools/replay.py",
    "tools/dump.py",
    "tools/apache_kafka.py",
)
PURE_PACKAGES = (
    "stream.contract",
    "stream.pipeline",
    "stream.features",
    "stream.scoring",
    "stream.models",
    "stream.tools.generator",
)
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 300


def _modules() -> list[Path]:
    return sorted(STREAM.rglob("*.py"))


def _imported(tree: ast.AST) -> set[str]:
    """Top-level package of every absolute import, function-level (lazy) ones included."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_worker_the_facade_and_kafka_tools_import_a_kafka_client() -> None:
    offenders = {}
    for path in _modules():
        relative = path.relative_to(STREAM).as_posix()
        if relative.startswith(MAY_IMPORT_KAFKA):
            continue
        clients = _imported(ast.parse(path.read_text())) & KAFKA_CLIENTS
        if clients:
            offenders[relative] = sorted(clients)
    assert offenders == {}


@pytest.mark.parametrize("package", PURE_PACKAGES)
def test_the_pure_core_loads_no_kafka_client(package: str) -> None:
    code = (
        f"import sys, {package}\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(KAFKA_CLIENTS)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"importing {package} loads {out.stdout.strip()}"


def test_no_module_or_class_outgrows_a_room() -> None:
    too_big = []
    for path in _modules():
        text = path.read_text()
        relative = path.relative_to(STREAM).as_posix()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_big.append(f"{relative}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    too_big.append(f"{relative}: class {node.name} {size} lines")
    assert too_big == []


def test_every_test_module_sits_in_the_room_of_what_it_tests() -> None:
    """tests/stream mirrors stream/: a folder of tests per package, loose files only for the
    shared modules at the top (settings, errors, strict) and the layout itself."""
    tests = Path(__file__).resolve().parent
    rooms = {p.name for p in STREAM.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert {p.name for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__"} <= rooms
    loose = {p.name for p in tests.glob("test_*.py")}
    assert loose <= {"test_settings.py", "test_layout.py", "test_errors.py", "test_strict.py"}
