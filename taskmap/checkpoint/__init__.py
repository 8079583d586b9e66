"""Checkpointing: the cache a graph carries, and what one run does with it.

Design note
-----------
A task's value is stored under a *content-addressed key*: a digest of the task's
name, its code fingerprint (or the ``version`` given for it) and the digests of the
inputs it actually received (see `digest` and `fingerprint`).  Consequences:

1. **A rerun of unchanged work calls nothing.**  Every key is found; values are
   loaded into ``graph.results``.
2. **A change recomputes what it reaches, and stops where outputs do not change**
   (early cutoff): a child's key depends on its parents' *output* digests, so a
   recomputed parent that returns the same value leaves its children cached.
3. **Failures are never stored**, nor skipped tasks: a rerun after a fix runs
   exactly the failed tasks and their descendants, in any later process.
4. **The driver never waits for storage.**  Entries are encoded when a task
   finishes and handed to one writer thread, which commits them in batches; the
   run waits for it only at its end (and on Ctrl-C, so finished work is kept).
5. **The cache never fails a run.**  An entry that cannot be read (torn, corrupt,
   written by an incompatible version) is a miss with a `CacheWarning`; a value
   that cannot be encoded, or a store that refuses a write, is a warning too.

Data flow for one task (driver thread, then writer thread)::

    ready ─► key = H(name, code, input digests) ─► store.get ─► hit: value, out digest
                                                      │
                                                      └─► miss: run ─► encode ─► writer ─► store

Beside its entries, each task has a small ``'<token>/last'`` record (the key,
code and inputs of its last run, and whether it failed) that explains the next
miss: code changed, input changed, failed before.

For years of daily runs (issue 14):

6. **A run touches only its own tasks' keys.**  At its first miss it asks the store
   for the keys under its tasks' prefixes (`store.keys_under_many`; a store that
   cannot answer that is asked key by key), never for a listing of the store.
7. **Use is recorded with the writes.**  The keys a run read go to the writer with
   its entries, in the same transaction (at the run's end for a fully cached one);
   with ``cache_limit`` the store is then trimmed, least recently used first.
8. **With a secret, only signed entries are decoded.**  Each entry is signed
   (HMAC-SHA256 of its key and bytes) when stored; a lookup checks the tag before
   anything is unpickled, and an entry without a valid one is a miss with a warning.
9. **A call knows its key's directory.**  `CacheRun.context` (a call in this
   process) and `CacheRun.wire` (a call elsewhere) give each call of a task the
   `taskdir.Call` that `taskmap.task_directory` answers from, and open its capture
   files when its output is captured; they close when its outcome is recorded.

For graphs that grow (issue 15):

10. **An instance is keyed by its own item.**  An instance ``(task, i)`` of an
    expanded task uses its task's code, settings and key prefix (`CacheRun.tasks`);
    the digest of its item takes the place of the listing's among its inputs
    (`CacheRun.items`), so a listing that grows reruns only its new items.  A failed
    instance also writes ``'<its key>/last'``, which tells "failed before" apart
    from a new item, and which its next success deletes.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import enum
import functools
import hashlib
import json
import math
import operator
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

from .. import taskdir
from ..errors import CacheWarning, with_article
from .digest import UnhashableError, digest, task_key
from .encoders import (
    ENCODERS,
    CorruptEntryError,
    Encoder,
    PickleEncoder,
    pack_entry,
    signer,
    unpack_entry,
)
from .fingerprint import Fingerprinter
from .store import (
    ChainStore,
    DirectoryStore,
    Stat,
    Store,
    commit,
    delete,
    dir_tokens,
    dirs_under,
    drop_dirs,
    drop_task_dirs,
    keys_under,
    keys_under_many,
    open_store,
    parse_duration,
    parse_size,
    prune,
    quiet_gc,
    release,
    stat_under,
    task_dirs,
    trim,
    trim_listed,
)
from .store import close as close_store

__all__ = [
    "CacheEntry",
    "CacheRun",
    "CacheStats",
    "ChainStore",
    "Checkpoint",
    "DirectoryStore",
    "Encoder",
    "Explanation",
    "Reason",
    "Store",
    "WriteMode",
    "encode_result",
    "open_store",
]

Task = Hashable
WriteMode = Literal["exit", "end", "manual"] | float
_DEFAULT_ENCODER = ENCODERS["pickle"]
_UNKNOWN = b"?"  # a digest not computed yet
_NO_HEAD = (None, None, None)  # what meta keeps of a `last` record's (absent) header
_UNHASHABLE = b""  # a value with no canonical digest: its children are never cached
_NONE_DIGEST = digest(None)


class _NotLoaded:
    """The value of a cached task in a dry run (`explain`): stored, not decoded."""

    def __repr__(self) -> str:
        return "NOT_LOADED"


NOT_LOADED: Any = _NotLoaded()


class Reason(enum.Enum):
    """Why a task runs, or why it does not."""

    CACHED = "cached"
    NO_ENTRY = "no entry"
    CODE_CHANGED = "code changed"
    INPUT_CHANGED = "input changed"
    FAILED_BEFORE = "failed before"
    RESET = "reset by the user"
    UNREADABLE = "entry unreadable"
    UNSIGNED = "entry not signed with this cache's secret"
    UPSTREAM = "an upstream task runs"
    UPSTREAM_FAILED = "an upstream task failed"
    NOT_CACHED = "not cached"
    DONE = "already done"

    def __repr__(self) -> str:
        return f"Reason.{self.name}"


class Explanation(NamedTuple):
    """Why ``task`` runs (``runs``) or not: the ``reason`` and, when useful, a ``detail``.

    An immutable record, a NamedTuple rather than a frozen dataclass: a cached rerun
    makes one per task, and this is three times cheaper to build.
    """

    task: Task
    runs: bool
    reason: Reason
    detail: str = ""

    def __str__(self) -> str:
        verb = "runs" if self.runs else "does not run"
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.task!r} {verb}: {self.reason.value}{detail}"


@dataclass(slots=True)
class CacheStats:
    """What a run did with the cache."""

    hits: int = 0
    misses: int = 0
    stored: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    warnings: int = 0


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One stored value: its task, key, size in bytes, when it was written, its encoder,
    and when a run last used it (wrote or read it; seconds since the epoch, as
    ``written``).  A store that records no use (a dict, an fsspec mapper) gives the
    time it was written.

    ``directory``: the entry's task directory (`taskmap.task_directory`), when the
    call that stored it made one; ``output``: the files its captured stdout and
    stderr went to (``capture_output``), those that exist."""

    task: str
    key: str
    size: int
    written: float
    encoder: str
    used: float = 0.0
    directory: Path | None = None
    output: tuple[Path, ...] = ()


