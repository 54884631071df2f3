"""common/ is layered (docs/architecture.md): the model (no Kafka connection) -> the clients -> the loops. A
module imports only from its own layer or lower ones, so there are no import circles across layers and the
loops stay the only place that knows them all."""

from __future__ import annotations

import ast
from pathlib import Path

COMMON = Path(__file__).resolve().parents[2] / "common"

LAYERS = {
    "model": {"errors", "settings", "topics", "schemas", "city", "decided", "stats", "stores", "mail", "shutdown",
              "cli", "stdlib_email", "metrics", "view", "__init__"},
    "clients": {"clients", "consume", "reachability", "dead_letters", "changelog", "follow"},
    "loops": {"loop", "transform", "apply", "produce", "front"},
}
RANK = {module: rank for rank, modules in enumerate(LAYERS.values()) for module in modules}


def common_imports(path: Path) -> set[str]:
    """The common.* modules a file imports (`from common import x`, `from common.x import y`, `import common.x`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "common":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("common."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("common.")}
    return found


def test_every_module_of_common_has_a_layer():
    assert {p.stem for p in COMMON.glob("*.py")} == set(RANK)


def test_no_module_imports_from_a_higher_layer():
    upward = [f"{p.stem} ({_layer(p.stem)}) imports {dep} ({_layer(dep)})"
              for p in sorted(COMMON.glob("*.py")) for dep in sorted(common_imports(p)) if RANK[dep] > RANK[p.stem]]
    assert upward == []


def test_no_tool_is_imported_by_the_pipeline():
    scripts = [COMMON.parent / f"{name}.py" for name in ("rides", "transaction", "email", "analysis", "api")]
    for path in [*COMMON.glob("*.py"), *scripts]:
        tree = ast.parse(path.read_text())
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
                  {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not any(m and m.split(".")[0] in ("tools", "bench", "tests") for m in modules), path.name


def _layer(module: str) -> str:
    return next(name for name, modules in LAYERS.items() if module in modules)
