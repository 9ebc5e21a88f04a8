"""The layout docs/ARCHITECTURE.md promises: imports run one way, and no module outgrows a reader.

Layers, lowest first; a module may import its own layer and the ones below, never above:

    base      errors, atomic, operating_point
    data      elasticdenser.data
    model     elasticdenser.model
    training / index
    serve / eval / searcher
    commands / cli (and the package root, whose lazy names reach everything)
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: folder -> package it is installed as (setup.cfg's package_dir)
ROOTS = {"elasticdenser": "elasticdenser", "index": "elasticdenser.index", "eval": "elasticdenser.eval",
         "data": "elasticdenser.data"}
LAYER = {"errors": 0, "atomic": 0, "operating_point": 0, "data": 1, "model": 2, "training": 3, "index": 3, "rerank": 3,
         "serve": 4, "eval": 4, "searcher": 4, "commands": 5, "cli": 5, "__main__": 5, "": 6}
MAX_LINES = 400


def _modules():
    for folder, package in ROOTS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if folder == "elasticdenser" and parts[0] in ("index", "eval", "data"):
                continue
            name = ".".join([package] + [p for p in parts if p != "__init__"])
            yield name, path


def _unit(module: str) -> str:
    """The layout unit of a module: ``elasticdenser.serve.router`` -> ``serve``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("elasticdenser"):
            yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("elasticdenser"):
                    yield alias.name, node.lineno


def test_imports_run_one_way():
    modules = dict(_modules())
    assert len(modules) > 50 and "elasticdenser.serve.router" in modules and "elasticdenser.data.trec" in modules
    wrong = []
    for name, path in modules.items():
        here = LAYER[_unit(name)]
        for target, line in _imports(path):
            unit = _unit(target)
            if unit == "" and target == "elasticdenser" and name != "elasticdenser":
                continue  # `import elasticdenser` for __version__ only: the root's names are lazy
            if LAYER[unit] > here:
                wrong.append(f"{path.relative_to(REPO)}:{line} ({_unit(name) or 'root'}) imports {target} ({unit})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_import_cycle_between_modules():
    """Module-level imports only (an import inside a function runs late and cannot deadlock)."""
    modules = dict(_modules())
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps = set()
        for node in tree.body:  # top level only
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("elasticdenser"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("elasticdenser"))
        graph[name] = {d for d in deps if d in modules and d != name}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_eval_uses_only_data_and_the_base():
    """The evaluation scores what any searcher returns: it needs the data types, not the model."""
    for name, path in _modules():
        if _unit(name) == "eval":
            for target, line in _imports(path):
                assert _unit(target) in ("eval", "data", "errors", "atomic", "operating_point"), f"{path}:{line} {target}"


def test_no_module_outgrows_a_reader():
    sizes = {str(path.relative_to(REPO)): len(path.read_text(encoding="utf-8").splitlines()) for _, path in _modules()}
    assert {k: n for k, n in sizes.items() if n > MAX_LINES} == {}


def test_public_api_is_lazy_and_complete():
    import subprocess
    import sys

    code = ("import sys, elasticdenser as e; assert 'torch' not in sys.modules; "
            "[getattr(e, n) for n in e.__all__]; print(len(e.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) >= 15


def test_every_module_says_what_it_exports():
    missing = [str(path.relative_to(REPO)) for name, path in _modules()
               if ".commands." not in name and path.name not in ("__init__.py", "__main__.py")
               and "__all__" not in path.read_text(encoding="utf-8")]
    assert missing == []
