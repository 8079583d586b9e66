"""Content-addressed cache keys: canonical digests of values, fingerprints of task code.

Design note
-----------
A task's cache key is ``task_key(digest(name), fingerprint(func), [digest(x) for x in inputs])``.
Every part is a 16-byte BLAKE2b digest of a *type-tagged canonical form*, never of pickle bytes,
``id()`` or ``hash()`` (randomised for ``str``): the same value and the same code give the same
key in every run, process and machine running the same Python minor version.

Rules for values (`digest`):

1. The type is part of the value: ``1``, ``1.0``, ``True`` and ``"1"`` differ; so do a list and
   a tuple, a set and a frozenset, ``bytes`` and a ``bytearray``.
2. Order counts only where the type says it does: dict items and set elements are sorted by the
   digest of the key or element, so insertion order never matters; list and tuple order does.
3. A float counts by its bits: ``-0.0`` differs from ``0.0``, and every NaN is the same NaN.
4. An object counts by what pickle would save of it (``__reduce_ex__(4)``): the reducing callable
   (module + qualname), its arguments and its state.  A plain instance is thus its class and its
   attributes, whatever the order they were set in.  Dataclasses count by class and fields; enum
   members by class and value; datetimes, dates, times, timedeltas, ``Decimal``, ``Fraction``,
   ``UUID`` and paths by their type and text.
5. A numpy array counts by dtype, shape and data (a strided view equals its contiguous copy;
   object arrays element by element); pandas objects by values, index, names and dtypes.
6. Functions, classes and modules *inside a value* count by module + qualname only.
7. A container met again inside itself becomes a back-reference: cyclic values terminate.
8. Locks, sockets, open files, generators, coroutines, connections -- anything pickle refuses --
   raise `UnhashableError` naming the type and where it sits (``[2]['conn']``).

Rules for code (`fingerprint`).  A task function's fingerprint does NOT change when you:

- edit its docstring, comments, blank lines, line breaks or annotations, or move it (or a
  helper it calls) to other lines of its file;
- upgrade a library: library and stdlib functions, classes and modules count by name only;
- change a global it does not read, or what it reaches only at run time: files, ``getattr``
  with a computed name, the code of functions stored inside a value (a dict of callbacks
  counts by the callbacks' module + qualname, rule 6).

It DOES change when you change:

- its body: any operation, constant, called name, local variable or parameter name, the
  parameter kinds, or whether it is ``async`` or a generator (nested defs, lambdas and
  comprehensions included);
- a function or class of *your* code that it reads as a global, recursively (mutual recursion
  is fine): a class counts by its methods, properties and class attributes, sorted by name;
- what it reads from a module of yours, ``import helpers; helpers.f()`` (attributes the code
  names), and what it imports inside its body the same way;
- a global constant it reads (by `digest`; a global `digest` refuses, such as a lock or a
  connection, counts by its type's name; an instance of a class of yours also by the class's
  code), or a value captured in its closure;
- its default arguments; a ``functools.partial``'s arguments; for a bound method, the class of
  ``self`` and the class members the method names (``self.helper()``); for a callable object,
  its class's code and its `digest`; for a decorated function, the function it wraps
  (``__wrapped__``, as ``functools.wraps`` sets it);
- the Python minor version (3.11 and 3.12 compile to different instructions).

*Your code* is ``__main__`` and every module whose file is outside the stdlib and
site-packages directories (``sysconfig`` stdlib/platstdlib/purelib/platlib, ``site``'s site
and user-site packages) and outside taskmap itself.  A project installed into site-packages
counts as a library; an editable install (``pip install -e``) stays your code.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import dis
import enum
import fractions
import functools
import os
import pathlib
import site
import struct
import sys
import sysconfig
import uuid
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from hashlib import blake2b
from types import (
    BuiltinFunctionType,
    ClassMethodDescriptorType,
    CodeType,
    FunctionType,
    MappingProxyType,
    MethodDescriptorType,
    MethodType,
    MethodWrapperType,
    ModuleType,
    WrapperDescriptorType,
)
from typing import Any, TypeAlias

from ..errors import TaskmapError

__all__ = ["Fingerprinter", "UnhashableError", "digest", "fingerprint", "task_key"]

#: BLAKE2b personalisation strings: bumping one invalidates every key built from it.
_VALUE_PERSON = b"taskmap-value-1"
_CODE_PERSON = b"taskmap-code1-" + bytes((sys.version_info[0], sys.version_info[1]))
_KEY_PERSON = b"taskmap-key-1"

_LEN = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack

_Update = Callable[[Any], None]
_Active = dict[int, int]
_Handler = Callable[[Any, _Update, _Active], None]


class UnhashableError(TaskmapError, TypeError):
    """A value has no canonical digest, so it cannot be part of a cache key.

    Raised by `digest` for what pickle refuses too: locks, sockets, open files, generators,
    coroutines, database connections.  A `TypeError`, as ``hash()`` of an unhashable value.

    Attributes:
        type_name: the offending type, ``module.qualname`` (``'_thread.lock'``).
        path: where it sits inside the value given to `digest` (``"[2]['conn']"``), or ``""``
            when it is that value itself.
        reason: why it has no canonical form.
    """

    def __init__(self, type_name: str, path: str, reason: str = "") -> None:
        self.type_name = type_name
        self.path = path
        self.reason = reason
        where = f"the {type_name!r} at {path}" if path else f"a {type_name!r}"
        because = f": {reason}" if reason else ""
        super().__init__(f"cannot digest {where}{because}")

    def __reduce__(self) -> tuple[type[UnhashableError], tuple[str, str, str]]:
        return type(self), (self.type_name, self.path, self.reason)


class _Unhashable(Exception):
    """Internal: unwinds out of the handlers, each adding its step to the path."""

    def __init__(self, cls: type, reason: str) -> None:
        super().__init__(reason)
        self.cls = cls
        self.reason = reason
        self.steps: list[str] = []  # innermost first

    def public(self) -> UnhashableError:
        return UnhashableError(_type_name(self.cls), "".join(reversed(self.steps)), self.reason)


# --------------------------------------------------------------------------------------------
# digest


def digest(value: object) -> bytes:
    """Return the 16-byte digest of a value's type-tagged canonical form.

    Equal values of the same type give equal digests in every process and on every machine;
    the rules are in this module's design note.  A cyclic value terminates.

    Args:
        value: what to digest: builtins, containers, dataclasses, enums, numpy and pandas
            objects, and any object pickle can reduce.

    Returns:
        16 bytes.

    Raises:
        UnhashableError: a part of `value` has no canonical form (a lock, a socket...).

    Example:
        >>> digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})
        True
    """
    if type(value) is str:  # fast path: the same bytes the _str handler feeds
        data = value.encode("utf-8", "surrogatepass")
        return blake2b(b"s" + _LEN(len(data)) + data, digest_size=16, person=_VALUE_PERSON).digest()
    h = blake2b(digest_size=16, person=_VALUE_PERSON)
    try:
        _feed(value, h.update, {})
    except _Unhashable as exc:
        raise exc.public() from None
    return h.digest()


def _sub(value: object, active: _Active) -> bytes:
    """Digest of a part, hashed on its own (dict keys, set elements) in the same recursion."""
    h = blake2b(digest_size=16, person=_VALUE_PERSON)
    t = type(value)
    (_HANDLERS.get(t) or _resolve(t))(value, h.update, active)
    return h.digest()


def _feed(value: object, up: _Update, active: _Active) -> None:
    t = type(value)
    (_HANDLERS.get(t) or _resolve(t))(value, up, active)


def _text(up: _Update, text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    up(_LEN(len(data)) + data)


def _type_name(cls: type) -> str:
    module = getattr(cls, "__module__", None)
    qualname = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", None)
    if not isinstance(qualname, str):
        qualname = repr(cls)
    return f"{module}.{qualname}" if isinstance(module, str) and module != "builtins" else qualname


def _name_of(obj: object) -> str:
    """``module.qualname`` of a function, class or descriptor (qualname alone for builtins)."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if not isinstance(qualname, str):
        return _type_name(type(obj))
    return f"{module}.{qualname}" if isinstance(module, str) else qualname