class Checkpoint:
    """A graph's cache: its store and settings, per task by name.

    Args:
        store: a `Store` (``MutableMapping[str, bytes]``).
        write: ``'exit'`` writes each value as its task finishes (the default);
            a number of seconds writes periodically; ``'end'`` at the end of the
            run; ``'manual'`` when `save_cache` is called.
        uncached: tasks whose values are never stored (connections, clients).
        versions: task -> a version string that replaces its code fingerprint.
        encoders: task -> an `Encoder`, or ``'pickle'`` / ``'json'``.
        limit: bytes the store may hold after a run (an int, or ``'20GB'``...);
            None: no limit.
        secret: entries are signed with it, and only entries signed with it are
            decoded (str or bytes); None: entries are neither signed nor checked.
        capture: tasks whose stdout and stderr also go to files in their task
            directory (`taskmap.task_directory`).
    """

    def __init__(
        self,
        store: Store,
        *,
        write: WriteMode = "exit",
        uncached: Iterable[Task] = (),
        versions: Mapping[Task, object] | None = None,
        encoders: Mapping[Task, Encoder | str] | None = None,
        limit: int | str | None = None,
        secret: str | bytes | None = None,
        capture: Iterable[Task] = (),
    ) -> None:
        self.store = store
        #: where the task directories live (None: the store is not a local directory)
        self.dirs = task_dirs(store)
        self.capture = frozenset(capture)
        self.write = _write_mode(write)
        self.limit = None if limit is None else parse_size("cache_limit", limit)
        self.secret = _secret_bytes("cache_secret", secret)
        self.uncached = frozenset(uncached)
        self.versions = {t: _version_code(t, v) for t, v in (versions or {}).items()}
        self.encoders = {t: _encoder(t, e) for t, e in (encoders or {}).items()}
        self.decoders: dict[str, Encoder] = {**ENCODERS}
        for encoder in self.encoders.values():
            self.decoders.setdefault(encoder.name, encoder)
        self.pending: list[tuple[str, bytes | None]] = []  # held by write='manual'
        self.reset: set[Task] = set()  # reset by the user since the last run
        self._tokens: dict[Task, tuple[str, bytes]] = {}

    def __repr__(self) -> str:  # never the secret
        limit = "" if self.limit is None else f" limit={self.limit}"
        signed = " signed" if self.secret is not None else ""
        return f"<Checkpoint {self.store!r} write={self.write!r}{limit}{signed}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # The secret travels with a pickled graph: a restored graph that lost it would
        # decode entries anyone could have written.
        settings = {
            "write": self.write,
            "uncached": self.uncached,
            "versions": {t: v.hex() for t, v in self.versions.items()},
            "encoders": self.encoders,
            "limit": self.limit,
            "secret": self.secret,
            "capture": self.capture,
        }
        return (_restore, (self.store, settings))

    def token(self, task: Task) -> str:
        """The key prefix of a task's entries: its name made safe, and a digest of it."""
        return self.named(task)[0]

    def named(self, task: Task) -> tuple[str, bytes]:
        """The task's `token` and the digest of its name (a part of each of its keys)."""
        named = self._tokens.get(task)
        if named is None:
            if type(task) is str and task.isidentifier() and len(task) <= 48:
                safe = task  # the common case, without a regex
            else:
                safe = _UNSAFE.sub("_", str(task))[:48]
            name = _name_digest(task)
            named = self._tokens[task] = (f"{safe}-{name[:5].hex()}", name)
        return named

    def open_run(
        self,
        names: Sequence[Task],
        parents: Sequence[Sequence[int]],
        funcs: Mapping[Task, Callable[..., Any]],
        results: Mapping[Task, Any],
    ) -> CacheRun:
        """Start using the cache for one run (call `CacheRun.close` at its end)."""
        return CacheRun(self, names, parents, funcs, results)

    def forget(self, tasks: Iterable[Task], *, reset: bool = True) -> int:
        """Drop every stored entry of ``tasks``.

        ``reset``: the user reset them (`reset_tasks`): the next run says so, and
        their ``last`` records stay to tell a failure from a reset.  Otherwise
        (`clear_cache`) the records go too.  Returns the number of values dropped
        (records are not counted).
        """
        tasks = list(tasks)
        prefixes = tuple(f"{self.token(t)}/" for t in tasks)
        self.pending = [p for p in self.pending if not p[0].startswith(prefixes)]
        keys = [key for prefix in prefixes for key in keys_under(self.store, prefix)]
        if reset:
            self.reset.update(tasks)
            keys = [key for key in keys if not _is_record(key)]
        else:
            self.reset.difference_update(tasks)
        values = sum(1 for key in keys if not _is_record(key))
        delete(self.store, keys)
        # the directories of every call, also those that stored nothing (a failure)
        drop_task_dirs(self.dirs, [prefix[:-1] for prefix in prefixes])
        return values

    def save(self, tasks: Sequence[Task] = ()) -> int:
        """Write the entries held by ``write='manual'``, then trim to the limit (on a
        plain mapping, among the entries of ``tasks``); return how many were written."""
        pending, self.pending = self.pending, []
        _apply(self.store, pending)
        if self.limit is not None and pending:
            self.trim(self.limit, tasks)
        return _entries(pending)

    def entries(self, tasks: Iterable[Task] | None = None) -> list[CacheEntry]:
        """The stored entries, of ``tasks`` only when given, sorted by task then key.

        Reads heads only: the default store keeps them beside the values."""
        prefixes = [""] if tasks is None else [f"{self.token(t)}/" for t in tasks]
        with quiet_gc():
            found = _entries_of(stat_under(self.store, prefixes))
            if self.dirs is not None and dir_tokens(self.dirs):
                found = self._with_dirs(found, prefixes)
            found.sort(key=_by_task)
        return found

    def _with_dirs(self, found: list[CacheEntry], prefixes: Sequence[str]) -> list[CacheEntry]:
        """``found`` with their task directories and captured output files."""
        tokens = {p[:-1] for p in prefixes} if "" not in prefixes else dir_tokens(self.dirs)
        dirs = dirs_under(self.dirs, tokens)
        if not dirs:
            return found
        out = []
        for entry in found:
            path = dirs.get(entry.key)
            if path is not None:
                files = tuple(
                    f for f in (path / taskdir.STDOUT, path / taskdir.STDERR) if f.is_file()
                )
                entry = dataclasses.replace(entry, directory=path, output=files)
            out.append(entry)
        return out

    def prune(
        self,
        tasks: Sequence[Task],
        *,
        keep_last: int | None = 1,
        older_than: object = None,
        max_bytes: int | str | None = None,
    ) -> list[CacheEntry]:
        """Drop entries of ``tasks`` beyond each one's ``keep_last`` most recently used,
        or last used more than ``older_than`` ago; then trim to ``max_bytes`` (see
        `trim`).  Returns what was dropped, sorted by task then key."""
        age, size = prune_options(keep_last, older_than, max_bytes)
        prefixes = [f"{self.token(t)}/" for t in tasks]
        with quiet_gc():
            found = _entries_of(prune(self.store, prefixes, keep_last=keep_last, older_than=age))
            if size is not None:
                found += self.trim(size, tasks)
            self._drop_orphan_dirs(prefixes)
            found.sort(key=_by_task)
        return found

    def _drop_orphan_dirs(self, prefixes: Sequence[str]) -> None:
        """Remove the task directories of calls that stored no entry (they failed),
        unless changed within `ORPHAN_AGE` seconds: such a call may be running now."""
        if self.dirs is None or not dir_tokens(self.dirs):
            return
        dirs = dirs_under(self.dirs, [p[:-1] for p in prefixes])
        if not dirs:
            return
        stored = keys_under_many(self.store, [f"{key.partition('/')[0]}/" for key in dirs])
        if stored is None:
            stored = {key for key in dirs if key in self.store}
        now = time.time()
        orphans = []
        for key, path in dirs.items():
            if key not in stored:
                with contextlib.suppress(OSError):
                    if now - path.stat().st_mtime > ORPHAN_AGE:
                        orphans.append(key)
        drop_dirs(self.dirs, orphans)

    def trim(self, max_bytes: int, tasks: Sequence[Task]) -> list[CacheEntry]:
        """Drop least-recently-used entries until the store holds at most ``max_bytes``:
        of every graph sharing it where the store records use (the default store; the
        first of a chain), else of ``tasks`` only, oldest written first."""
        dropped = trim(self.store, max_bytes)
        if dropped is None:
            prefixes = [f"{self.token(t)}/" for t in tasks]
            dropped = trim_listed(self.store, prefixes, max_bytes)
        return [_entry(stat) for stat in dropped]


