"""The import graph of r2t_plugin/ and adapters/ follows the layering of DESIGN.md.

Every ``import`` / ``from ... import`` counts, at module level or inside a function or
class, relative or absolute; only imports under ``if TYPE_CHECKING:`` are exempt (they
never run). The checks: no import circle between modules; no module imports one from a
higher layer (or a sibling package its layer keeps apart); the core never imports an
adapter; a module named in a string (to be imported at run time) obeys the same layers,
except the plugin manager's list of built-in plugins; no module is over 400 lines. Each failure lists every violation with file and line.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = "r2t_plugin"
MAX_LINES = 400

# the layers of DESIGN.md, bottom first: a module imports only from its own layer or below
LAYERS: list[set[str]] = [
    {"bag", "hookspecs", "io", "geometry", "progress"},
    {"plugins", "nn"},
    {"r2t", "aggregators", "wrap"},
    {"data", "tasks"},
    {"models", "train", "checkpoint"},
    {"compare", "heatmap"},
    {"cli", ""},  # "": the package itself (r2t_plugin/__init__.py, the public facade)
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
# pairs within one layer that stay apart: (importer, imported)
APART = {("r2t", "aggregators"), ("aggregators", "r2t")}


@dataclass(frozen=True)
class Import:
    source: str  # dotted module that imports
    target: str  # dotted module imported
    path: Path
    line: int

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the core and of the adapters."""
    found = {}
    for top in (ROOT / CORE, *sorted((ROOT / "adapters").glob("r2t_*"))):
        for path in sorted(top.rglob("*.py")):
            parts = list(path.relative_to(top.parent).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside ``if TYPE_CHECKING:`` blocks."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def _imports(modules: dict[str, Path]) -> list[Import]:
    """Every import between the modules (targets resolved to the most specific module)."""
    out = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        skip = _type_checking_only(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                # "from pkg import sub" imports the module pkg.sub when there is one
                targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
            else:
                continue
            for target in dict.fromkeys(targets):
                while target and target not in modules and "." in target:
                    target = target.rpartition(".")[0]  # "import a.b.c" of a non-module name
                if target in modules and target != name:
                    out.append(Import(name, target, path, node.lineno))
    return out


def _component(module: str) -> str | None:
    """The layer-table name of a core module ("" for the package itself); None elsewhere."""
    parts = module.split(".")
    if parts[0] != CORE:
        return None
    return parts[1] if len(parts) > 1 else ""


def _circles(imports: list[Import]) -> list[list[Import]]:
    """One import chain per strongly connected group of modules (Tarjan, iterative)."""
    graph: dict[str, list[Import]] = {}
    for imp in imports:
        graph.setdefault(imp.source, []).append(imp)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack, on_stack, groups = [], set(), []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            edges = graph.get(node, [])
            if i < len(edges):
                work.append((node, i + 1))
                nxt = edges[i].target
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                group = set()
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    group.add(top)
                    if top == node:
                        break
                if len(group) > 1:
                    groups.append(group)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: set[str], graph: dict[str, list[Import]]) -> list[Import]:
    """A shortest import chain that leaves the group's first module and comes back."""
    start = min(group)
    paths = {start: []}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for imp in graph.get(node, []):
                if imp.target == start:
                    return paths[node] + [imp]
                if imp.target in group and imp.target not in paths:
                    paths[imp.target] = paths[node] + [imp]
                    nxt.append(imp.target)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")


def _layer_violations(imports: list[Import]) -> list[str]:
    problems = []
    for imp in imports:
        src, dst = _component(imp.source), _component(imp.target)
        if src is None:
            continue  # an adapter: it may import anything of the core
        if dst is None:
            problems.append(f"{imp.where()}: {imp.source} imports the adapter {imp.target}")
        elif src not in LAYER:
            problems.append(f"{imp.where()}: {imp.source} is in no layer (add {src!r} to LAYERS)")
        elif dst not in LAYER:
            problems.append(f"{imp.where()}: {imp.target} is in no layer (add {dst!r} to LAYERS)")
        elif LAYER[dst] > LAYER[src]:
            problems.append(f"{imp.where()}: {imp.source} (layer {LAYER[src]}) imports {imp.target} "
                            f"(layer {LAYER[dst]}, higher)")
        elif (src, dst) in APART:
            problems.append(f"{imp.where()}: {imp.source} imports {imp.target} ({src}/ and {dst}/ "
                            "share a layer and stay apart: move the shared part to a lower layer)")
    return problems


def _by_name(modules: dict[str, Path]) -> list[Import]:
    """Modules named in a string (``importlib.import_module("r2t_plugin.x")``, tables of names)."""
    out = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value
                    and node.value in modules and node.value != name):
                out.append(Import(name, node.value, path, node.lineno))
    return out


MODULES = _modules()
IMPORTS = _imports(MODULES)
# the plugin manager imports the built-in plugins by name, as it loads entry points
BY_NAME_ALLOWED = {"r2t_plugin.plugins"}


def test_the_scan_sees_the_package() -> None:
    # a scan that found nothing would pass every check below
    assert {"r2t_plugin.bag", "r2t_plugin.r2t.stage", "r2t_plugin.cli", "r2t_clam"} <= set(MODULES)
    assert any(i.source == "r2t_plugin.r2t.stage" and i.target == "r2t_plugin.r2t.regions" for i in IMPORTS)
    assert any(i.source == "r2t_clam" and _component(i.target) == "wrap" for i in IMPORTS)
    assert any(i.target == "r2t_plugin.r2t.plugin" for i in _by_name(MODULES))


def test_no_import_circles() -> None:
    circles = [" -> ".join([c[0].source] + [f"{i.target} ({i.where()})" for i in c]) for c in _circles(IMPORTS)]
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_imports_follow_the_layers() -> None:
    problems = _layer_violations(IMPORTS)
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_every_core_module_has_a_layer() -> None:
    missing = [f"{p.relative_to(ROOT)}: {_component(m)!r}" for m, p in MODULES.items()
               if _component(m) is not None and _component(m) not in LAYER]
    assert not missing, "modules in no layer (add them to LAYERS, as in DESIGN.md):\n" + "\n".join(missing)


def test_modules_named_in_strings_follow_the_layers() -> None:
    named = [i for i in _by_name(MODULES) if i.source not in BY_NAME_ALLOWED]
    problems = _layer_violations(named)
    assert not problems, "layering violations by module name:\n" + "\n".join(problems)


def test_no_module_over_400_lines() -> None:
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in MODULES.values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert not long, f"modules over {MAX_LINES} lines:\n" + "\n".join(long)


def test_the_checks_catch_what_they_should() -> None:
    """The checkers themselves, on a made-up graph."""
    here = Path(__file__)
    fake = [Import("r2t_plugin.bag", "r2t_plugin.train", here, 1),
            Import("r2t_plugin.train", "r2t_plugin.bag", here, 2),
            Import("r2t_plugin.r2t.model", "r2t_plugin.aggregators.abmil", here, 3),
            Import("r2t_plugin.cli", "r2t_clam", here, 4),
            Import("r2t_torchmil", "r2t_plugin.cli", here, 5),
            Import("r2t_plugin.data.cohort", "r2t_plugin.geometry", here, 6)]
    circles = _circles(fake)
    assert [[i.line for i in c] for c in circles] == [[1, 2]]
    problems = _layer_violations(fake)
    assert [p.split(": ")[0].rsplit(":", 1)[1] for p in problems] == ["1", "3", "4"]
