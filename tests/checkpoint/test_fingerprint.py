"""Code fingerprints: what changes a task function's fingerprint, and what does not.

The tests write small user modules into ``tmp_path``, import them, edit the source and import
a fresh copy from a new directory (so no stale ``.pyc`` can answer), then compare the
fingerprints of the two versions.
"""

from __future__ import annotations

import dis
import functools
import importlib
import itertools
import json
import math
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from taskmap.checkpoint.fingerprint import Fingerprinter, fingerprint
from tests.checkpoint.test_digest import run_python

# -- fingerprint: user modules written into tmp_path -------------------------------------------


@pytest.fixture
def load(tmp_path: Path) -> Callable[..., ModuleType]:
    """``load(main, **files)``: write the files into a fresh directory, import ``main``.

    Each call uses a new directory, and every module it imported leaves ``sys.modules``
    afterwards, so the next call imports fresh copies.
    """
    counter = itertools.count()

    def load(main: str = "tasks", **files: str) -> ModuleType:
        directory = tmp_path / f"v{next(counter)}"
        directory.mkdir()
        for name, text in files.items():
            (directory / f"{name}.py").write_text(textwrap.dedent(text))
        before = set(sys.modules)
        sys.path.insert(0, str(directory))
        importlib.invalidate_caches()
        try:
            return importlib.import_module(main)
        finally:
            sys.path.remove(str(directory))
            for name in set(sys.modules) - before:
                del sys.modules[name]

    return load


def fp_of(load: Callable[..., ModuleType], name: str = "task", **files: str) -> bytes:
    return fingerprint(getattr(load(**files), name))


TASK = """
    import math

    def task(x, scale=2):
        '''Scale x.'''
        y = [i * scale for i in range(x)]
        return math.fsum(y) + 1
"""


def test_fingerprint_ignores_docstring_changes(load: Callable[..., ModuleType]) -> None:
    changed = TASK.replace("'''Scale x.'''", "'''Scale x, a longer docstring.'''")
    removed = TASK.replace("'''Scale x.'''", "")
    assert fp_of(load, tasks=TASK) == fp_of(load, tasks=changed) == fp_of(load, tasks=removed)


def test_fingerprint_ignores_comments_and_blank_lines(load: Callable[..., ModuleType]) -> None:
    commented = TASK.replace("        y = [", "        # build the list\n\n        y = [")
    commented = commented.replace("+ 1", "+ 1  # off by one on purpose")
    assert fp_of(load, tasks=TASK) == fp_of(load, tasks=commented)


def test_fingerprint_ignores_moving_the_function_down(load: Callable[..., ModuleType]) -> None:
    moved = TASK.replace("import math\n", "import math\n" + "\n" * 10 + "    OTHER = 1\n")
    assert fp_of(load, tasks=TASK) == fp_of(load, tasks=moved)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("+ 1", "+ 2"),
        ("i * scale", "i + scale"),
        ("math.fsum", "math.prod"),
        ("x, scale", "n, scale"),
    ],
    ids=["constant", "operator", "called name", "parameter name"],
)
def test_fingerprint_changes_with_the_body(
    load: Callable[..., ModuleType], old: str, new: str
) -> None:
    assert old in TASK
    assert fp_of(load, tasks=TASK) != fp_of(load, tasks=TASK.replace(old, new))


def test_fingerprint_changes_with_a_helper_in_the_same_module(
    load: Callable[..., ModuleType],
) -> None:
    source = """
        def helper(x):
            return x * 2

        def unused():
            return 0

        def task(x):
            return helper(x) + 1
    """
    base = fp_of(load, tasks=source)
    assert base != fp_of(load, tasks=source.replace("x * 2", "x * 3"))
    assert base == fp_of(load, tasks=source.replace("return 0", "return 1"))  # not read


def test_fingerprint_changes_with_a_helper_in_another_user_module(
    load: Callable[..., ModuleType],
) -> None:
    tasks = """
        import helpers

        def task(x):
            return helpers.double(x)
    """
    helpers = """
        FACTOR = 2

        def double(x):
            return x * FACTOR

        def other(x):
            return x
    """
    base = fp_of(load, tasks=tasks, helpers=helpers)
    assert base != fp_of(load, tasks=tasks, helpers=helpers.replace("x * FACTOR", "x + FACTOR"))
    assert base != fp_of(load, tasks=tasks, helpers=helpers.replace("FACTOR = 2", "FACTOR = 3"))
    assert base == fp_of(load, tasks=tasks, helpers=helpers.replace("return x\n", "return -x\n"))


