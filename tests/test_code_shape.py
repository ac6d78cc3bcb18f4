"""The house rules of the code, checked on the source (``docs/architecture.md``, "Layers"):
small files and functions, no import cycle, and the layers apart.

Imports are read with ``ast`` from the module level only (an import inside a function runs when
it is called, which is how the front defers engine code until it builds a co-located model).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = sorted([*ROOT.joinpath("deployments").rglob("*.py"), ROOT / "serve_app.py"])
MAX_FILE_LINES, MAX_FUNCTION_LINES = 500, 60


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _top_level_imports(path: Path) -> set[str]:
    """Modules imported when ``path`` is imported (``if TYPE_CHECKING:`` blocks left out)."""
    names: set[str] = set()
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]

    def visit(statements) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [node.module])])
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)

    visit(_tree(path).body)
    return names


MODULES = {_module(p): p for p in PRODUCT}


def _graph() -> dict[str, set[str]]:
    """Product module -> the product modules it imports at module level."""
    graph = {}
    for name, path in MODULES.items():
        imported = _top_level_imports(path)
        graph[name] = {m for m in MODULES if m != name and m in imported}
    return graph


def _reachable(start: str, graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_product_file_is_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in PRODUCT if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def test_no_product_function_is_over_60_lines():
    long = {}
    for path in PRODUCT:
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = lines
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_import_cycle():
    graph = _graph()
    cycles = sorted(name for name in graph if name in _reachable(name, graph))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_the_protocol_imports_no_engine_or_cluster_library():
    for name, path in MODULES.items():
        if name.startswith(("deployments.protocol", "deployments.errors", "deployments.sse")):
            heavy = {m for m in _top_level_imports(path) if m.split(".")[0] in {"torch", "vllm", "ray", "transformers"}}
            assert not heavy, f"{name} imports {heavy}"


def test_vllm_is_imported_by_the_vllm_engine_only():
    allowed = {"deployments.engines.vllm_engine", "deployments.engines.vllm_plugin"}
    for name, path in MODULES.items():
        imports = {
            n.names[0].name if isinstance(n, ast.Import) else (n.module or "")
            for n in ast.walk(_tree(path))
            if isinstance(n, (ast.Import, ast.ImportFrom))
        }
        if any(m == "vllm" or m.startswith("vllm.") for m in imports):
            assert name in allowed, f"{name} imports vllm"


def test_the_front_loads_no_engine_code():
    """The front's module, and all it imports, leave the model servers and engines unimported:
    a co-located model's server module is imported when the replica builds it."""
    graph = _graph()
    engine_side = {m for m in MODULES if m.startswith("deployments.engines") or m.endswith(("_server", ".deployment"))}
    loaded = _reachable("deployments.ingress", graph) | {"deployments.ingress"}
    assert not loaded & engine_side, f"the front imports {sorted(loaded & engine_side)}"
    third_party = set().union(*(_top_level_imports(MODULES[m]) for m in loaded))
    assert not {m for m in third_party if m.split(".")[0] in {"torch", "vllm", "transformers", "sentence_transformers"}}
