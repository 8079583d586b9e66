"""Canonical digests of values, and the cache key built from them.

Design note
-----------
A task's cache key is ``task_key(digest(name), fingerprint(func), [digest(x) for x in inputs])``
(`fingerprint` is in `fingerprint.py`).  Every part is a 16-byte BLAKE2b digest of a
*type-tagged canonical form*, never of pickle bytes, ``id()`` or ``hash()`` (randomised for
``str``): the same value and the same code give the same key in every run, process and machine
running the same Python minor version.

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
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import fractions
import pathlib
import struct
import sys
import uuid
from collections.abc import Callable, Iterable, Sequence
from hashlib import blake2b
from types import (
    BuiltinFunctionType,
    ClassMethodDescriptorType,
    FunctionType,
    MappingProxyType,
    MethodDescriptorType,
    ModuleType,
    WrapperDescriptorType,
)
from typing import Any

from ..errors import TaskmapError

__all__ = ["UnhashableError", "digest", "task_key"]

#: BLAKE2b personalisation strings: bumping one invalidates every key built from it.
_VALUE_PERSON = b"taskmap-value-1"
_KEY_PERSON = b"taskmap-key-1"

_LEN = struct.Struct("<Q").pack
#: fresh hashers to copy: a copy costs half of a construction with a personalisation
_VALUE_HASH = blake2b(digest_size=16, person=_VALUE_PERSON)
_KEY_HASH = blake2b(digest_size=16, person=_KEY_PERSON)
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
    h = _VALUE_HASH.copy()
    if type(value) is str:  # fast path: the same bytes the _str handler feeds
        data = value.encode("utf-8", "surrogatepass")
        h.update(b"s" + _LEN(len(data)) + data)
        return h.digest()
    if type(value) is int:  # fast path (a partial's index): the bytes _int feeds
        data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
        h.update(b"i" + _LEN(len(data)) + data)
        return h.digest()
    try:
        _feed(value, h.update, {})
    except _Unhashable as exc:
        raise exc.public() from None
    return h.digest()


def _sub(value: object, active: _Active) -> bytes:
    """Digest of a part, hashed on its own (dict keys, set elements) in the same recursion."""
    h = _VALUE_HASH.copy()
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
    blob = b"".join((name_digest, code, *inputs))
    if len(name_digest) != 16 or len(code) != 16 or len(blob) != 16 * (len(inputs) + 2):
        sizes = [len(name_digest), len(code), *map(len, inputs)]
        raise ValueError(f"task_key needs 16-byte digests (got sizes {sizes})")
    h = _KEY_HASH.copy()
    h.update(blob)
    return h.hexdigest()
