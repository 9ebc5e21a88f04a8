"""Run a script against another checkout of the package: the old side of an A/B.

``PYTHONPATH=/tmp/old python ...`` is not enough in an editable install: ``setup.cfg`` maps
``elasticdenser.index``, ``.eval`` and ``.data`` to the top-level folders ``index/``, ``eval/`` and
``data/``, and the editable install's finder resolves those to this checkout whatever ``PYTHONPATH``
says, so an old ``elasticdenser/`` would run with today's ``index/``. This loads every part of the
package from ``DIR``, then runs ``SCRIPT`` with the arguments that follow it:

    git worktree add /tmp/old REV
    python benchmarks/at_revision.py /tmp/old /tmp/old/benchmarks/bench_query_path.py --exp runs/exp-speed ...

``-m elasticdenser`` in place of ``SCRIPT`` runs the old command line (``python -m elasticdenser``):

    python benchmarks/at_revision.py /tmp/old -m elasticdenser index nq-sample --out /tmp/idx-old
"""
from __future__ import annotations

import importlib.util
import os
import runpy
import sys
from pathlib import Path

#: subpackages that setup.cfg maps to top-level folders (``package_dir``)
MAPPED = ("data", "eval", "index")


def load_package(root: Path) -> None:
    """Import ``elasticdenser`` and its mapped subpackages from ``root``."""
    sys.path.insert(0, str(root))
    import elasticdenser

    if Path(elasticdenser.__file__).resolve().parent != root / "elasticdenser":
        raise SystemExit(f"elasticdenser was already imported from {elasticdenser.__file__}, not {root}")
    modules = []
    for name in MAPPED:  # every module registered before any runs: they import each other
        spec = importlib.util.spec_from_file_location(f"elasticdenser.{name}", root / name / "__init__.py",
                                                      submodule_search_locations=[str(root / name)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        setattr(elasticdenser, name, module)
        modules.append((spec, module))
    for spec, module in modules:
        spec.loader.exec_module(module)


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    # exported ONNX graphs are cached by model, not by code: the old side must not reuse the new one's
    os.environ.setdefault("ELASTICDENSER_CACHE", "off")
    load_package(Path(sys.argv[1]).resolve())
    if sys.argv[2] == "-m":
        if len(sys.argv) < 4:
            raise SystemExit(__doc__)
        sys.argv = [sys.argv[3]] + sys.argv[4:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
        return
    sys.argv = sys.argv[2:]
    sys.path.insert(0, str(Path(sys.argv[0]).resolve().parent))  # the script's own siblings, as `python SCRIPT` would
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