def _short(obj: object) -> str:
    text = repr(obj)
    return text if len(text) <= 40 else text[:37] + "..."


def _enter(value: object, up: _Update, active: _Active) -> bool:
    """Guard a container against cycles: False (and a back-reference fed) if already open."""
    depth = active.get(id(value))
    if depth is not None:
        up(b"^" + _LEN(len(active) - depth))  # distance up the stack, not absolute depth
        return False
    active[id(value)] = len(active)
    return True


# -- scalars ---------------------------------------------------------------------------------


def _none(value: None, up: _Update, active: _Active) -> None:
    up(b"N")


def _bool(value: bool, up: _Update, active: _Active) -> None:
    up(b"T" if value else b"F")


def _int(value: int, up: _Update, active: _Active) -> None:
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    up(b"i" + _LEN(len(data)) + data)


def _float_bits(value: float) -> bytes:
    return b"nan\0\0\0\0\0" if value != value else _DOUBLE(value)


def _float(value: float, up: _Update, active: _Active) -> None:
    up(b"f" + _float_bits(value))


def _complex(value: complex, up: _Update, active: _Active) -> None:
    up(b"c" + _float_bits(value.real) + _float_bits(value.imag))


def _str(value: str, up: _Update, active: _Active) -> None:
    data = value.encode("utf-8", "surrogatepass")
    up(b"s" + _LEN(len(data)) + data)


def _bytes(value: bytes, up: _Update, active: _Active) -> None:
    up(b"b" + _LEN(len(value)))
    up(value)


def _bytearray(value: bytearray, up: _Update, active: _Active) -> None:
    up(b"B" + _LEN(len(value)))
    up(value)


def _memoryview(value: memoryview, up: _Update, active: _Active) -> None:
    up(b"m")
    _text(up, value.format)
    up(_LEN(value.ndim) + b"".join(_LEN(n) for n in value.shape or ()) + _LEN(value.nbytes))
    up(value.cast("B") if value.c_contiguous else value.tobytes())


def _range(value: range, up: _Update, active: _Active) -> None:
    up(b"r")
    for part in (value.start, value.stop, value.step):
        _int(part, up, active)


def _slice(value: slice, up: _Update, active: _Active) -> None:
    up(b"S")
    _items((value.start, value.stop, value.step), up, active)


def _singleton(value: object, up: _Update, active: _Active) -> None:
    up(b"1")
    _text(up, repr(value))  # Ellipsis, NotImplemented


def _routine(value: object, up: _Update, active: _Active) -> None:
    up(b"u")
    _text(up, _name_of(value))


def _type(value: type, up: _Update, active: _Active) -> None:
    up(b"t")
    _text(up, _type_name(value))


