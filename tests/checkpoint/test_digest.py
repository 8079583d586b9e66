"""Canonical value digests and the task key: equal values agree, unequal ones differ."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import decimal
import enum
import fractions
import math
import os
import pathlib
import socket
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import taskmap
from taskmap.checkpoint.digest import UnhashableError, digest, task_key

ROOT = Path(taskmap.__file__).resolve().parents[1]


class Color(enum.Enum):
    RED = 1
    BLUE = 2


@dataclasses.dataclass
class Point:
    x: int
    y: list[int]


class Plain:
    pass


class Pair(NamedTuple):
    a: int
    b: int


def plain(**attrs: object) -> Plain:
    obj = Plain()
    for name, value in attrs.items():
        setattr(obj, name, value)
    return obj


# -- digest: equal values, unequal values ----------------------------------------------------

#: (label, make): make() builds a fresh value each call; two calls must digest equal
SAMPLES: list[tuple[str, Callable[[], object]]] = [
    ("none", lambda: None),
    ("bool", lambda: True),
    ("int", lambda: 12345678901234567890),
    ("negative int", lambda: -129),
    ("float", lambda: 1.5),
    ("nan", lambda: float("nan")),
    ("complex", lambda: 1 + 2j),
    ("str", lambda: "héllo"),
    ("bytes", lambda: b"\x00\x01"),
    ("bytearray", lambda: bytearray(b"ab")),
    ("memoryview", lambda: memoryview(b"abc")),
    ("tuple", lambda: (1, "a", None)),
    ("list", lambda: [1, [2, 3]]),
    ("dict", lambda: {"a": 1, "b": [2]}),
    ("set", lambda: {1, 2, 3}),
    ("frozenset", lambda: frozenset({"x", "y"})),
    ("range", lambda: range(1, 10, 2)),
    ("slice", lambda: slice(1, None, 2)),
    ("enum", lambda: Color.RED),
    ("datetime", lambda: datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)),
    ("date", lambda: datetime.date(2024, 1, 2)),
    ("time", lambda: datetime.time(3, 4, 5)),
    ("timedelta", lambda: datetime.timedelta(days=1, seconds=3)),
    ("decimal", lambda: decimal.Decimal("1.10")),
    ("fraction", lambda: fractions.Fraction(1, 3)),
    ("uuid", lambda: uuid.UUID(int=42)),
    ("path", lambda: pathlib.PurePosixPath("/a/b")),
    ("dataclass", lambda: Point(1, [2])),
    ("plain object", lambda: plain(a=1, b="two")),
    ("ordered dict", lambda: collections.OrderedDict(a=1)),
    ("defaultdict", lambda: collections.defaultdict(list, a=[1])),
    ("namedtuple", lambda: Pair(1, 2)),
    ("type", lambda: Plain),
    ("function", lambda: plain),
    ("builtin", lambda: math.sqrt),
    ("module", lambda: math),
    ("ellipsis", lambda: ...),
]

#: pairs of values that must digest differently
DIFFERENT: list[tuple[str, object, object]] = [
    ("int vs float", 1, 1.0),
    ("int vs bool", 1, True),
    ("float vs bool", 1.0, True),
    ("int vs str", 1, "1"),
    ("zero vs negative zero", 0.0, -0.0),
    ("list vs tuple", [1, 2], (1, 2)),
    ("set vs frozenset", {1}, frozenset({1})),
    ("bytes vs bytearray", b"a", bytearray(b"a")),
    ("bytes vs str", b"a", "a"),
    ("str boundary", ("ab", "c"), ("a", "bc")),
    ("bytes boundary", (b"ab", b"c"), (b"a", b"bc")),
    ("nesting", [[1], 2], [[1, 2]]),
    ("list order", [1, 2], [2, 1]),
    ("dict values", {"a": 1}, {"a": 2}),
    ("dict keys", {"a": 1}, {"b": 1}),
    ("enum members", Color.RED, Color.BLUE),
    ("enum vs its value", Color.RED, 1),
    ("datetime", datetime.datetime(2024, 1, 1), datetime.datetime(2024, 1, 2)),
    (
        "naive vs aware",
        datetime.datetime(2024, 1, 1),
        datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
    ),
    ("date vs datetime", datetime.date(2024, 1, 1), datetime.datetime(2024, 1, 1)),
    ("decimal", decimal.Decimal("1.1"), decimal.Decimal("1.2")),
    ("decimal vs str", decimal.Decimal("1.1"), "1.1"),
    ("fraction", fractions.Fraction(1, 3), fractions.Fraction(2, 3)),
    ("uuid", uuid.UUID(int=1), uuid.UUID(int=2)),
    ("path vs str", pathlib.PurePosixPath("/a"), "/a"),
    ("dataclass fields", Point(1, [2]), Point(1, [3])),
    ("object attributes", plain(a=1), plain(a=2)),
    ("object vs its dict", plain(a=1), {"a": 1}),
    ("ordered dict vs dict", collections.OrderedDict(a=1), {"a": 1}),
    ("range", range(3), range(4)),
    ("slice", slice(1, 2), slice(1, 3)),
    ("complex", 1 + 2j, 1 + 3j),
    ("types", int, float),
    ("functions", math.sqrt, math.exp),
    ("none vs empty", None, ()),
    ("empty list vs empty tuple", [], ()),
]


@pytest.mark.parametrize(("label", "make"), SAMPLES, ids=[s[0] for s in SAMPLES])
def test_equal_values_have_equal_digests(label: str, make: Callable[[], object]) -> None:
    first, second = make(), make()
    assert digest(first) == digest(second)
    assert len(digest(first)) == 16


@pytest.mark.parametrize(("label", "a", "b"), DIFFERENT, ids=[d[0] for d in DIFFERENT])
def test_different_values_have_different_digests(label: str, a: object, b: object) -> None:
    assert digest(a) != digest(b)


def test_every_sample_type_has_its_own_digest() -> None:
    digests = [digest(make()) for _, make in SAMPLES]
    assert len(set(digests)) == len(digests)


def test_dict_digest_ignores_insertion_order() -> None:
    a = {"x": 1, "y": [2, 3], 3: "z"}
    b = {3: "z", "y": [2, 3], "x": 1}
    assert list(a) != list(b)
    assert digest(a) == digest(b)


def test_set_digest_ignores_insertion_order() -> None:
    words = [f"w{i}" for i in range(50)]
    backwards = words[::-1]
    assert digest(set(words)) == digest(set(backwards))
    assert digest(frozenset(words)) == digest(frozenset(backwards))


def test_length_prefixes_keep_boundaries_apart() -> None:
    assert digest(("ab", "c")) != digest(("a", "bc"))
    assert digest(["ab", "c"]) != digest(["a", "bc"])
    assert digest({"ab": "c"}) != digest({"a": "bc"})


def test_one_and_one_point_oh_and_true_differ() -> None:
    assert len({digest(1), digest(1.0), digest(True), digest("1"), digest(b"1")}) == 5


def test_nan_digest_is_stable_and_negative_zero_differs() -> None:
    (payload_nan,) = struct.unpack("<d", struct.pack("<Q", 0x7FF8_0000_0000_0123))
    assert math.isnan(payload_nan)
    assert digest(float("nan")) == digest(payload_nan) == digest(-float("nan"))
    assert digest(0.0) != digest(-0.0)


def test_cyclic_list_terminates() -> None:
    a: list[object] = [1]
    a.append(a)
    b: list[object] = [1]
    b.append(b)
    c: list[object] = [2]
    c.append(c)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_cyclic_dict_and_object_terminate() -> None:
    d: dict[str, object] = {}
    d["self"] = d
    obj = plain()
    obj.me = obj  # type: ignore[attr-defined]
    assert len(digest(d)) == len(digest(obj)) == 16


def test_shared_references_are_not_cycles() -> None:
    shared = [1, 2]
    assert digest([shared, shared]) == digest([[1, 2], [1, 2]])


def test_plain_instance_digest_ignores_attribute_order() -> None:
    assert digest(plain(a=1, b=2)) == digest(plain(b=2, a=1))


def test_str_digest_does_not_depend_on_hash_seed() -> None:
    value = {"alpha": {"x", "y", "z"}, "beta": frozenset({"p", "q"}), "gamma": ["k", "l"]}
    script = (
        "from taskmap.checkpoint.digest import digest;"
        "print(digest({'alpha': {'x', 'y', 'z'}, 'beta': frozenset({'p', 'q'}),"
        " 'gamma': ['k', 'l']}).hex())"
    )
    outputs = {run_python(script, seed=seed) for seed in ("0", "123")}
    assert outputs == {digest(value).hex()}


# -- digest: numpy and pandas ------------------------------------------------------------------


def test_numpy_arrays_digest_by_dtype_shape_and_data() -> None:
    np = pytest.importorskip("numpy")
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    assert digest(a) == digest(a.copy())
    assert digest(a) != digest(a.astype(np.int32))
    assert digest(a) != digest(a.reshape(4, 3))
    assert digest(a) != digest(a + 1)
    view = a[:, ::2]
    assert not view.flags.c_contiguous
    assert digest(view) == digest(np.ascontiguousarray(view))
    assert digest(a.astype(">i8")) == digest(a)  # byte order is normalised
    assert digest(np.float64(1.5)) == digest(np.float64(1.5))
    assert digest(np.float64(1.5)) != digest(1.5)
    assert digest(np.float64(1.5)) != digest(np.float32(1.5))


def test_numpy_object_and_structured_arrays_digest_element_wise() -> None:
    np = pytest.importorskip("numpy")
    objects = np.array([{"b": 1, "a": 2}, "x", None], dtype=object)
    same = np.array([{"a": 2, "b": 1}, "x", None], dtype=object)
    assert digest(objects) == digest(same)
    records = np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")])
    assert digest(records) == digest(records.copy())
    assert digest(records) != digest(records.astype([("a", "i4"), ("c", "f8")]))
    with pytest.raises(UnhashableError, match=r"'_thread\.lock' at \[0, 1\]"):
        digest(np.array([[1, threading.Lock()]], dtype=object))


def test_pandas_objects_digest_by_values_index_and_names() -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    assert digest(frame) == digest(frame.copy())
    assert digest(frame) != digest(frame.rename(columns={"b": "c"}))
    assert digest(frame) != digest(frame.assign(a=[1, 3]))
    assert digest(frame["a"]) != digest(frame["a"].rename("z"))
    assert digest(frame.index) == digest(pd.RangeIndex(2))


# -- digest: what cannot be digested -----------------------------------------------------------


def test_lock_is_unhashable_and_the_error_names_type_and_path() -> None:
    message = r"cannot digest the '_thread\.lock' at \[2\]\['conn'\]: it cannot be reduced"
    with pytest.raises(UnhashableError, match=message) as info:
        digest([1, 2, {"conn": threading.Lock()}])
    assert info.value.type_name == "_thread.lock"
    assert info.value.path == "[2]['conn']"
    assert isinstance(info.value, TypeError)


def test_socket_is_unhashable_and_the_error_names_type_and_path() -> None:
    with (
        socket.socket() as sock,
        pytest.raises(
            UnhashableError, match=r"'socket\.socket' at \.inputs\[1\]: it cannot be reduced"
        ) as info,
    ):
        digest(plain(inputs=("x", sock)))
    assert info.value.path == ".inputs[1]"


@pytest.mark.parametrize(
    "make",
    [
        lambda: (i for i in range(3)),
        lambda: open(os.devnull),  # noqa: SIM115 -- closed by the test
    ],
    ids=["generator", "open file"],
)
def test_generators_and_files_are_unhashable(make: Callable[[], Any]) -> None:
    value = make()
    try:
        with pytest.raises(UnhashableError, match=r"^cannot digest a '"):
            digest(value)
    finally:
        if hasattr(value, "close"):
            value.close()


def test_unhashable_error_pickles_with_its_fields() -> None:
    import pickle

    error = UnhashableError("_thread.lock", "[0]", "why")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.type_name, copy.path, copy.reason, str(copy)) == (
        "_thread.lock",
        "[0]",
        "why",
        str(error),
    )


# -- task_key --------------------------------------------------------------------------------


def test_task_key_is_32_hex_chars_and_depends_on_every_part() -> None:
    a, b, c = digest("a"), digest("b"), digest("c")
    key = task_key(a, b, [c, a])
    assert len(key) == 32
    int(key, 16)
    assert key == task_key(a, b, [c, a])
    others = {task_key(b, b, [c, a]), task_key(a, a, [c, a]), task_key(a, b, [a, c])}
    others |= {task_key(a, b, [c]), task_key(a, b, [])}
    assert key not in others
    assert len(others) == 5


def test_task_key_rejects_parts_that_are_not_16_bytes() -> None:
    with pytest.raises(ValueError, match=r"16-byte digests \(got sizes \[16, 16, 3\]\)"):
        task_key(digest("a"), digest("b"), [b"abc"])


# -- helpers -----------------------------------------------------------------------------------


def run_python(script: str, *, seed: str) -> str:
    """Run ``python -c script`` with a given hash seed; return its stripped stdout."""
    env = {**os.environ, "PYTHONHASHSEED": seed}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()