def prune_options(
    keep_last: object, older_than: object, max_bytes: object
) -> tuple[float | None, int | None]:
    """Check `Checkpoint.prune`'s options; return ``older_than`` in seconds and
    ``max_bytes`` in bytes (None where not given).

    Raises:
        ValueError: an option is not what `taskmap.prune_cache` documents.
    """
    if keep_last is not None and (
        isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0
    ):
        raise ValueError(f"keep_last must be None or an int >= 0 (got {keep_last!r})")
    age = None if older_than is None else parse_duration("older_than", older_than)
    size = None if max_bytes is None else parse_size("max_bytes", max_bytes)
    return age, size


def _entries_of(stats: Iterable[Stat]) -> list[CacheEntry]:
    """The listing's records of ``stats`` (``last`` records left out)."""
    return [  # `_entry`, inlined: a listing of 100,000 entries makes 100,000 records
        CacheEntry(
            key.partition("/")[0] if task is None else task,
            key,
            size,
            written or 0.0,
            encoder or "?",
            (written or 0.0) if used is None else used,
        )
        for key, size, used, task, written, encoder in stats
        if not key.endswith("/last")
    ]


def _entry(stat: Stat) -> CacheEntry:
    """A listing's record of an entry (the task named by its key's prefix when its
    header is missing or damaged)."""
    key, size, used, task, written, encoder = stat
    if written is None:
        written = 0.0
    if task is None:
        task = key.partition("/")[0]
    return CacheEntry(task, key, size, written, encoder or "?", written if used is None else used)


#: sort key of listings: by task, then key
_by_task = operator.attrgetter("task", "key")