def _module(value: ModuleType, up: _Update, active: _Active) -> None:
    up(b"M")
    _text(up, value.__name__)


def _enum(value: enum.Enum, up: _Update, active: _Active) -> None:
    up(b"E")
    _text(up, _type_name(type(value)))
    _feed(value.value, up, active)


def _typed_text(value: object, up: _Update, active: _Active) -> None:
    """Dates, timedeltas, Decimal, Fraction, UUID, paths: type name + ``str()``."""
    up(b"x")
    _text(up, _type_name(type(value)))
    _text(up, str(value))


def _clock(value: datetime.datetime | datetime.time, up: _Update, active: _Active) -> None:
    """Datetimes and times: type + isoformat + fold + tzinfo (the zone, not just its offset)."""
    up(b"d")
    _text(up, _type_name(type(value)))
    _text(up, value.isoformat())
    up(b"%d" % value.fold)
    try:
        _feed(value.tzinfo, up, active)
    except _Unhashable as exc:
        exc.steps.append(".tzinfo")
        raise


# -- containers ------------------------------------------------------------------------------


def _index_of(items: Iterable[object], item: object) -> int:
    # Only on the error path: the first element identical to the failing one is the one that
    # failed, as an earlier identical element would have failed first.
    return next(i for i, x in enumerate(items) if x is item)


def _items(value: Iterable[object], up: _Update, active: _Active) -> None:
    get = _HANDLERS.get
    item: object = None
    try:
        for item in value:
            t = type(item)
            (get(t) or _resolve(t))(item, up, active)
    except _Unhashable as exc:
        exc.steps.append(f"[{_index_of(value, item)}]")
        raise


def _tuple(value: tuple[object, ...], up: _Update, active: _Active) -> None:
    # Tuples need no cycle guard: a cycle through a tuple passes through a mutable container.
    up(b"(" + _LEN(len(value)))
    _items(value, up, active)


def _list(value: list[object], up: _Update, active: _Active) -> None:
    if _enter(value, up, active):
        up(b"[" + _LEN(len(value)))
        _items(value, up, active)
        del active[id(value)]


def _pairs(
    pairs: Iterable[tuple[object, object]], up: _Update, active: _Active, *, attrs: bool
) -> None:
    """Feed mapping items sorted by key digest, so insertion order does not matter."""
    keyed: list[tuple[bytes, object, object]] = []
    for key, val in pairs:
        try:
            keyed.append((_sub(key, active), key, val))
        except _Unhashable as exc:
            exc.steps.append(f"<key {_short(key)}>")
            raise
    keyed.sort(key=_first)
    if len({k for k, _, _ in keyed}) != len(keyed):
        # Distinct keys with one canonical form (two equal-state objects hashed by
        # identity): break the tie by the value so the order is still canonical.
        keyed.sort(key=lambda kv: (kv[0], _sub(kv[2], active)))
    up(_LEN(len(keyed)))
    for kd, key, val in keyed:
        up(kd)
        try:
            _feed(val, up, active)
        except _Unhashable as exc:
            is_attr = attrs and isinstance(key, str) and key.isidentifier()
            exc.steps.append(f".{key}" if is_attr else f"[{_short(key)}]")
            raise


def _first(item: tuple[bytes, object, object]) -> bytes:
    return item[0]


def _dict(value: dict[object, object], up: _Update, active: _Active) -> None:
    if _enter(value, up, active):
        up(b"{")
        _pairs(value.items(), up, active, attrs=False)
        del active[id(value)]


def _mappingproxy(value: MappingProxyType[object, object], up: _Update, active: _Active) -> None:
    up(b"p")
    _pairs(value.items(), up, active, attrs=False)


def _elements(
    tag: bytes, value: set[object] | frozenset[object], up: _Update, active: _Active
) -> None:
    digests = []
    for item in value:
        try:
            digests.append(_sub(item, active))
        except _Unhashable as exc:
            exc.steps.append(f"<element {_short(item)}>")
            raise
    digests.sort()
    up(tag + _LEN(len(digests)) + b"".join(digests))


def _set(value: set[object], up: _Update, active: _Active) -> None:
    if _enter(value, up, active):
        _elements(b"<", value, up, active)
        del active[id(value)]


def _frozenset(value: frozenset[object], up: _Update, active: _Active) -> None:
    _elements(b">", value, up, active)


# -- objects ---------------------------------------------------------------------------------

_MISSING = object()


def _dataclass(value: Any, up: _Update, active: _Active) -> None:
    if not _enter(value, up, active):
        return
    fields = dataclasses.fields(value)
    up(b"D")
    _text(up, _type_name(type(value)))
    up(_LEN(len(fields)))
    for field in fields:
        _text(up, field.name)
        attr = getattr(value, field.name, _MISSING)
        if attr is _MISSING:
            up(b"-")
            continue
        try:
            _feed(attr, up, active)
        except _Unhashable as exc:
            exc.steps.append(f".{field.name}")
            raise
    del active[id(value)]


