"""The package's import graph, read from the source (AST), with function-local imports counted: no cycles, and
translation code never loads the NER stack (the encoders, subword windows and taggers)."""

import ast
from pathlib import Path

import ensemble_distill

PACKAGE = Path(ensemble_distill.__file__).parent
NER_STACK = {"ensemble_distill.encoders", "ensemble_distill.data.subwords",
             "ensemble_distill.models.tagger", "ensemble_distill.tasks.ner"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(parents: bool = False) -> dict[str, set[str]]:
    """{module: the package modules it imports anywhere in its body}; the package root (`__version__`) left out.
    parents: also each module's parent package, whose __init__ runs first (a package that imports its own
    submodules is not a cycle, so only the "what gets loaded" test uses this)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from .distill import ner` imports the module distill.ner; `from .x import f`, the module x
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names}
        parent = name.rpartition(".")[0] if path.name != "__init__.py" else package.rpartition(".")[0]
        if parents:
            targets.add(parent)  # importing a.b.c runs a.b's __init__ first
        graph[name] = {t for t in targets if t in files and t not in (name, "ensemble_distill")}
    return graph


def reachable(graph, start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for nxt in graph[stack.pop()] - seen:
            seen.add(nxt)
            stack.append(nxt)
    return seen


def test_the_graph_is_read_from_the_source():
    graph = import_graph()
    assert "ensemble_distill.distill.losses" in graph
    assert "ensemble_distill.io_utils" in graph["ensemble_distill.training"]
    assert "ensemble_distill.errors" in graph["ensemble_distill.io_utils"]


def test_no_import_cycles():
    graph = import_graph()
    cycles = sorted(m for m in graph if m in reachable(graph, m))
    assert cycles == [], f"modules on an import cycle: {cycles}"


def test_translation_does_not_load_the_ner_stack():
    graph = import_graph(parents=True)
    for module in ("ensemble_distill.translation", "ensemble_distill.distill.student",
                   "ensemble_distill.distill.losses", "ensemble_distill.tasks.nmt"):
        if module in graph:
            assert reachable(graph, module) & NER_STACK == set(), module