class CacheRun:
    """What one run does with the cache: look tasks up, store what ran, explain.

    Call from the driver's thread only; storage happens on a writer thread.
    """

    #: entries a wave's prefetch reads first, to tell a cold run from a rerun
    PROBE = 64

    def __init__(
        self,
        checkpoint: Checkpoint,
        names: Sequence[Task],
        parents: Sequence[Sequence[int]],
        funcs: Mapping[Task, Callable[..., Any]],
        results: Mapping[Task, Any],
    ) -> None:
        self.checkpoint = checkpoint
        self.store = checkpoint.store
        self.names, self.parents, self.funcs, self.results = names, parents, funcs, results
        n = len(names)
        self.digests: list[bytes] = [_UNKNOWN] * n
        self.keys: list[str | None] = [None] * n
        self.inputs: list[tuple[bytes, tuple[bytes, ...]] | None] = [None] * n
        self._why: dict[Task, Explanation] = {}
        #: tasks served from the cache, not explained in ``why`` yet: during the run a
        #: hit makes no object the collector tracks (they add up on a large rerun)
        self._hits: list[Task] = []
        self.stats = CacheStats()
        #: the keys under this run's tasks' prefixes, after a first miss (rule 6), for the
        #: first ``listed`` tasks (a graph may grow); None: not asked, or the store cannot say
        self.present: set[str] | None = None
        self.listed = -1
        self.used: list[str] = []  # keys read: their use is recorded at the end (rule 7)
        self.signer = None if checkpoint.secret is None else signer(checkpoint.secret)
        self.asked: set[int] = set()  # tasks whose entries were prefetched (or tried)
        self.fetched: dict[str, bytes] = {}  # prefetched entries not looked up yet
        self.absent: set[str] = set()  # keys prefetch did not find
        # prefetch while lookups hit; a cold run (misses) would only pay for the scans
        self.batching = True
        self.fingerprint = Fingerprinter()
        self.writer = _Writer(self.store, checkpoint.write)
        #: id(encoder) -> the `encode_result` partial shipped to workers (once each)
        self.shipped: dict[int, Callable[[Any], Encoded]] = {}
        # rule 9: task directories
        self.dirs = checkpoint.dirs
        self.dir_tokens: set[str] | None = None  # tokens with directories (at a first call)
        self.called: set[int] = set()  # tasks called in this run: a retry empties
        self.calls: dict[int, taskdir.Call] = {}  # calls capturing here, until their outcome
        self.teeing = False  # the Tee proxies are installed for this run
        #: per task id, the task whose code, settings and key prefix it uses: an
        #: instance of an expanded task uses its task's (``names`` when none)
        self.tasks: Sequence[Task] = names
        #: instance id -> (the dependency it is expanded over, its own item): the
        #: item's digest takes that dependency's place in the instance's key
        self.items: Mapping[int, tuple[int, Any]] = {}
        #: instances whose own failure record (``'<key>/last'``) this run found
        self.refailed: set[int] = set()

    @property
    def why(self) -> dict[Task, Explanation]:
        """Why each task looked at so far runs or not, in the order they were."""
        why = self._why
        if self._hits:
            cached = Reason.CACHED
            for name in self._hits:
                why[name] = Explanation(name, False, cached)
            self._hits.clear()
        return why

    def grow(self, tasks: int) -> None:
        """Make room for ``tasks`` more task ids (instances; ``names`` grew)."""
        self.digests.extend([_UNKNOWN] * tasks)
        self.keys.extend([None] * tasks)
        self.inputs.extend([None] * tasks)

    # -- calls: task directories and captured output (rule 9) ----------------

    def context(self, tid: int) -> contextvars.Context:
        """The context to call the task in, in this process (its output captured
        from now on, when it is in ``capture_output``).  Call at each attempt."""
        call = self._call(tid)
        if call.capture and call.path is not None:
            previous = self.calls.pop(tid, None)
            if previous is not None:
                previous.close()
            try:
                call.open()
            except OSError as exc:  # a cache never fails a run
                self._warn(f"task {call.task!r}: output not captured: {exc!r}")
            else:
                if not self.teeing:
                    taskdir.begin_capture()
                    self.teeing = True
                self.calls[tid] = call
        return taskdir.context(call)

    def wire(self, tid: int) -> tuple[object, str | None, bool, str]:
        """What a call elsewhere (a worker process) needs to know of its directory."""
        return self._call(tid).wire()

    def _call(self, tid: int) -> taskdir.Call:
        name, task = self.names[tid], self.tasks[tid]  # an instance: its task's settings
        key = self.keys[tid]
        if key is None:
            key = self._key(tid)
        root = self.dirs
        if root is None:
            return taskdir.Call(
                name,
                None,
                why=f"the graph's cache, {_describe(self.store)}, is not a directory on this "
                "machine: task directories live beside the entries of cache='<directory>'",
            )
        if not key:
            if task in self.checkpoint.uncached:
                why = "the task is in uncached=, so it has no cache key and no directory"
            else:
                explained = self.why.get(name)
                detail = f": {explained.detail}" if explained and explained.detail else ""
                why = f"the task has no cache key{detail}, so no directory of its own"
            return taskdir.Call(name, None, why=why)
        path = f"{root}/{key}"
        tokens = self.dir_tokens
        if tokens is None:
            tokens = self.dir_tokens = dir_tokens(root)
        if tid in self.called or (tokens and key[: key.index("/")] in tokens):
            taskdir.clear(path)  # left by an earlier call of this key (rule 2 of taskdir)
        self.called.add(tid)
        return taskdir.Call(name, path, task in self.checkpoint.capture)

    def _end_call(self, tid: int) -> None:
        call = self.calls.pop(tid, None)
        if call is not None:
            call.close()

    # -- looking up ----------------------------------------------------------

    def lookup(self, tid: int, *, load: bool = True) -> tuple[bool, Any]:
        """``(True, value)`` when the task's entry is stored, else ``(False, None)``.

        Call when the task is ready, before its parents' results may be dropped.
        ``load=False`` (a dry run) checks the entry but does not decode its value:
        the value returned is `NOT_LOADED`, or None when the stored value is None.
        """
        name = self.names[tid]
        key = self.keys[tid]
        if key is None:
            key = self._key(tid)
        if not key:
            return False, None
        if key in self.fetched:
            data = self.fetched.pop(key)
        elif key in self.absent or self._absent(tid, key):
            data = None
        else:
            data = self._get(key)
        if data is None and self.listed < 0:
            self._list_keys()
        if data is not None:
            if self.signer is not None and not self.signer.verify(key, data):
                # rule 8: never decoded, so never unpickled
                self._warn(
                    f"task {name!r}: entry not signed with this cache's secret, running it again"
                )
                return self._miss(tid, Reason.UNSIGNED)
            try:
                signed = self.signer is not None  # its tag held: no CRC to compute
                value, out = self._decode(data, signed) if load else self._peek(data)
            except Exception as exc:  # torn, corrupt, or written by another version
                self._warn(f"task {name!r}: cached entry unreadable, running it again: {exc}")
                return self._miss(tid, Reason.UNREADABLE, str(exc))
            self.digests[tid] = out
            self.batching = True
            self.used.append(key)
            self.stats.hits += 1
            self.stats.bytes_read += len(data)
            self._hits.append(name)
            return True, value
        return self._miss(tid, *self._reason(tid))

    def _miss(self, tid: int, reason: Reason, detail: str = "") -> tuple[bool, Any]:
        self.batching = False
        self.stats.misses += 1
        name = self.names[tid]
        self.why[name] = Explanation(name, True, reason, detail)
        return False, None

    def prefetch(self, tids: Iterable[int]) -> None:
        """Read the entries of several READY tasks in one query, when the store has
        ``get_many`` (the default store: one SELECT for a whole wave of a rerun).

        A large wave is probed first: when none of its first `PROBE` entries is
        stored (a cold run), the rest are not read but left to the first miss's
        listing of the run's keys (rule 6), which costs less than reading them."""
        get_many = getattr(self.store, "get_many", None)
        keys, asked = [], []
        for tid in tids:
            if tid in self.asked:
                continue
            self.asked.add(tid)
            key = self.keys[tid]
            if key is None:
                key = self._key(tid)
            if key and not self._absent(tid, key):
                keys.append(key)
                asked.append(tid)
        if get_many is None or len(keys) < 2:
            return
        try:
            found = get_many(keys[: self.PROBE])
            if found and len(keys) > self.PROBE:
                found.update(get_many(keys[self.PROBE :]))
        except Exception as exc:
            self._warn(
                f"cache store {_describe(self.store)} could not be read ({exc!r}); the tasks run"
            )
            return
        if not found:  # the probe found nothing: the others are looked up when ready
            self.asked.difference_update(asked[self.PROBE :])
            keys = keys[: self.PROBE]
        self.fetched.update(found)
        self.absent.update(key for key in keys if key not in found)

    def _key(self, tid: int) -> str:
        """The task's store key, or '' (and the reason recorded) when it has none."""
        name = self.names[tid]
        task = self.tasks[tid]
        checkpoint = self.checkpoint
        self.keys[tid] = ""
        if task in checkpoint.uncached:
            self.why[name] = Explanation(name, True, Reason.NOT_CACHED, "opted out")
            return ""
        inputs: tuple[bytes, ...] | None = self._inputs(tid, name) if self.parents[tid] else ()
        if inputs is None:
            return ""
        code = checkpoint.versions.get(task)
        if code is None:
            try:
                code = self.fingerprint(self.funcs[task])
            except Exception as exc:  # a bug of ours must not fail the run
                self._warn(f"task {name!r}: not cached, its code has no fingerprint: {exc!r}")
                self.why[name] = Explanation(name, True, Reason.NOT_CACHED, repr(exc))
                return ""
        token, name_digest = checkpoint.named(task)
        key = f"{token}/{task_key(name_digest, code, inputs)}"
        self.keys[tid] = key
        self.inputs[tid] = (code, inputs)  # tuples of bytes: the collector stops tracking them
        return key

    def _inputs(self, tid: int, name: Task) -> tuple[bytes, ...] | None:
        """The digests of the task's inputs, or None (the reason recorded) when one has none."""
        inputs = []
        names, digests, get = self.names, self.digests, self.results.get
        item = self.items.get(tid) if self.items else None
        for p in self.parents[tid]:
            if item is not None and p == item[0]:  # an instance's own item
                d = _digest_or_empty(item[1])
                if not d:
                    detail = f"its item ({type(item[1]).__name__}) has no digest"
                    self.why[name] = Explanation(name, True, Reason.NOT_CACHED, detail)
                    return None
                inputs.append(d)
                continue
            value = get(names[p])
            if value is None:
                continue  # not passed, so not an input
            d = digests[p]
            if d is _UNKNOWN:
                d = digests[p] = _digest_or_empty(value)
            if not d:
                detail = f"the result of {names[p]!r} ({type(value).__name__}) has no digest"
                self.why[name] = Explanation(name, True, Reason.NOT_CACHED, detail)
                return None
            inputs.append(d)
        return tuple(inputs)

    def _get(self, key: str) -> bytes | None:
        try:
            return self.store.get(key)
        except Exception as exc:
            self._warn(
                f"cache store {_describe(self.store)} could not be read ({exc!r}); the task runs"
            )
            return None

    def _absent(self, tid: int, key: str) -> bool:
        """Whether the first miss's listing says ``key`` is not stored."""
        present = self.present  # an instance's keys are under its task's prefix
        return (
            present is not None
            and (tid < self.listed or self.tasks is not self.names)
            and key not in present
        )

    def _list_keys(self) -> None:
        """Remember the keys of this run's tasks (rule 6): later misses cost a set
        lookup, not a read.  One query on the default store; never a listing of it."""
        names = self.names if self.tasks is self.names else list(dict.fromkeys(self.tasks))
        self.listed = len(self.names)
        token = self.checkpoint.token
        try:
            self.present = keys_under_many(self.store, [f"{token(n)}/" for n in names])
        except Exception as exc:
            self._warn(f"cache store {_describe(self.store)} could not be listed ({exc!r})")
            self.present = None

    def _decode(self, data: bytes, verified: bool = False) -> tuple[Any, bytes]:
        name, out, payload = unpack_entry(data, verified=verified)
        encoder = self.checkpoint.decoders.get(name)
        if encoder is None:
            raise CorruptEntryError(f"written with unknown encoder {name!r}")
        if type(encoder) is PickleEncoder:
            value = encoder.decode(payload)  # type: ignore[arg-type]
        else:
            value = encoder.decode(bytes(payload))
        return value, out

    def _peek(self, data: bytes) -> tuple[Any, bytes]:
        name, out, _ = unpack_entry(data)
        if name not in self.checkpoint.decoders:
            raise CorruptEntryError(f"written with unknown encoder {name!r}")
        return (None if out == _NONE_DIGEST else NOT_LOADED), out

    def _reason(self, tid: int) -> tuple[Reason, str]:
        if self.names[tid] != self.tasks[tid]:  # an instance: its task's record is shared
            return self._instance_reason(tid)
        last = self._last(tid)
        if last is not None and last.get("failed"):
            return Reason.FAILED_BEFORE, str(last["failed"])
        if self.tasks[tid] in self.checkpoint.reset:
            return Reason.RESET, ""
        if last is None:
            return Reason.NO_ENTRY, ""
        entry = self.inputs[tid]
        assert entry is not None
        code, inputs = entry
        if last.get("code") != code.hex():
            return Reason.CODE_CHANGED, ""
        if last.get("in") != [d.hex() for d in inputs]:
            changed = self._changed_inputs(tid, last.get("in"))
            return Reason.INPUT_CHANGED, changed
        return Reason.NO_ENTRY, "its entry was removed"

    def _instance_reason(self, tid: int) -> tuple[Reason, str]:
        """Why an instance misses: its own failure record (keyed by its entry key: this
        code, this item) says it failed before; else its task's record tells a change
        of code; else its item has no entry."""
        key = self.keys[tid]
        assert key
        record = f"{key}/last"
        own = None
        if not self._absent(tid, record):
            try:
                data = self.store.get(record)
                own = None if data is None else _parse_last(data)
            except Exception:
                own = None
        if own is not None and own.get("failed"):
            self.refailed.add(tid)
            return Reason.FAILED_BEFORE, str(own["failed"])
        if self.tasks[tid] in self.checkpoint.reset:
            return Reason.RESET, ""
        last = self._last(tid)
        entry = self.inputs[tid]
        assert entry is not None
        if last is not None and last.get("code") != entry[0].hex():
            return Reason.CODE_CHANGED, ""
        return Reason.NO_ENTRY, "no entry for its item"

    def _changed_inputs(self, tid: int, before: object) -> str:
        if not isinstance(before, list):
            return ""
        now = [
            (self.names[p], self.digests[p].hex())
            for p in self.parents[tid]
            if self.results.get(self.names[p]) is not None
        ]
        if len(now) != len(before):
            return "a different number of inputs"
        changed = [name for (name, d), b in zip(now, before, strict=True) if d != b]
        return "from " + ", ".join(map(repr, changed))

    def _last(self, tid: int) -> dict[str, Any] | None:
        key = f"{self.checkpoint.token(self.tasks[tid])}/last"
        if self._absent(tid, key):
            return None
        try:
            data = self.store.get(key)
            return None if data is None else _parse_last(data)
        except Exception:
            return None

    # -- storing -------------------------------------------------------------

    def encoder_for(self, tid: int) -> Callable[[Any], Encoded] | None:
        """What computes the task's digest and entry where its value is made (a worker
        process: in parallel, off the driver), or None when nothing will be stored."""
        if not self.keys[tid]:
            return None
        encoder = self.checkpoint.encoders.get(self.tasks[tid], _DEFAULT_ENCODER)
        shipped = self.shipped.get(id(encoder))
        if shipped is None:
            shipped = self.shipped[id(encoder)] = functools.partial(encode_result, encoder)
        return shipped

    def stored(self, tid: int, value: Any, encoded: Encoded | None = None) -> None:
        """Store a task's value (it ran and returned).  Encodes now, writes later.

        ``encoded``: what `encoder_for`'s function returned in the worker (then the
        value is not read here: it may be a `Shared` handle the driver never loads).
        """
        if self.calls:
            self._end_call(tid)
        key = self.keys[tid]
        if not key:
            return
        name = self.names[tid]
        encoder = self.checkpoint.encoders.get(self.tasks[tid], _DEFAULT_ENCODER)
        out, payload, why = encode_result(encoder, value) if encoded is None else encoded
        self.digests[tid] = out
        if payload is None:
            self._warn(f"task {name!r}: result not cached: {encoder.name} cannot encode {why}")
            return
        code, inputs = self.inputs[tid]  # type: ignore[misc]
        code_hex, digests = code.hex(), [d.hex() for d in inputs]
        listed = ",".join([f'"{d}"' for d in digests])  # hex: nothing to escape
        written, task = time.time(), self.tasks[tid]
        meta = (  # the header's JSON members, built directly: this is the hot path
            f'"code":"{code_hex}","in":[{listed}],"task":{_label_json(task)},"t":{written!r}'
        )
        data = pack_entry(payload, encoder.name, out, meta)
        if self.signer is not None:
            data = self.signer.sign(key, data)
        self.stats.stored += 1
        self.stats.bytes_written += len(data)
        last = _last_record(key, code_hex, digests)
        # what the store's meta table keeps of the header: known here, not parsed there
        record = _record_key(key)
        heads = self.writer.heads
        heads[key], heads[record] = (_label(task)[:200], written, encoder.name), _NO_HEAD
        self.writer.put([(key, data), (record, last)])
        if self.refailed and tid in self.refailed:  # it failed before: not any more
            self.writer.put([(f"{key}/last", None)])

    def failed(self, tid: int, error: BaseException) -> None:
        """Remember that the task failed (nothing is stored for it)."""
        if self.calls:
            self._end_call(tid)
        key = self.keys[tid]
        entry = self.inputs[tid]
        if not key or entry is None:
            return
        code, inputs = entry
        failed = f"{type(error).__name__}: {error}"[:200]
        last = _last_record(key, code.hex(), [d.hex() for d in inputs], failed)
        self.writer.put([(_record_key(key), last)])
        if self.names[tid] != self.tasks[tid]:  # an instance: a record of its own too
            self.writer.put([(f"{key}/last", last)])

    def close(self, *, write: bool = True) -> None:
        """Write what is due (everything but ``write='manual'`` entries) and stop the writer.

        ``write=False`` ends a dry run (`explain`): nothing was stored, nothing is reset,
        no use is recorded.  With a limit, the store is trimmed (rule 7).
        """
        for call in self.calls.values():  # cancelled, interrupted
            call.close()
        self.calls.clear()
        if self.teeing:
            self.teeing = False
            taskdir.end_capture()
        try:
            held = self.writer.close(self.used if write else [])
            if write and self.checkpoint.limit is not None:
                self._trim(self.checkpoint.limit)
        finally:
            close_store(self.store)  # rule 5 of the store: no connection outlives the run
        if not write:
            return
        self.checkpoint.pending.extend(held)
        self.checkpoint.reset.clear()
        for message in self.writer.errors:
            self._warn(message)

    def _trim(self, limit: int) -> None:
        try:
            self.checkpoint.trim(limit, list(dict.fromkeys(self.tasks)))
        except Exception as exc:  # a cache never fails a run
            self.writer.errors.append(
                f"cache store {_describe(self.store)} could not be trimmed to "
                f"{limit:,} bytes: {exc!r}"
            )

    def _warn(self, message: str) -> None:
        self.stats.warnings += 1
        warnings.warn(message, CacheWarning, stacklevel=2)