def test_fingerprint_changes_with_a_helper_class_method(load: Callable[..., ModuleType]) -> None:
    source = """
        class Model:
            '''A model.'''
            rate = 0.5

            def predict(self, x):
                return x * self.rate

        def task(x):
            return Model().predict(x)
    """
    base = fp_of(load, tasks=source)
    assert base == fp_of(load, tasks=source.replace("'''A model.'''", "'''Another.'''"))
    assert base != fp_of(load, tasks=source.replace("x * self.rate", "x / self.rate"))
    assert base != fp_of(load, tasks=source.replace("rate = 0.5", "rate = 0.7"))


def test_fingerprint_changes_with_a_global_constant(load: Callable[..., ModuleType]) -> None:
    source = """
        LIMIT = 10
        NAMES = {"a", "b"}

        def task(x):
            return min(x, LIMIT), sorted(NAMES)
    """
    base = fp_of(load, tasks=source)
    assert base != fp_of(load, tasks=source.replace("LIMIT = 10", "LIMIT = 11"))
    assert base != fp_of(load, tasks=source.replace('{"a", "b"}', '{"a", "c"}'))
    assert base == fp_of(load, tasks=source.replace('{"a", "b"}', '{"b", "a"}'))


def test_fingerprint_of_an_unhashable_global_uses_its_type(load: Callable[..., ModuleType]) -> None:
    source = """
        import threading

        LOCK = threading.Lock()

        def task(x):
            with LOCK:
                return x
    """
    assert fp_of(load, tasks=source) == fp_of(load, tasks=source)


def test_fingerprint_changes_with_a_closure_value() -> None:
    def make(factor: object) -> Callable[[int], object]:
        def task(x: int) -> object:
            return x * factor  # type: ignore[operator]

        return task

    assert fingerprint(make(2)) == fingerprint(make(2))
    assert fingerprint(make(2)) != fingerprint(make(3))
    assert fingerprint(make([1, 2])) != fingerprint(make([2, 1]))


def test_fingerprint_changes_with_a_closure_function(load: Callable[..., ModuleType]) -> None:
    source = """
        def helper(x):
            return x + 1

        def make():
            inner = helper
            def task(x):
                return inner(x)
            return task

        task = make()
    """
    assert fp_of(load, tasks=source) != fp_of(load, tasks=source.replace("x + 1", "x + 2"))


def test_fingerprint_changes_with_default_arguments(load: Callable[..., ModuleType]) -> None:
    base = fp_of(load, tasks=TASK)
    assert base != fp_of(load, tasks=TASK.replace("scale=2", "scale=3"))
    kwonly = "def task(x, *, scale=2):"
    with_kwonly = TASK.replace("def task(x, scale=2):", kwonly)
    assert fp_of(load, tasks=with_kwonly) != fp_of(load, tasks=with_kwonly.replace("=2", "=5"))


def test_fingerprint_of_partial_depends_on_its_arguments() -> None:
    assert fingerprint(functools.partial(json.dumps, indent=2)) == fingerprint(
        functools.partial(json.dumps, indent=2)
    )
    assert fingerprint(functools.partial(json.dumps, indent=2)) != fingerprint(
        functools.partial(json.dumps, indent=4)
    )
    assert fingerprint(functools.partial(pow, 2)) != fingerprint(functools.partial(pow, 3))
    assert fingerprint(functools.partial(pow, 2)) != fingerprint(pow)


def shared_helper(i: int) -> int:
    return i + 1


def test_one_loops_lambdas_and_partials_read_their_code_and_globals_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads: list[object] = []
    original = Fingerprinter._contribution

    def counting(self: Fingerprinter, value: Any, attrs: frozenset[str]) -> Any:
        if value is shared_helper:
            reads.append(value)
        return original(self, value, attrs)

    monkeypatch.setattr(Fingerprinter, "_contribution", counting)
    fp = Fingerprinter()
    lambdas = [fp(lambda i=i: shared_helper(i)) for i in range(50)]
    partials = [fp(functools.partial(shared_helper, i)) for i in range(50)]
    assert len(set(lambdas)) == len(set(partials)) == 50  # each default, each argument counts
    assert len(reads) == 1  # the lambdas' globals, once for all 50
    assert lambdas[7] == fingerprint(lambda i=7: shared_helper(i))  # the memo changes nothing
    assert partials[7] == fingerprint(functools.partial(shared_helper, 7))  # the fast path
    for args, kwargs in [((7,), {"x": 1}), (((7,),), {}), ((7.5,), {})]:
        again = fp(functools.partial(shared_helper, *args, **kwargs))
        assert again == fingerprint(functools.partial(shared_helper, *args, **kwargs))