def _reduce(value: Any, up: _Update, active: _Active) -> None:
    """Anything else: what ``__reduce_ex__(4)`` gives -- callable, args, state, items."""
    if not _enter(value, up, active):
        return
    cls = type(value)
    try:
        reduced = value.__reduce_ex__(4)
    except Exception as exc:  # pickle's refusal (TypeError) or a broken __getstate__
        raise _Unhashable(cls, f"it cannot be reduced ({exc})") from None
    if isinstance(reduced, str):  # a module-level singleton, named
        up(b"g")
        _text(up, f"{getattr(value, '__module__', None) or cls.__module__}.{reduced}")
    elif isinstance(reduced, tuple) and 2 <= len(reduced) <= 6:
        parts = reduced + (None,) * (6 - len(reduced))
        func, args, state, listitems, dictitems, setter = parts
        up(b"R")
        _feed(func, up, active)
        try:
            _feed(args, up, active)
        except _Unhashable as exc:
            if exc.steps and exc.steps[-1].startswith("["):
                exc.steps[-1] = f"<arg {exc.steps[-1][1:-1]}>"  # "[0]" -> "<arg 0>"
            raise
        if isinstance(state, dict):
            up(b"{")
            _pairs(state.items(), up, active, attrs=True)
        elif isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
            up(b"(")  # (__dict__ or None, {slot: value}): objects with __slots__
            if isinstance(state[0], dict):
                _pairs(state[0].items(), up, active, attrs=True)
            else:
                _feed(state[0], up, active)
            _pairs(state[1].items(), up, active, attrs=True)
        else:
            try:
                _feed(state, up, active)
            except _Unhashable as exc:
                exc.steps.append("<state>")
                raise
        _feed(None if listitems is None else list(listitems), up, active)
        if dictitems is None:
            up(b"N")
        else:
            up(b"{")
            _pairs(dictitems, up, active, attrs=False)
        _feed(setter, up, active)
    else:
        raise _Unhashable(cls, f"its __reduce_ex__ returned {_short(reduced)}")
    del active[id(value)]


# -- numpy and pandas, detected without importing them ---------------------------------------


def _ndarray(value: Any, up: _Update, active: _Active) -> None:
    np = sys.modules["numpy"]
    dtype = value.dtype
    up(b"A" + _LEN(value.ndim) + b"".join(_LEN(n) for n in value.shape))
    if dtype.names is not None:  # structured: each field by name, so padding never counts
        up(b"{" + _LEN(len(dtype.names)))
        for name in dtype.names:
            _text(up, name)
            _ndarray(value[name], up, active)
        return
    if dtype.hasobject:
        if not _enter(value, up, active):
            return
        up(b"O")
        item: object = None
        try:
            for item in value.flat:
                _feed(item, up, active)
        except _Unhashable as exc:
            flat = _index_of(value.flat, item)
            where = ", ".join(str(int(i)) for i in np.unravel_index(flat, value.shape))
            exc.steps.append(f"[{where}]")
            raise
        del active[id(value)]
        return
    if dtype.byteorder == ">" or (dtype.byteorder == "=" and sys.byteorder == "big"):
        value = value.astype(dtype.newbyteorder("<"), order="C")  # one form on every machine
    elif not value.flags.c_contiguous:
        value = np.ascontiguousarray(value)
    _text(up, value.dtype.str)
    try:
        up(value.reshape(-1).view(np.uint8))
    except (TypeError, ValueError):  # a dtype with no byte view
        up(value.tobytes())


def _numpy_scalar(value: Any, up: _Update, active: _Active) -> None:
    up(b"a")
    _ndarray(sys.modules["numpy"].asarray(value), up, active)


def _pandas(value: Any, up: _Update, active: _Active) -> None:
    pd = sys.modules["pandas"]
    up(b"P")
    _text(up, _type_name(type(value)))
    if isinstance(value, pd.DataFrame):
        _pandas(value.columns, up, active)
        _feed([str(d) for d in value.dtypes], up, active)
        _pandas(value.index, up, active)
    elif isinstance(value, pd.Series):
        _feed(value.name, up, active)
        _text(up, str(value.dtype))
        _pandas(value.index, up, active)
    else:
        _feed(list(value.names), up, active)
        _text(up, str(value.dtype))
    up(_LEN(len(value)))
    try:
        hashed = pd.util.hash_pandas_object(value, index=False)
    except TypeError:  # unhashable cells (lists, dicts): element by element
        up(b"o")
        _ndarray(value.to_numpy(dtype=object), up, active)
    else:
        up(b"h")
        _ndarray(sys.modules["numpy"].asarray(hashed), up, active)


# -- dispatch --------------------------------------------------------------------------------

_HANDLERS: dict[type, _Handler] = {
    type(None): _none,
    bool: _bool,
    int: _int,
    float: _float,
    complex: _complex,
    str: _str,
    bytes: _bytes,
    bytearray: _bytearray,
    memoryview: _memoryview,
    tuple: _tuple,
    list: _list,
    dict: _dict,
    set: _set,
    frozenset: _frozenset,
    range: _range,
    slice: _slice,
    MappingProxyType: _mappingproxy,
    type(...): _singleton,
    type(NotImplemented): _singleton,
    type: _type,
    ModuleType: _module,
    FunctionType: _routine,
    BuiltinFunctionType: _routine,
    MethodDescriptorType: _routine,
    WrapperDescriptorType: _routine,
    ClassMethodDescriptorType: _routine,
    datetime.datetime: _clock,
    datetime.time: _clock,
    datetime.date: _typed_text,
    datetime.timedelta: _typed_text,
    decimal.Decimal: _typed_text,
    fractions.Fraction: _typed_text,
    uuid.UUID: _typed_text,
    type(pathlib.PurePath()): _typed_text,
    type(pathlib.Path()): _typed_text,
}

