"""The layering, read from the imports of every file (docs/architecture.md):
  - methods (baselines/, nagl/, examples/) import only benchmark.api, benchmark.features,
    benchmark.errors and their own package: never the harness's internals, never another method;
  - benchmark.api imports nothing of the harness but benchmark.errors;
  - nothing imports benchmark.outputs or benchmark.cli but benchmark.cli (and outputs itself);
  - no import cycle between files, nor between the sub-packages of benchmark/.
Function-level imports count as much as module-level ones."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmark", "baselines", "nagl", "examples")
METHOD_ALLOWED = ("benchmark.api", "benchmark.features", "benchmark.errors")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """The project modules a file imports (absolute names; `from a import b` counts a.b when b is a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names
                         if (ROOT / (node.module.replace(".", "/") + f"/{alias.name}.py")).exists())
    return {n for n in names if n.split(".")[0] in PACKAGES}


def project_files() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(files: dict[str, Path]) -> dict[str, set[str]]:
    out = {}
    for name, path in files.items():
        # a package import `benchmark.api` means its __init__; keep only names that are project files
        out[name] = {i for i in imported(path) if i in files and i != name}
    return out


def violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in graph.items():
        top = module.split(".")[0]
        for target in targets:
            if top in ("baselines", "nagl", "examples"):
                own = target.split(".")[0] == top
                if not own and not target.startswith(METHOD_ALLOWED):
                    found.append(f"{module} imports {target}: a method sees the harness only through benchmark.api "
                                 f"and benchmark.features")
            if module.startswith("benchmark.api") and not target.startswith(("benchmark.api", "benchmark.errors")):
                found.append(f"{module} imports {target}: the contract imports nothing of the harness but errors")
            for guarded in ("benchmark.outputs", "benchmark.cli"):
                if target.startswith(guarded) and not module.startswith(("benchmark.cli", "benchmark.__main__", guarded)):
                    found.append(f"{module} imports {target}: only the CLI uses {guarded}")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def subpackage_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """benchmark.<sub> -> the other benchmark sub-packages it imports (top-level modules of
    benchmark/ such as errors.py and config.py count as their own nodes)."""
    def group(name):
        parts = name.split(".")
        return ".".join(parts[:2]) if parts[0] == "benchmark" else parts[0]

    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        if module == "benchmark":
            continue
        out.setdefault(group(module), set()).update(group(t) for t in targets if group(t) != group(module) and t != "benchmark")
    return out


def test_methods_and_the_contract_keep_to_their_layers():
    assert violations(imports_of(project_files())) == []


def test_no_import_cycle_between_files_or_subpackages():
    graph = imports_of(project_files())
    assert cycles(graph) == []
    assert cycles(subpackage_graph(graph)) == []


@pytest.mark.parametrize("source, expected", [
    ("from benchmark.run.maps import finish\n", "a method sees the harness only"),
    ("import baselines.patchcore\n", "a method sees the harness only"),
    ("def f():\n    from benchmark.outputs import tables\n", "only the CLI uses"),
])
def test_the_rule_catches_a_method_that_reaches_into_the_harness(tmp_path, source, expected):
    """The checker itself: a method file importing a harness internal (or another method's
    package) is reported, even inside a function."""
    files = project_files()
    planted = tmp_path / "planted.py"
    planted.write_text(source)
    graph = imports_of(files)
    graph["nagl._planted_for_test"] = {i for i in imported(planted) if i in files}
    assert any(expected in line for line in violations(graph))


def test_a_cycle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]

