"""The house's layers, kept true (docs/architecture.md): pages -> appkit -> bmcore <- train; no import runs back up,
and bmcore's modules import one another without a circle (function-level imports included: a circle hidden inside a
function is still a circle)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO


def _imports(path: Path, package: str) -> set[str]:
    """Top-level names of everything ``path`` imports, and, for imports inside ``package``, the module imported."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: within the package
                out |= {f"{package}.{node.module.split('.')[0]}"} if node.module else \
                    {f"{package}.{a.name}" for a in node.names}
            elif node.module:
                out.add(node.module)
                if node.module == package:
                    out |= {f"{package}.{a.name}" for a in node.names}
    return out


def _graph() -> dict[str, set[str]]:
    mods = {p.stem: p for p in (REPO / "bmcore").glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name, p in mods.items():
        deps = {i.split(".")[1] for i in _imports(p, "bmcore") if i.startswith("bmcore.")}
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(n, path):
        state[n] = 1
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (c := visit(d, path + [d])):
                return c
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n, [n])):
            return c
    return None


def test_bmcore_has_no_import_circle():
    graph = _graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    # the check finds a circle when there is one (else it proves nothing)
    assert _cycle({**graph, "forward": graph["forward"] | {"predictor"}}) is not None


def test_no_import_runs_back_up():
    for p in (REPO / "bmcore").glob("*.py"):
        bad = {i for i in _imports(p, "bmcore") if i.split(".")[0] in ("streamlit", "appkit", "views", "train", "bench")}
        assert not bad, f"bmcore/{p.name} imports {bad}: the library knows nothing of pages, training or benchmarks"
    for p in (REPO / "train").rglob("*.py"):
        bad = {i for i in _imports(p, "train") if i.split(".")[0] in ("streamlit", "appkit", "views")}
        assert not bad, f"{p.relative_to(REPO)} imports {bad}"
    for p in (REPO / "views").glob("*.py"):
        bad = {i for i in _imports(p, "views") if i.split(".")[0] in ("train", "bench")}
        assert not bad, f"views/{p.name} imports {bad}: pages use appkit and bmcore only"