_TEXT_TYPES = (
    datetime.date,
    datetime.timedelta,
    decimal.Decimal,
    fractions.Fraction,
    uuid.UUID,
    pathlib.PurePath,
)

#: handlers chosen by isinstance rules, per type; cleared when full, so never unbounded
_RESOLVED: dict[type, _Handler] = {}


def _resolve(cls: type) -> _Handler:
    handler = _RESOLVED.get(cls)
    if handler is None:
        handler = _choose(cls)
        if len(_RESOLVED) >= 1024:
            _RESOLVED.clear()
        _RESOLVED[cls] = handler
    return handler


def _choose(cls: type) -> _Handler:
    np = sys.modules.get("numpy")
    if np is not None:
        if cls is np.ndarray:  # subclasses (masked arrays...) carry more state: reduce them
            return _ndarray
        if issubclass(cls, np.generic):  # before float/int: np.float64 subclasses float
            return _numpy_scalar
    pd = sys.modules.get("pandas")
    if pd is not None:
        frames = tuple(getattr(pd, n, None) for n in ("DataFrame", "Series", "Index"))
        if all(isinstance(f, type) for f in frames) and issubclass(cls, frames):  # type: ignore[arg-type]
            return _pandas
    if issubclass(cls, enum.Enum):  # before int/str: IntEnum, StrEnum
        return _enum
    if issubclass(cls, type):
        return _type
    if dataclasses.is_dataclass(cls):
        return _dataclass
    if issubclass(cls, (datetime.datetime, datetime.time)):
        return _clock
    if issubclass(cls, _TEXT_TYPES):
        return _typed_text
    if issubclass(cls, ModuleType):
        return _module
    return _reduce  # str/int/dict subclasses too: reduce keeps their type and extra state


# --------------------------------------------------------------------------------------------
# task_key


def task_key(name_digest: bytes, code: bytes, inputs: Sequence[bytes]) -> str:
    """Return the cache key of one task run: 32 hex characters.

    Args:
        name_digest: `digest` of the task's name (16 bytes).
        code: `fingerprint` of the task's function (16 bytes).
        inputs: `digest` of each input, in order (16 bytes each).

    Returns:
        The hex BLAKE2b-128 of a format tag and the parts, each a fixed 16 bytes.

    Raises:
        ValueError: a part is not 16 bytes long.
    """
    blob = b"".join(inputs)
    if len(name_digest) != 16 or len(code) != 16 or len(blob) != 16 * len(inputs):
        sizes = [len(name_digest), len(code), *map(len, inputs)]
        raise ValueError(f"task_key needs 16-byte digests (got sizes {sizes})")
    return blake2b(name_digest + code + blob, digest_size=16, person=_KEY_PERSON).hexdigest()


# --------------------------------------------------------------------------------------------
# fingerprint

#: co_flags bits that change what a code object does: *args, **kwargs, generator, coroutine,
#: iterable coroutine, async generator (CPython's Include/cpython/code.h; stable since 3.6)
_FLAGS = 0x0004 | 0x0008 | 0x0020 | 0x0080 | 0x0100 | 0x0200
#: instructions that only pad, tune or mark: they change with nothing the function does
_SKIP_OPS = frozenset({"CACHE", "NOP", "RESUME", "EXTENDED_ARG"})
_JUMP_OPS = frozenset(dis.hasjrel) | frozenset(dis.hasjabs)
_CONST_OPS = frozenset(dis.hasconst)
_GLOBAL_OPS = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_ATTR_OPS = frozenset({"LOAD_ATTR", "LOAD_METHOD", "IMPORT_FROM", "LOAD_SUPER_ATTR"})
#: class __dict__ entries that are bookkeeping, not behaviour; copyreg adds __slotnames__
#: the first time an instance is pickled or digested, abc keeps its registry in _abc_impl
_CLASS_SKIP = frozenset(
    {
        "__dict__",
        "__weakref__",
        "__doc__",
        "__module__",
        "__qualname__",
        "__annotations__",
        "__slotnames__",
        "_abc_impl",
    }
)
_BUILTIN_CALLABLES = (
    BuiltinFunctionType,
    MethodDescriptorType,
    WrapperDescriptorType,
    MethodWrapperType,
    ClassMethodDescriptorType,
)
#: values read by the code that are fingerprinted as code, not digested as data
_CALLABLES = (
    FunctionType,
    functools.partial,
    MethodType,
    type,
    staticmethod,
    classmethod,
    *_BUILTIN_CALLABLES,
)


@dataclasses.dataclass(frozen=True, slots=True)
class _CodeInfo:
    """What one code object (with its nested code) contributes, independent of its globals."""

    digest: bytes
    globals: tuple[str, ...]  # names read as globals, sorted
    attrs: frozenset[str]  # names read as attributes or imported from a module
    imports: tuple[tuple[int, str], ...]  # (level, module) imported in the body, sorted


def _h(*parts: bytes) -> bytes:
    h = blake2b(digest_size=16, person=_CODE_PERSON)
    for part in parts:
        h.update(_LEN(len(part)) + part)
    return h.digest()


