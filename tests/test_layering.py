"""Imports point one way: the dependency table of STYLE.md section 2, checked with `ast`.

Every ``import`` in a module counts, also one inside a function or under
``TYPE_CHECKING``: a deferred import is still a dependency.  Only modules that exist
are checked; a module missing from `LAYERS` fails `test_every_module_is_on_the_map`
(place it on the map in STYLE.md and here).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import taskmap

PACKAGE = Path(taskmap.__file__).parent

#: module (first component under taskmap/) -> its row in STYLE.md section 2
LAYERS = {
    "errors": 1,
    "events": 1,
    "policies": 2,
    "checkpoint": 2,
    "worker": 2,
    "taskdir": 2,
    "graph": 3,
    "backends": 3,
    "frontier": 4,
    "driver": 5,
    "record": 2,
    "progress": 6,
    "report": 6,
    "draw": 6,
    "logs": 6,
    "runners": 7,
    "__init__": 8,
    "cli": 8,
    "__main__": 8,
}

ROW_1 = {"errors", "events"}
OBSERVERS = {"progress", "report", "draw", "logs"}

#: what each module may import from taskmap, besides its own package (backends/*...)
ALLOWED = {
    "errors": set(),
    "events": set(),
    "policies": ROW_1,
    # checkpoint gives each call its task directory; a worker sets it around the call
    "taskdir": ROW_1,
    "checkpoint": ROW_1 | {"taskdir"},
    "worker": ROW_1 | {"taskdir"},
    # record holds a run's data (RunStats) and sits below graph, which carries it
    "record": ROW_1 | {"checkpoint"},
    "graph": ROW_1 | {"policies", "checkpoint", "record"},
    "backends": ROW_1 | {"worker"},
    "frontier": ROW_1 | {"graph", "policies"},
    "driver": ROW_1 | {"graph", "policies", "checkpoint", "record", "frontier", "backends"},
    # observers learn about a run from events, never from the frontier's insides
    **dict.fromkeys(OBSERVERS, ROW_1 | {"graph", "policies", "record"}),
    "runners": {m for m, row in LAYERS.items() if row < 7},
    "__init__": {m for m, row in LAYERS.items() if m not in ("cli", "__main__")},
    "cli": {"__init__"},  # the CLI uses only the public API
    "__main__": {"__init__", "cli"},
}

#: the frontier is sans-I/O: no event loop, no clock, no threads, no OS
FRONTIER_FORBIDDEN = {
    "asyncio",
    "time",
    "threading",
    "os",
    "concurrent",
    "multiprocessing",
    "selectors",
    "signal",
    "socket",
    "subprocess",
}

#: imported only where used, never when taskmap is imported
OPTIONAL = {"dask", "distributed", "tqdm", "rich", "cryptography"}


@dataclass(frozen=True)
class Import:
    target: str  # dotted name; taskmap's own modules as 'taskmap.x.y'
    line: int
    top_level: bool  # executed when the module is imported


@dataclass(frozen=True)
class Module:
    path: Path
    dotted: str  # 'taskmap.backends.processes'

    @property
    def key(self) -> str:
        """The module's name on the map: 'graph', 'backends', '__init__'..."""
        parts = self.dotted.split(".")[1:]
        if not parts or parts == ["__init__"]:
            return "__init__"
        return parts[0]

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


def modules() -> list[Module]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found.append(Module(path, ".".join(("taskmap", *parts))))
    return found


