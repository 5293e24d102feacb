"""The code's shape (docs/architecture.md): which folder may import which, no import
cycles among `src/peerphone` modules, no module (nor script of the softphone page) over
600 lines. Imports under `if TYPE_CHECKING:` and inside functions count too."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "peerphone"
MAX_MODULE_LINES = 600

BASE = "base"
APP = "app"
BASE_MODULES = {
    "peerphone",
    "peerphone.errors",
    "peerphone.identity",
    "peerphone.records",
    "peerphone.wire",
    "peerphone.ranges",
    "peerphone.endpoints",
    "peerphone.procs",
    "peerphone.timers",
    "peerphone.stats",
}
APP_MODULES = {
    "peerphone.cli",
    "peerphone.cli_node",
    "peerphone.demo",
    "peerphone.__main__",
}
# what each layer may import besides itself (docs/architecture.md, "Who may import whom")
ALLOWED: dict[str, set[str]] = {
    BASE: set(),
    "overlay": {BASE},
    "nat": {BASE},
    "media": {BASE},
    "sim": {BASE, "overlay"},
    "runtime": {BASE, "overlay"},
    "daemon": {BASE, "overlay", "nat", "media", "runtime"},
    APP: {BASE, "overlay", "nat", "media", "sim", "runtime", "daemon"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    if module in BASE_MODULES:
        return BASE
    if module in APP_MODULES:
        return APP
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in ALLOWED:
        return parts[1]
    raise AssertionError(f"{module}: in no layer of docs/architecture.md")


def imported(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """The peerphone modules `module` imports (anywhere in the file), with line numbers."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    known = modules()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from peerphone.x import y`: y may be a module of its own
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import peerphone.a.b` names a module
                target = target.rpartition(".")[0]
            if target.startswith("peerphone") and target != module:
                yield target, node.lineno


@cache
def graph() -> dict[str, set[str]]:
    return {
        module: {target for target, _ in imported(module, path)}
        for module, path in modules().items()
    }


def test_every_module_has_a_layer_and_imports_only_what_its_layer_may() -> None:
    broken = []
    for module, path in modules().items():
        mine = layer(module)
        for target, line in imported(module, path):
            theirs = layer(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                broken.append(f"{path.relative_to(SRC)}:{line}: {mine} imports {target}")
    assert not broken, "imports the layers forbid:\n" + "\n".join(broken)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_cycle_finder_finds_cycles() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}}
    assert cycles(edges) == [["a", "b", "c"], ["e", "f"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_module_is_over_600_lines() -> None:
    lengths = {
        str(path.relative_to(SRC)): len(path.read_text().splitlines())
        for path in modules().values()
    }
    # the softphone page's scripts too (daemon/ui/*.js): split along their seams as well
    for path in sorted((PACKAGE / "daemon" / "ui").glob("*.js")):
        lengths[str(path.relative_to(SRC))] = len(path.read_text().splitlines())
    long = {name: n for name, n in sorted(lengths.items()) if n > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"