def test_mutual_recursion_terminates_and_does_not_depend_on_order(
    load: Callable[..., ModuleType],
) -> None:
    source = """
        def is_even(n):
            return True if n == 0 else is_odd(n - 1)

        def is_odd(n):
            return False if n == 0 else is_even(n - 1)
    """
    module = load(tasks=source)
    even, odd = fingerprint(module.is_even), fingerprint(module.is_odd)
    assert even != odd
    one, other = Fingerprinter(), Fingerprinter()
    assert (one(module.is_even), one(module.is_odd)) == (even, odd)
    assert (other(module.is_odd), other(module.is_even)) == (odd, even)
    changed = load(tasks=source.replace("else is_even(n - 1)", "else is_even(n - 2)"))
    assert fingerprint(changed.is_even) != even  # a change anywhere in the cycle counts
    assert fingerprint(changed.is_odd) != odd


def test_self_recursion_terminates(load: Callable[..., ModuleType]) -> None:
    source = """
        def fact(n):
            return 1 if n <= 1 else n * fact(n - 1)
    """
    base = fp_of(load, "fact", tasks=source)
    assert base == fp_of(load, "fact", tasks=source)
    assert base != fp_of(load, "fact", tasks=source.replace("n - 1", "n - 2"))


@pytest.mark.parametrize("func", [math.sqrt, json.dumps, len, int, str.upper, "x".upper])
def test_library_functions_fingerprint_by_name(func: Callable[..., object]) -> None:
    assert fingerprint(func) == fingerprint(func)
    assert len(fingerprint(func)) == 16


def test_library_functions_differ_from_each_other() -> None:
    prints = {fingerprint(f) for f in (math.sqrt, math.exp, json.dumps, json.loads, int, float)}
    assert len(prints) == 6


def test_lambdas_fingerprint_by_code() -> None:
    assert fingerprint(lambda x: x + 1) == fingerprint(lambda x: x + 1)
    assert fingerprint(lambda x: x + 1) != fingerprint(lambda x: x + 2)


def test_bound_methods_and_callable_objects(load: Callable[..., ModuleType]) -> None:
    source = """
        class Scaler:
            def __init__(self, factor):
                self.factor = factor

            def __call__(self, x):
                return self.apply(x)

            def apply(self, x):
                return x * self.factor
    """
    module = load(tasks=source)
    changed = load(tasks=source.replace("x * self.factor", "x + self.factor"))
    assert fingerprint(module.Scaler(2)) == fingerprint(module.Scaler(2))
    assert fingerprint(module.Scaler(2)) != fingerprint(module.Scaler(3))  # state counts
    assert fingerprint(module.Scaler(2)) != fingerprint(changed.Scaler(2))  # code counts
    assert fingerprint(module.Scaler(2).__call__) == fingerprint(module.Scaler(3).__call__)
    assert fingerprint(module.Scaler(2).__call__) != fingerprint(changed.Scaler(2).__call__)


def test_async_functions_fingerprint_like_functions() -> None:
    async def task(x: int) -> int:
        return x

    def sync_task(x: int) -> int:
        return x

    assert fingerprint(task) == fingerprint(task)
    assert fingerprint(task) != fingerprint(sync_task)


def test_fingerprint_rejects_what_is_not_callable() -> None:
    with pytest.raises(TypeError, match=r"fingerprint needs a callable \(got 3, a int\)"):
        fingerprint(3)  # type: ignore[arg-type]


def test_fingerprint_is_the_same_in_another_interpreter(
    load: Callable[..., ModuleType], tmp_path: Path
) -> None:
    source = """
        import helpers

        SETTINGS = {"mode": "fast", "tags": {"a", "b", "c"}}

        def task(x, names=("p", "q")):
            return helpers.double(x), SETTINGS, {n: 1 for n in names}
    """
    helpers = """
        def double(x):
            return [x, x]
    """
    here = fp_of(load, tasks=source, helpers=helpers).hex()
    directory = tmp_path / "v0"
    script = (
        f"import sys; sys.path.insert(0, {str(directory)!r});"
        "import tasks; from taskmap.checkpoint.fingerprint import fingerprint;"
        "print(fingerprint(tasks.task).hex())"
    )
    assert {run_python(script, seed=seed) for seed in ("0", "123")} == {here}


def test_fingerprinter_disassembles_one_code_object_once_for_many_closures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []
    original = dis.get_instructions

    def counting(code: Any) -> Any:
        calls.append(code)
        return original(code)

    monkeypatch.setattr(dis, "get_instructions", counting)

    def make(i: int) -> Callable[[int], int]:
        def task(x: int) -> int:
            return x + i

        return task

    tasks = [make(i) for i in range(10_000)]
    fingerprinter = Fingerprinter()
    start = time.perf_counter()
    prints = [fingerprinter(task) for task in tasks]
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0
    assert len(set(prints)) == 10_000
    assert len(calls) == 1
    assert fingerprinter(tasks[0]) is prints[0]  # cached by function