def _resolve(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.dotted.split(".")
    if not module.is_package:
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _is_module(dotted: str) -> bool:
    relative = Path(*dotted.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").exists() or (PACKAGE / relative).is_dir()


def imports(module: Module) -> list[Import]:
    tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(alias.name, node.lineno, id(node) in top))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            if node.module == "__future__":
                continue
            for alias in node.names:
                # `from . import worker` imports a module; `from . import run` a name
                sub = f"{base}.{alias.name}"
                target = sub if base.startswith("taskmap") and _is_module(sub) else base
                found.append(Import(target, node.lineno, id(node) in top))
    return found


def key_of(dotted: str) -> str:
    parts = dotted.split(".")[1:]
    return parts[0] if parts else "__init__"


def is_ours(dotted: str) -> bool:
    return dotted == "taskmap" or dotted.startswith("taskmap.")


MODULES = modules()
IDS = [m.dotted for m in MODULES]


def test_every_module_is_on_the_map() -> None:
    unknown = sorted({m.key for m in MODULES} - LAYERS.keys())
    assert unknown == [], "add these modules to STYLE.md section 2 and to LAYERS"


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_imports_point_down_the_map(module: Module) -> None:
    if module.key not in LAYERS:
        pytest.skip("not on the map (see test_every_module_is_on_the_map)")
    allowed = ALLOWED[module.key]
    wrong = [
        f"line {imp.line}: imports {imp.target}"
        for imp in imports(module)
        if is_ours(imp.target)
        and key_of(imp.target) != module.key
        and key_of(imp.target) not in allowed
    ]
    assert wrong == [], f"{module.dotted} may import only {sorted(allowed)} of taskmap"


def test_the_driver_uses_only_the_backend_protocol() -> None:
    """CPU backends are chosen by the runners; the driver knows them by the protocol.
    (The placements in this process, backends.loop and backends.threads, it uses.)"""
    [driver] = [m for m in MODULES if m.dotted == "taskmap.driver"]
    concrete = [
        f"line {imp.line}: imports {imp.target}"
        for imp in imports(driver)
        if imp.target.startswith(("taskmap.backends.processes", "taskmap.backends.executor"))
    ]
    assert concrete == []


def test_the_frontier_does_no_io_and_reads_no_clock() -> None:
    [frontier] = [m for m in MODULES if m.dotted == "taskmap.frontier"]
    wrong = [
        f"line {imp.line}: imports {imp.target}"
        for imp in imports(frontier)
        if imp.target.split(".")[0] in FRONTIER_FORBIDDEN
    ]
    assert wrong == []


def test_the_worker_imports_only_the_standard_library_and_cloudpickle() -> None:
    worker = [m for m in MODULES if m.dotted == "taskmap.worker"]
    if not worker:
        pytest.skip("no taskmap/worker.py yet")
    allowed = set(sys.stdlib_module_names) | {"cloudpickle"}
    wrong = [
        f"line {imp.line}: imports {imp.target}"
        for imp in imports(worker[0])
        if imp.top_level and not is_ours(imp.target) and imp.target.split(".")[0] not in allowed
    ]
    # uvloop, a dependency, may be imported where a coroutine task needs a loop
    wrong += [
        f"line {imp.line}: imports {imp.target}"
        for imp in imports(worker[0])
        if not imp.top_level
        and not is_ours(imp.target)
        and imp.target.split(".")[0] not in allowed | {"uvloop"}
    ]
    assert wrong == []


@pytest.mark.parametrize("module", MODULES, ids=IDS)
def test_optional_dependencies_are_imported_only_where_used(module: Module) -> None:
    wrong = [
        f"line {imp.line}: imports {imp.target}"
        for imp in imports(module)
        if imp.top_level and imp.target.split(".")[0] in OPTIONAL
    ]
    assert wrong == []


def test_import_taskmap_loads_no_optional_dependency() -> None:
    code = "import sys, taskmap; print(sorted({m.split('.')[0] for m in sys.modules}))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=True
    )
    loaded = set(ast.literal_eval(done.stdout))
    assert "taskmap" in loaded
    assert loaded & OPTIONAL == set()


def _loaded_by(statement: str) -> list[str]:
    code = (
        "import sys; before = set(sys.modules); " + statement + "; "
        "print(sorted(m for m in set(sys.modules) - before if m.startswith('taskmap')"
        " or m.split('.')[0] in {'asyncio', 'sqlite3', 'zstandard', 'uvloop', 'tqdm'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=True
    )
    return ast.literal_eval(done.stdout)  # type: ignore[no-any-return]


def test_import_taskmap_loads_no_module_of_its_own_until_a_name_is_used() -> None:
    # issue 13: a script, the fork server and each worker pay only for what they use
    assert _loaded_by("import taskmap") == ["taskmap"]


def test_the_worker_s_entry_point_loads_the_worker_module_only() -> None:
    # the fork server preloads taskmap.worker: not the driver, the cache or asyncio
    assert _loaded_by("import taskmap.worker") == ["taskmap", "taskmap.worker"]
