"""The package layering, read from the source with ``ast`` (every import, also those inside
functions, followed through other modules): the toy world's domain (``qbench.toyworld``) reaches
neither ``qbench.metrics`` nor ``qbench.zoo``; ``qbench.metrics`` never reaches ``qbench.zoo``; no
import cycle anywhere in ``qbench/`` and ``methods/`` and no module above 400 lines, except the
known exceptions listed below; Q-Sched's scheduler module (what plain diffusers users import)
needs nothing of the harness at import time; no cycle among the ``qbench.quant`` modules."""
from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# package -> folder, as pyproject.toml's package-dir maps them
ROOTS = {"qbench": os.path.join(REPO, "qbench"), "qbench.methods": os.path.join(REPO, "methods")}


def modules(roots: dict[str, str] = ROOTS) -> dict[str, str]:
    """``{module name: file}`` of every ``.py`` file under the roots."""
    out: dict[str, str] = {}
    for pkg, folder in roots.items():
        for d, dirs, files in os.walk(folder):
            dirs[:] = [x for x in dirs if x != "__pycache__" and not (pkg == "qbench" and d == folder and x == "methods")]
            rel = os.path.relpath(d, folder)
            base = pkg if rel == "." else pkg + "." + rel.replace(os.sep, ".")
            for f in files:
                if f.endswith(".py"):
                    out[base if f == "__init__.py" else f"{base}.{f[:-3]}"] = os.path.join(d, f)
    return out


def imports_of(source: str, module: str, known: set[str], top_level_only: bool = False) -> set[str]:
    """Modules among ``known`` that ``source`` (the text of ``module``) imports. ``from p import
    x`` counts as ``p.x`` when that is a module, else as ``p``; relative imports are resolved."""
    out: set[str] = set()
    tree = ast.parse(source)
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: -node.level]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # "qbench.zoo.render.Scene" -> "qbench.zoo.render"
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def import_graph(roots: dict[str, str] = ROOTS, top_level_only: bool = False) -> dict[str, set[str]]:
    mods = modules(roots)
    known = set(mods)
    graph = {}
    for name, path in mods.items():
        with open(path, encoding="utf-8") as f:
            graph[name] = imports_of(f.read(), name, known, top_level_only)
    return graph


def without_ancestor_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """``graph`` without the edges from a module to one of its own parent packages (``import
    qbench`` in ``qbench.measure`` for ``qbench.__file__``): Python initialises a module's parent
    packages before the module itself, so such an import never runs a package's code out of order
    and cannot close a cycle. Every other edge, also to another package's ``__init__``, stays."""
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of two or more modules
    (Tarjan's algorithm, iterative), each sorted, sorted by their first module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return sorted(out)


def long_modules(roots: dict[str, str] = ROOTS, limit: int = 400) -> dict[str, int]:
    """``{path relative to the repo: lines}`` of every module longer than ``limit`` lines."""
    out = {}
    for path in modules(roots).values():
        with open(path, encoding="utf-8") as f:
            n = sum(1 for _ in f)
        if n > limit:
            out[os.path.relpath(path, REPO)] = n
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt) and nxt in graph:
                state[nxt] = 1
                stack.append((nxt, iter(sorted(graph[nxt]))))
                path.append(nxt)
    return None


