"""Fingerprints of task code: what a function does, in 16 bytes.

Design note
-----------
A task's fingerprint stands for its code in its cache key (`digest.task_key`).  It is a BLAKE2b
digest of the function's instructions and of what they read, never of its source text or
line numbers.

Rules for code (`fingerprint`).  A task function's fingerprint does NOT change when you:

- edit its docstring, comments, blank lines, line breaks or annotations, or move it (or a
  helper it calls) to other lines of its file;
- upgrade a library: library and stdlib functions, classes and modules count by name only;
- change a global it does not read, or what it reaches only at run time: files, ``getattr``
  with a computed name, the code of functions stored inside a value (a dict of callbacks
  counts by the callbacks' module + qualname, rule 6 of `digest`).

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
import dis
import functools
import os
import site
import sys
import sysconfig
from bisect import bisect_left
from collections.abc import Callable
from hashlib import blake2b
from types import (
    BuiltinFunctionType,
    ClassMethodDescriptorType,
    CodeType,
    FunctionType,
    MethodDescriptorType,
    MethodType,
    MethodWrapperType,
    ModuleType,
    WrapperDescriptorType,
)
from typing import Any, TypeAlias

from .digest import _LEN, UnhashableError, _name_of, _short, _type_name, digest

__all__ = ["Fingerprinter", "fingerprint"]

#: BLAKE2b personalisation: bumping it (or a new Python minor version) invalidates every key.
_CODE_PERSON = b"taskmap-code1-" + bytes((sys.version_info[0], sys.version_info[1]))
_CODE_HASH = blake2b(digest_size=16, person=_CODE_PERSON)  # to copy: cheaper than a new one

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
#: types of values whose contribution is their digest alone (no code to read): the
#: arguments of most partials, digested without asking where their class lives
_PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex})
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


#: how `_h` frames a plain argument's part (b"value:" and its digest) and b"kw"
_VALUE_PART = _LEN(22) + b"value:"
_KW_PART = _LEN(2) + b"kw"


def _h(*parts: bytes) -> bytes:
    h = _CODE_HASH.copy()
    h.update(b"".join([_LEN(len(part)) + part for part in parts]))
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
    ``dis`` pass, and what a code object's globals and imports contribute by code object and
    globals dict, so 10,000 lambdas of one loop read their globals once; results are cached
    by ``id(func)`` with a reference held, so an id is never reused while cached.  Not
    thread-safe: use one per run, from one thread.  Code is read once: make a new
    `Fingerprinter` after editing code in a live session.
    """

    __slots__ = (
        "_codes",
        "_count",
        "_desc",
        "_done",
        "_heads",
        "_index",
        "_keep",
        "_low",
        "_path",
        "_scopes",
        "_tarjan",
        "_top",
    )

    def __init__(self) -> None:
        self._codes: dict[int, tuple[CodeType, _CodeInfo]] = {}
        # (id(code), id(globals)) -> (code, globals, what its globals and imports contribute),
        # kept only when that is known (no reference to a node still open)
        self._scopes: dict[tuple[int, int], tuple[CodeType, dict[str, Any], list[_Expr]]] = {}
        self._top: dict[int, tuple[object, bytes]] = {}  # id(func) -> (func, fingerprint)
        self._heads: dict[bytes, bytes] = {}  # a partial's function's part, framed
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
        if type(func) is functools.partial:  # one per task: 10,000 of one function
            quick = self._plain_partial(func)
            if quick is not None:  # not memoised: a run asks once per task
                return quick
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
            return self._partial(obj)
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

    def _plain_partial(self, obj: functools.partial[Any]) -> bytes | None:
        """What `_partial` returns for the common partial, without its generality: a
        function fingerprinted before, plain arguments, no keywords; else None.  The
        bytes `_h` would hash, with the function's part framed once per function."""
        func = obj.func
        known = self._top.get(id(func))
        if obj.keywords or known is None or known[0] is not func:
            return None
        head = self._heads.get(known[1])
        if head is None:
            head = self._heads[known[1]] = _LEN(7) + b"partial" + _LEN(16) + known[1]
        h = _CODE_HASH.copy()
        h.update(head)
        for arg in obj.args:
            if type(arg) not in _PLAIN:
                return None
            h.update(_VALUE_PART + digest(arg))
        h.update(_KW_PART)
        return h.digest()

    def _partial(self, obj: functools.partial[Any]) -> _Expr:
        """A partial: its function (fingerprinted once for all its partials) and arguments."""
        func = obj.func
        known = self._top.get(id(func))
        if known is not None and known[0] is func:
            inner: _Expr = known[1]
        else:
            inner = self._callable(func)
            if type(inner) is bytes:  # final (not a member of a cycle still open)
                self._top[id(func)] = (func, inner)
        args = [self._contribution(a, frozenset()) for a in obj.args]
        kwargs = [
            _combine(k.encode(), self._contribution(v, frozenset()))
            for k, v in sorted(obj.keywords.items())
        ]
        return _combine(b"partial", inner, *args, b"kw", *kwargs)

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
        if type(value) in _PLAIN:  # the common partial argument: no class of the user's
            return b"value:" + digest(value)
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
        code = func.__code__
        info = self._code_info(code)
        parts: list[_Expr] = [b"function", info.digest]
        parts += self._scope(code, info, func.__globals__)
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

    def _scope(self, code: CodeType, info: _CodeInfo, namespace: dict[str, Any]) -> list[_Expr]:
        """What the globals and imports a code object reads contribute; computed once per
        code object and globals dict (every lambda of a loop shares both)."""
        memo = self._scopes.get((id(code), id(namespace)))
        if memo is not None and memo[0] is code and memo[1] is namespace:
            return memo[2]
        parts: list[_Expr] = []
        for name in info.globals:
            if name in namespace:  # builtins (len, print) are not: the name in the code is all
                parts += [name.encode(), self._contribution(namespace[name], info.attrs)]
        for level, name in info.imports:
            module = sys.modules.get(_absolute(name, level, namespace.get("__package__")))
            if module is not None:
                parts += [b"import", name.encode(), self._contribution(module, info.attrs)]
        if all(type(p) is bytes for p in parts):  # a part still open may resolve otherwise
            self._scopes[(id(code), id(namespace))] = (code, namespace, parts)
        return parts

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
        h = _CODE_HASH.copy()
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