class _Writer:
    """The writer thread: commits batches of ``(key, bytes or None to delete)``.

    The driver only appends to ``held``.  In ``'exit'`` mode the first entry of a
    batch wakes the thread, which lingers `LINGER` seconds to gather the entries of
    the tasks finishing meanwhile, then commits them in one transaction: a
    finished value is stored within about that time, and the driver's loop is not
    interrupted once per task.  With a number of seconds it lingers that long;
    ``'end'`` and ``'manual'`` start no thread (`close` writes, or hands back).
    """

    LINGER = 0.05

    def __init__(self, store: Store, mode: WriteMode) -> None:
        self.store = store
        self.mode = mode
        self.held: list[tuple[str, bytes | None]] = []
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.closing = threading.Event()
        self.errors: list[str] = []  # warned from the driver's thread, at close
        #: key -> (task, time written, encoder) of the entries put, until written
        self.heads: dict[str, tuple[str | None, float | None, str | None]] = {}
        self.linger = mode if isinstance(mode, float) else self.LINGER
        self.threaded = mode not in ("end", "manual")
        self.thread: threading.Thread | None = None

    def put(self, items: list[tuple[str, bytes | None]]) -> None:
        with self.lock:
            first = not self.held
            self.held.extend(items)
            if first and self.threaded:
                self.wake.set()
        if self.thread is None and self.threaded:
            self.thread = threading.Thread(target=self._loop, name="taskmap-cache", daemon=True)
            self.thread.start()

    def close(self, used: Sequence[str] = ()) -> list[tuple[str, bytes | None]]:
        """Write what is due with the uses of ``used`` keys (one transaction), stop the
        thread; return what ``'manual'`` still holds."""
        if self.thread is not None:
            with self.lock:  # not between the thread's look at `closing` and its clear
                self.closing.set()
                self.wake.set()
            self.thread.join()
        with self.lock:
            held, self.held = self.held, []
        if self.mode == "manual":
            if used:
                self._write([], used)
            return held
        if held or used:
            self._write(held, used)
        return []

    def _loop(self) -> None:
        try:
            while True:
                self.wake.wait()
                if self.closing.wait(self.linger):  # gather; close() writes what is left
                    return
                with self.lock:
                    batch, self.held = self.held, []
                    self.wake.clear()
                self._write(batch)
                # close() may have set both events just before the clear above: its
                # wake-up is gone, so look at closing before waiting again (a hang at
                # the end of a run, seen once in a few dozen runs)
                if self.closing.is_set():
                    return
        finally:
            release(self.store)  # this thread's connection ends with it

    def _write(self, batch: list[tuple[str, bytes | None]], used: Sequence[str] = ()) -> None:
        heads, pop = {}, self.heads.pop
        for key, _ in batch:
            head = pop(key, None)
            if head is not None:
                heads[key] = head
        try:
            _apply(self.store, batch, used, heads)
        except CacheWarning as warning:  # the store healed (and wrote): a filter made it an error
            self.errors.append(str(warning))
        except Exception as exc:
            self.errors.append(
                f"cache store {_describe(self.store)}: a batch of {_entries(batch)} entries "
                f"was not written: {exc!r}"
            )