def reachable(graph: dict[str, set[str]], module: str) -> set[str]:
    """Every module ``module`` imports, directly or through others."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        for d in graph.get(todo.pop(), ()):
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def violations(graph: dict[str, set[str]], src_prefix: str, forbidden: tuple[str, ...]) -> list[str]:
    """``"a -> b"`` for every module ``a`` under ``src_prefix`` that reaches (directly or not) a
    module ``b`` under one of ``forbidden``."""
    def under(m: str, p: str) -> bool:
        return m == p or m.startswith(p + ".")

    return sorted(f"{m} -> {d}" for m in graph if under(m, src_prefix) for d in reachable(graph, m) if any(under(d, f) for f in forbidden))


# -- the checker itself (so that a passing layering test means something) -------------------------
def test_checker_sees_lazy_relative_and_from_imports():
    known = {"qbench", "qbench.metrics", "qbench.metrics.a", "qbench.metrics.b", "qbench.zoo", "qbench.zoo.render"}
    src = "import os\ndef f():\n    from qbench.zoo.render import Scene\n    from . import b\n    import qbench.zoo\n"
    assert imports_of(src, "qbench.metrics.a", known) == {"qbench.zoo.render", "qbench.metrics.b", "qbench.zoo"}
    assert imports_of(src, "qbench.metrics.a", known, top_level_only=True) == set()
    assert imports_of("from qbench.metrics import b, a\n", "qbench.metrics.a", known) == {"qbench.metrics.b"}
    graph = {"x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}
    assert find_cycle(graph) in (["x", "y", "z", "x"], ["y", "z", "x", "y"], ["z", "x", "y", "z"])
    assert find_cycle({"x": {"y"}, "y": set(), "w": {"x", "y"}}) is None
    assert violations({"qbench.metrics.a": {"qbench.zoo.render"}}, "qbench.metrics", ("qbench.zoo",)) == ["qbench.metrics.a -> qbench.zoo.render"]
    through = {"qbench.metrics.a": {"qbench.prompts"}, "qbench.prompts": {"qbench.zoo.render"}}  # indirectly
    assert violations(through, "qbench.metrics", ("qbench.zoo",)) == ["qbench.metrics.a -> qbench.zoo.render"]


def test_cycle_finder_finds_every_cycle_and_ignores_parent_package_imports():
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"c"}, "e": {"a"}}
    assert cycles(graph) == [["a", "b"], ["c", "d"]]
    assert cycles({"x": {"y"}, "y": set()}) == []
    pkg = {"qbench": {"qbench.export"}, "qbench.export": {"qbench.measure"}, "qbench.measure": {"qbench"}}
    assert cycles(pkg) == [["qbench", "qbench.export", "qbench.measure"]]
    assert cycles(without_ancestor_edges(pkg)) == []  # qbench.measure's `import qbench` runs nothing out of order
    other = {"qbench.a": {"qbench.b"}, "qbench.b": {"qbench.a"}}
    assert cycles(without_ancestor_edges(other)) == [["qbench.a", "qbench.b"]]


# -- the layering ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph():
    g = import_graph()
    assert {"qbench.toyworld.render", "qbench.metrics.fid", "qbench.zoo.common", "qbench.methods.qsched"} <= set(g)
    return g


def test_toyworld_imports_neither_metrics_nor_zoo(graph):
    assert violations(graph, "qbench.toyworld", ("qbench.metrics", "qbench.zoo")) == []


def test_metrics_never_import_zoo(graph):
    assert violations(graph, "qbench.metrics", ("qbench.zoo",)) == []
    assert graph["qbench.metrics.toy_acc"] & {"qbench.toyworld.checker"}  # the domain comes from toyworld


def test_no_import_cycle_among_metrics(graph):
    metrics = {m: {d for d in deps if d.startswith("qbench.metrics.")} for m, deps in graph.items() if m.startswith("qbench.metrics.")}
    assert find_cycle(metrics) is None


def test_no_import_cycle_among_quant(graph):
    """backends -> kernels -> primitives/pack, backends -> triton_w4a8 (lazily, needs triton), linear
    -> backends: no module of qbench.quant imports one that imports it back (lazy imports count)."""
    quant = {m: {d for d in deps if d.startswith("qbench.quant.")} for m, deps in graph.items() if m.startswith("qbench.quant.")}
    assert find_cycle(quant) is None, find_cycle(quant)
    assert "qbench.quant.backends" not in quant["qbench.quant.kernels"] | quant["qbench.quant.triton_w4a8"]


def test_qsched_scheduler_module_needs_no_harness_at_import():
    """What ``from qbench.methods.qsched_scheduler import apply_qsched`` loads of qbench."""
    top = import_graph(top_level_only=True)
    assert top["qbench.methods.qsched_scheduler"] <= {"qbench.errors", "qbench.fsutil", "qbench.methods.qsched_coeffs"}
    assert top["qbench.methods.qsched_coeffs"] <= {"qbench.errors", "qbench.fsutil"}


# -- no import cycle, no module above 400 lines -------------------------------------------------------
#: Known exceptions being removed on other branches of this session (issue 19): the lead EMPTIES
#: this at merge (the tests below then hold with no exception; a listed exception that no longer
#: occurs fails them, so that the list cannot go stale).
BEING_REMOVED_ON_OTHER_BRANCHES = {
    "cycle": [],
    "long": [],
}
#: Exceptions this check found that no branch of this session removes (their files belong to
#: other work; see the plugin branch's report): each needs an owner.
FOUND_WITHOUT_OWNER = {
    "cycle": [["qbench.methods.mixdq", "qbench.methods.mixdq_calib", "qbench.methods.mixdq_cost"], ["qbench.methods.qsched", "qbench.methods.qsched_search"]],
    "long": ["qbench/calibration.py", "qbench/quant/spec.py"],
}
MAX_LINES = 400


def _allowed(kind: str) -> list:
    return BEING_REMOVED_ON_OTHER_BRANCHES[kind] + FOUND_WITHOUT_OWNER[kind]


def test_no_import_cycle_in_qbench_and_methods(graph):
    """Module- and function-level imports over qbench/ and methods/ (``report`` <->
    ``report_figures`` was one; a module importing its own parent package is not)."""
    found = cycles(without_ancestor_edges(graph))
    assert [c for c in found if c not in _allowed("cycle")] == []
    assert [c for c in _allowed("cycle") if c not in found] == [], "no longer a cycle: remove it from the allow-list"


def test_no_module_above_400_lines():
    found = long_modules(limit=MAX_LINES)
    assert sorted(set(found) - set(_allowed("long"))) == []
    assert sorted(set(_allowed("long")) - set(found)) == [], "no longer above the limit: remove it from the allow-list"