@functools.cache
def _library_prefixes() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = [paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")]
    dirs += getattr(site, "getsitepackages", list)()
    dirs.append(getattr(site, "getusersitepackages", str)())
    dirs.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # taskmap itself
    prefixes = set()
    for d in dirs:
        if d:
            for form in (os.path.abspath(d), os.path.realpath(d)):
                prefixes.add(os.path.join(os.path.normcase(form), ""))
    return tuple(sorted(prefixes))


@functools.lru_cache(maxsize=4096)
def _is_user_file(path: str) -> bool:
    full = os.path.join(os.path.normcase(os.path.realpath(path)), "")
    return not full.startswith(_library_prefixes())


def _is_user_module(module: ModuleType) -> bool:
    if module.__name__ == "__main__":
        return True
    file = getattr(module, "__file__", None)
    if isinstance(file, str):
        return _is_user_file(file)
    path = getattr(module, "__path__", None)  # a namespace package has directories only
    return path is not None and any(isinstance(p, str) and _is_user_file(p) for p in path)


def _is_user_function(func: FunctionType) -> bool:
    filename = func.__code__.co_filename
    if not (filename.startswith("<") and filename.endswith(">")):
        return _is_user_file(filename)
    # "<frozen posixpath>", "<string>" (exec, dataclass-made methods): ask the module
    module = sys.modules.get(func.__module__ or "")
    return module is None or _is_user_module(module)


def _is_user_class(cls: type) -> bool:
    module = sys.modules.get(cls.__module__)
    if module is not None:
        return _is_user_module(module)
    for member in vars(cls).values():  # module gone from sys.modules: where its code lives
        if isinstance(member, FunctionType):
            return _is_user_function(member)
    return False


def fingerprint(func: Callable[..., object]) -> bytes:
    """Return the 16-byte fingerprint of a task function's code.

    The rules (what changes it, what does not) are in this module's design note.  Use one
    `Fingerprinter` for many functions in one run: it caches.

    Args:
        func: a function, lambda, ``functools.partial``, bound method, class, builtin or
            callable object.

    Returns:
        16 bytes, equal in every process running the same Python minor version.

    Raises:
        TypeError: `func` is not callable.

    Example:
        >>> fingerprint(lambda x: x + 1) == fingerprint(lambda x: x + 1)
        True
    """
    return Fingerprinter()(func)


# A fingerprint is built as an expression: bytes, a reference to a node (a function, class or
# module of the user's) whose fingerprint is not known yet, or a tuple hashed with `_h` once
# its parts are known.  Nodes form a graph that may have cycles (mutual recursion); Tarjan's
# algorithm finds its strongly connected components, and a component's members get
# fingerprints from the component as a whole, so which member a run reaches first does not
# matter.


class _Ref:
    """A node met while it is still being described: its fingerprint comes later."""

    __slots__ = ("key",)

    def __init__(self, key: _Key) -> None:
        self.key = key


_Key: TypeAlias = tuple[str, int, frozenset[str]]
_Expr: TypeAlias = "bytes | _Ref | tuple[_Expr, ...]"


def _combine(*parts: _Expr) -> _Expr:
    """`_h` of the parts now if all are known, else the tuple to hash later."""
    if all(type(p) is bytes for p in parts):
        return _h(*parts)  # type: ignore[arg-type]
    return parts


def _evaluate(expr: _Expr, labels: dict[_Key, bytes]) -> bytes:
    if type(expr) is bytes:
        return expr
    if isinstance(expr, _Ref):
        return labels[expr.key]
    assert isinstance(expr, tuple)
    return _h(*(_evaluate(p, labels) for p in expr))


def _refers(expr: _Expr) -> bool:
    if isinstance(expr, _Ref):
        return True
    return isinstance(expr, tuple) and any(_refers(p) for p in expr)


class Fingerprinter:
    """Fingerprint many task functions in one run, each code object disassembled once.

    Code digests are cached by code object, so 10,000 closures of one function cost one
    ``dis`` pass; results are cached by ``id(func)`` with a reference held, so an id is never
    reused while cached.  Not thread-safe: use one per run, from one thread.  Code is read
    once: make a new `Fingerprinter` after editing code in a live session.
    """

    __slots__ = (
        "_codes",
        "_count",
        "_desc",
        "_done",
        "_index",
        "_keep",
        "_low",
        "_path",
        "_tarjan",
        "_top",
    )

    def __init__(self) -> None:
        self._codes: dict[int, tuple[CodeType, _CodeInfo]] = {}
        self._top: dict[int, tuple[object, bytes]] = {}  # id(func) -> (func, fingerprint)
        self._done: dict[_Key, tuple[object, bytes]] = {}  # finished nodes, object kept alive
        # Tarjan's state for the nodes of the component being explored:
        self._count = 0  # visit counter
        self._index: dict[_Key, int] = {}  # visit number of each open node
        self._low: dict[_Key, int] = {}  # lowest visit number it reaches
        self._tarjan: list[_Key] = []  # open nodes, in visit order
        self._path: list[_Key] = []  # nodes whose description is being built
        self._desc: dict[_Key, _Expr] = {}  # open nodes' descriptions
        self._keep: dict[_Key, object] = {}  # open nodes' objects, alive while their id is a key

    def __call__(self, func: Callable[..., object]) -> bytes:
        """Return the fingerprint of `func`; see `fingerprint`."""
        top = self._top.get(id(func))
        if top is not None and top[0] is func:
            return top[1]
        if not callable(func):
            raise TypeError(
                f"fingerprint needs a callable (got {_short(func)}, a {_type_name(type(func))})"
            )
        try:
            expr = self._callable(func)
        except BaseException:
            self._abandon()
            raise
        # at the top no node is open, so every reference has been resolved
        result = _evaluate(expr, {})
        self._top[id(func)] = (func, result)
        return result

    def _abandon(self) -> None:
        """Forget half-explored nodes after an error, so the next call starts clean."""
        for table in (self._index, self._low, self._desc, self._keep):
            table.clear()
        self._tarjan.clear()
        self._path.clear()

    # -- the node graph ----------------------------------------------------------------------

    def _node(self, key: _Key, obj: Any, describe: Callable[[Any], _Expr]) -> _Expr:
        """Fingerprint of a node, or a `_Ref` to it while its component is still open."""
        done = self._done.get(key)
        if done is not None:
            return done[1]
        path = self._path
        if key in self._index:  # open: a cycle back to it
            self._low[path[-1]] = min(self._low[path[-1]], self._index[key])
            return _Ref(key)
        number = self._count
        self._count += 1
        self._index[key] = self._low[key] = number
        self._tarjan.append(key)
        self._keep[key] = obj
        path.append(key)
        try:
            self._desc[key] = describe(obj)
        finally:
            path.pop()
        if self._low[key] == number:  # the root of a component: all of it is described
            return self._close(key)
        self._low[path[-1]] = min(self._low[path[-1]], self._low[key])
        return _Ref(key)

    def _close(self, root: _Key) -> bytes:
        """Give each member of the component rooted at `root` its fingerprint."""
        members: list[_Key] = []
        while not members or members[-1] != root:
            members.append(self._tarjan.pop())
        descs = {key: self._desc.pop(key) for key in members}
        for key in members:
            del self._index[key], self._low[key]
        if len(members) == 1 and not _refers(descs[root]):
            prints = {root: _evaluate(descs[root], {})}
        else:
            # A cycle: label members by their own description, refined with their
            # neighbours' labels (members are told apart by content, never by visit order);
            # each fingerprint covers the whole cycle, as a change anywhere in it counts.
            labels = dict.fromkeys(members, _h(b"cycle-member"))
            for _ in range(min(len(members), 8)):
                labels = {key: _evaluate(descs[key], labels) for key in members}
            ring = _h(b"cycle", *sorted(labels.values()))
            prints = {key: _h(ring, labels[key]) for key in members}
        for key in members:
            self._done[key] = (self._keep.pop(key), prints[key])
        return prints[root]

    # -- what a callable or a value contributes ----------------------------------------------

    def _callable(self, obj: Any) -> _Expr:
        if isinstance(obj, FunctionType):
            if _is_user_function(obj):
                return self._node(("function", id(obj), frozenset()), obj, self._function)
            return _h(b"lib", _name_of(obj).encode())
        if isinstance(obj, functools.partial):
            args = [self._contribution(a, frozenset()) for a in obj.args]
            kwargs = [
                _combine(k.encode(), self._contribution(v, frozenset()))
                for k, v in sorted(obj.keywords.items())
            ]
            return _combine(b"partial", self._callable(obj.func), *args, b"kw", *kwargs)
        if isinstance(obj, MethodType):
            return self._method(obj)
        if isinstance(obj, type):
            if _is_user_class(obj):
                return self._class_node(obj)
            return _h(b"lib", _type_name(obj).encode())
        if isinstance(obj, (staticmethod, classmethod)):
            return _combine(b"wrapped", self._callable(obj.__func__))
        if isinstance(obj, _BUILTIN_CALLABLES):
            return _h(b"lib", _name_of(obj).encode())
        # a callable object: its class's code (all of it, for a class of yours) and its state
        cls = type(obj)
        code = self._class_node(cls) if _is_user_class(cls) else self._callable(cls.__call__)
        try:
            state = digest(obj)
        except UnhashableError:
            state = _type_name(cls).encode()
        wrapped = getattr(obj, "__wrapped__", None)  # functools.lru_cache, decorators
        extra = [self._callable(wrapped)] if callable(wrapped) else []
        return _combine(b"object", code, state, *extra)

    def _method(self, method: MethodType) -> _Expr:
        """A bound method: its function, the class of self, and class members it names."""
        owner = method.__self__
        cls = owner if isinstance(owner, type) else type(owner)  # a classmethod: the class
        func = method.__func__
        parts = [b"method", self._callable(func), _type_name(cls).encode()]
        if isinstance(func, FunctionType) and _is_user_class(cls):
            for name in sorted(self._code_info(func.__code__).attrs):
                for klass in cls.__mro__:
                    if name in vars(klass):
                        parts += [name.encode(), self._contribution(vars(klass)[name], frozenset())]
                        break
        return _combine(*parts)

    def _contribution(self, value: Any, attrs: frozenset[str]) -> _Expr:
        """What a value the code reads (a global, closure cell, default) contributes."""
        if isinstance(value, ModuleType):
            if _is_user_module(value):
                return self._node(("module", id(value), attrs), value, self._module)
            return b"module:" + value.__name__.encode()
        if isinstance(value, property):
            accessors = (value.fget, value.fset, value.fdel)
            return _combine(
                b"property", *(b"-" if f is None else self._callable(f) for f in accessors)
            )
        if isinstance(value, _CALLABLES):
            return self._callable(value)
        try:
            state = b"value:" + digest(value)
        except UnhashableError:
            state = b"type:" + _type_name(type(value)).encode()
        cls = type(value)
        if _is_user_class(cls):  # an instance of a class of yours: its code counts too
            return _combine(state, self._class_node(cls))
        return state

    # -- nodes: functions, classes and modules of the user's ---------------------------------

    def _class_node(self, cls: type) -> _Expr:
        return self._node(("class", id(cls), frozenset()), cls, self._class)

    def _function(self, func: FunctionType) -> _Expr:
        info = self._code_info(func.__code__)
        parts: list[_Expr] = [b"function", info.digest]
        namespace = func.__globals__
        for name in info.globals:
            if name in namespace:  # builtins (len, print) are not: the name in the code is all
                parts += [name.encode(), self._contribution(namespace[name], info.attrs)]
        for level, name in info.imports:
            module = sys.modules.get(_absolute(name, level, namespace.get("__package__")))
            if module is not None:
                parts += [b"import", name.encode(), self._contribution(module, info.attrs)]
        for name, cell in zip(func.__code__.co_freevars, func.__closure__ or (), strict=False):
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell: a variable not assigned yet
                parts += [name.encode(), b"empty-cell"]
            else:
                parts += [name.encode(), self._contribution(value, info.attrs)]
        parts += [self._contribution(d, frozenset()) for d in func.__defaults__ or ()]
        for name, value in sorted((func.__kwdefaults__ or {}).items()):
            parts += [b"kwdefault", name.encode(), self._contribution(value, frozenset())]
        wrapped = getattr(func, "__wrapped__", None)
        if callable(wrapped):
            parts += [b"wrapped", self._callable(wrapped)]
        return _combine(*parts)

    def _class(self, cls: type) -> _Expr:
        parts: list[_Expr] = [b"class"]
        parts += [self._callable(base) for base in cls.__bases__]
        members = vars(cls)
        for name in sorted(k for k in members if isinstance(k, str) and k not in _CLASS_SKIP):
            parts += [name.encode(), self._contribution(members[name], frozenset())]
        return _combine(*parts)

    def _module(self, module: ModuleType) -> _Expr:
        """A module of the user's: what it binds to the attribute names the code reads."""
        attrs = self._path[-1][2]  # the node's key: ("module", id, attribute names)
        parts: list[_Expr] = [b"user-module"]
        namespace = vars(module)
        for name in sorted(attrs):
            if name in namespace:
                parts += [name.encode(), self._contribution(namespace[name], attrs)]
        return _combine(*parts)

    # -- code objects ------------------------------------------------------------------------

    def _code_info(self, code: CodeType) -> _CodeInfo:
        hit = self._codes.get(id(code))
        if hit is not None and hit[0] is code:
            return hit[1]
        instructions = [i for i in dis.get_instructions(code) if i.opname not in _SKIP_OPS]
        offsets = [i.offset for i in instructions]
        h = blake2b(digest_size=16, person=_CODE_PERSON)
        up = h.update
        up(
            b"code"
            + _LEN(code.co_argcount)
            + _LEN(code.co_posonlyargcount)
            + _LEN(code.co_kwonlyargcount)
            + _LEN(code.co_flags & _FLAGS)
        )
        up(digest((code.co_varnames, code.co_cellvars, code.co_freevars)))
        names: set[str] = set()
        attrs: set[str] = set()
        imports: set[tuple[int, str]] = set()
        for n, ins in enumerate(instructions):
            if ins.opcode in _JUMP_OPS:  # target as an instruction index: offsets shift with NOPs
                arg = b"j" + _LEN(bisect_left(offsets, ins.argval))
            elif ins.opcode in _CONST_OPS:  # the docstring is a constant no instruction loads
                if isinstance(ins.argval, CodeType):
                    inner = self._code_info(ins.argval)
                    names.update(inner.globals)
                    attrs |= inner.attrs
                    imports.update(inner.imports)
                    arg = b"c" + inner.digest
                else:
                    arg = b"k" + digest(ins.argval)
            elif ins.argrepr:  # names, operators ('NULL + print', '+', '<')
                arg = b"r" + ins.argrepr.encode("utf-8", "surrogatepass")
            else:
                arg = b"-" if ins.arg is None else b"a" + _LEN(ins.arg)
            op = ins.opname.encode()
            up(_LEN(len(op)) + op + _LEN(len(arg)) + arg)
            if ins.opname in _GLOBAL_OPS:
                names.add(ins.argval)
            elif ins.opname in _ATTR_OPS:
                attrs.add(ins.argval)
            elif ins.opname == "IMPORT_NAME":
                level = instructions[n - 2].argval if n >= 2 else 0
                imports.add((level if isinstance(level, int) else 0, ins.argval))
        for start, end, target, depth, lasti in _exception_table(code):
            up(b"x" + b"".join(_LEN(bisect_left(offsets, o)) for o in (start, end, target)))
            up(_LEN(depth) + (b"L" if lasti else b"-"))
        info = _CodeInfo(h.digest(), tuple(sorted(names)), frozenset(attrs), tuple(sorted(imports)))
        self._codes[id(code)] = (code, info)
        return info


def _exception_table(code: CodeType) -> list[tuple[int, int, int, int, bool]]:
    """The try/except ranges (3.11+ keep them out of the instruction stream)."""
    parse = getattr(dis, "_parse_exception_table", None)  # private, but stable in 3.11-3.13
    if parse is None:
        return []
    return [(e.start, e.end, e.target, e.depth, e.lasti) for e in parse(code)]


def _absolute(name: str, level: int, package: object) -> str:
    """The module an ``import`` in a function body names (``from . import x`` resolved)."""
    if level <= 0 or not isinstance(package, str):
        return name
    base = package.rsplit(".", level - 1)[0]
    return f"{base}.{name}" if name else base