def _apply(
    store: Store,
    batch: Sequence[tuple[str, bytes | None]],
    used: Sequence[str] = (),
    heads: Mapping[str, tuple[str | None, float | None, str | None]] | None = None,
) -> None:
    """Write and delete in order (the last operation on a key wins), and record the
    uses of ``used`` keys: one transaction on the default store."""
    final: dict[str, bytes | None] = {}
    for key, data in batch:
        final.pop(key, None)
        final[key] = data
    writes = [(k, d) for k, d in final.items() if d is not None]
    deletes = [k for k, d in final.items() if d is None]
    commit(store, writes, deletes, used, heads)


#: a value's output digest, its encoded entry payload (None if the encoder could not:
#: then why, naming the value's type)
Encoded = tuple[bytes, bytes | None, str]


def encode_result(encoder: Encoder, value: Any) -> Encoded:
    """A value's digest and encoded payload: what storing it needs of the value.

    Runs where the value is (a worker process ships it with its task)."""
    out = _digest_or_empty(value)
    try:
        return out, encoder.encode(value), ""
    except Exception as exc:
        return out, None, f"{type(value).__name__} ({exc})"


def _digest_or_empty(value: object) -> bytes:
    try:
        return digest(value)
    except (UnhashableError, RecursionError):
        return _UNHASHABLE


def _name_digest(name: Task) -> bytes:
    """The digest of a task's name (`Checkpoint.named` keeps it per task)."""
    try:
        return digest(name)
    except UnhashableError:
        return hashlib.blake2b(repr(name).encode(), digest_size=16).digest()


def _label(name: Task) -> str:
    return name if isinstance(name, str) else repr(name)


_LABELS: dict[Task, str] = {}


def _label_json(name: Task) -> str:
    label = _LABELS.get(name)
    if label is None:
        if type(name) is str and name.isidentifier() and name.isascii() and len(name) <= 200:
            label = f'"{name}"'  # nothing to escape: json.dumps cost 2 µs a task
        else:
            label = json.dumps(_label(name)[:200])
        if len(_LABELS) < 1_000_000:
            _LABELS[name] = label
    return label


def _describe(store: Store) -> str:
    """A store for a message: a dict's repr would print every entry."""
    if isinstance(store, DirectoryStore | ChainStore):
        return repr(store)
    return f"({type(store).__module__}.{type(store).__qualname__})"


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _record_key(key: str) -> str:
    """The key of the ``last`` record of the task an entry key belongs to."""
    return key[: key.index("/")] + "/last"


def _is_record(key: str) -> bool:
    return key.endswith("/last")


def _entries(batch: Iterable[tuple[str, bytes | None]]) -> int:
    """How many values (not ``last`` records, not deletions) a batch writes."""
    return sum(1 for key, data in batch if data is not None and not _is_record(key))


def _last_record(key: str, code: str, inputs: list[str], failed: str = "") -> bytes:
    """A task's ``last`` record: ``key code input,input...`` and the failure, if any."""
    line = f"{key} {code} {','.join(inputs) or '-'}"
    return (f"{line}\nfailed: {failed}" if failed else line).encode()


def _parse_last(data: bytes) -> dict[str, Any] | None:
    line, _, failure = data.decode(errors="replace").partition("\nfailed: ")
    fields = line.split(" ")
    if len(fields) != 3:
        return None
    key, code, inputs = fields
    digests = [] if inputs == "-" else inputs.split(",")
    return {"key": key, "code": code, "in": digests, "failed": failure}


def _write_mode(write: object) -> WriteMode:
    if write == "exit" or write == "end" or write == "manual":
        return write
    number = isinstance(write, int | float) and not isinstance(write, bool)
    if number and math.isfinite(write) and write > 0:  # type: ignore[arg-type,operator]
        return float(write)  # type: ignore[arg-type]
    raise ValueError(
        f"cache_write must be 'exit', 'end', 'manual' or a number of seconds > 0 (got {write!r})"
    )


#: seconds: `prune_cache` leaves the directory of a call that stored no entry if it
#: changed more recently (the call may still be running)
ORPHAN_AGE = 3600.0

#: the environment variable that gives a cache its secret when ``cache_secret`` does not
SECRET_VARIABLE = "TASKMAP_CACHE_SECRET"


def resolve_secret(secret: str | bytes | None) -> str | bytes | None:
    """``cache_secret``, else ``$TASKMAP_CACHE_SECRET`` (unset or empty: no secret)."""
    if secret is not None:
        return secret
    return os.environ.get(SECRET_VARIABLE) or None


def _secret_bytes(where: str, secret: object) -> bytes | None:
    if secret is None:
        return None
    if isinstance(secret, str):
        secret = secret.encode()
    if not isinstance(secret, bytes | bytearray):
        raise TypeError(
            f"{where} must be a str or bytes (got {with_article(type(secret).__name__)})"
        )
    if not secret:
        raise ValueError(f"{where} must not be empty (an empty secret signs nothing)")
    return bytes(secret)


def _version_code(task: Task, version: object) -> bytes:
    if not isinstance(version, str | int) or isinstance(version, bool):
        raise TypeError(
            f"the version of task {task!r} must be a str or an int "
            f"(got {version!r:.60}, {with_article(type(version).__name__)})"
        )
    return hashlib.blake2b(f"version:{version}".encode(), digest_size=16).digest()


def _encoder(task: Task, encoder: object) -> Encoder:
    if isinstance(encoder, str):
        try:
            return ENCODERS[encoder]
        except KeyError:
            known = ", ".join(map(repr, ENCODERS))
            raise ValueError(
                f"task {task!r}: unknown encoder {encoder!r} (known: {known}, or an object "
                "with name, encode and decode)"
            ) from None
    if isinstance(encoder, Encoder):
        return encoder
    raise TypeError(
        f"the encoder of task {task!r} must be 'pickle', 'json' or an object with name, "
        f"encode and decode (got {encoder!r:.60})"
    )


def _restore(store: Store, settings: dict[str, Any]) -> Checkpoint:
    checkpoint = Checkpoint(
        store,
        write=settings["write"],
        uncached=settings["uncached"],
        encoders=settings["encoders"],
        limit=settings.get("limit"),
        secret=settings.get("secret"),
        capture=settings.get("capture", ()),
    )
    checkpoint.versions = {t: bytes.fromhex(v) for t, v in settings["versions"].items()}
    return checkpoint
