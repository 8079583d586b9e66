"""Stores: where cache entries live.  Any ``MutableMapping[str, bytes]`` is a store.

Design note
-----------
The store protocol is the mapping protocol, nothing more: ``store[key]`` returns an
entry's bytes or raises KeyError, ``store[key] = data`` writes one, ``del store[key]``
drops one, iterating lists the keys.  A dict, an ``fsspec`` mapper (remote storage)
or a ``diskcache.Cache`` works as it is.  Optional methods make a store faster, and
are used when present: ``update(pairs)`` writing many entries at once,
``get_many(keys)`` reading many (a dict of those found), ``keys_under(prefix)``
listing the keys that start with a prefix; and, for a store that manages its size
(`DirectoryStore`), ``keys_under_many``, ``stat_under``, ``commit`` (writes,
deletions and uses in one transaction), ``usage`` and ``trim``.

Keys are ``'<task token>/<32 hex digits>'``; a task's token is its name made safe
for paths plus a short digest of the name, so the entries of one task share a
prefix.  ``'<task token>/last'`` records the task's last run (its key, code and
inputs, and the failure if it failed), to explain the next miss; it holds no value.

Rules for the embedded default, `DirectoryStore`:

1. **Atomic.** Each batch of entries is one SQLite transaction in write-ahead-log
   mode: a process killed at any instant leaves every entry whole or absent.
2. **Shared.** Several runs, in several processes, may read and write one
   directory at once; SQLite's locking serialises the writes (waiting up to 60 s).
3. **Durable enough.** ``synchronous=NORMAL``: a committed entry survives a killed
   process; a power cut may lose the last transactions, never corrupt older ones.
4. **One connection per thread**, opened lazily, so the writer thread and the
   driver never share one.
5. **Every connection is closed deterministically** (gh-issue 11: Python 3.13 warns
   of each one collected open; each holds descriptors and locks): a thread closes
   its own when it ends (`release`), a run closes them all when it ends (`close`;
   the store reopens on next use), and a store that is collected closes what is
   left (a `weakref.finalize`, which also runs at interpreter exit).
6. **Size and use are kept beside the entries** (issue 14), so that listing,
   pruning and trimming never read a value: table ``meta`` holds each key's size,
   last use, and the task, time written and encoder its entry's header names;
   ``totals`` holds the number of entries, their bytes and the highest rowid of
   ``entries``.  Every write and deletion updates them in the same transaction, set
   by set (no trigger: a row trigger made deleting 100,000 entries three times
   slower).  Uses go to a log, table ``uses``: one row per run (its time and the keys
   it read), folded into ``meta`` before ``used`` is read (listing, pruning,
   trimming) or when the log holds `_FOLD_ROWS` runs or `_FOLD_KEYS` keys; each key
   then takes its last logged use.  (Updating ``meta`` and its index on last use row
   by row cost a daily rerun of 10,000 cached tasks 4.6 µs a task; the log, 0.9.)  A
   store made before them is migrated in place when opened (``PRAGMA user_version``
   0 -> 2, 1 -> 2); one an older taskmap wrote to since is found when opened (a
   count or the highest rowid differs from ``totals``) and re-indexed.
7. **A damaged database heals** (issue 14): a file SQLite cannot open or read
   (``SQLITE_NOTADB``, ``SQLITE_CORRUPT``) is moved aside, with its ``-wal`` and
   ``-shm`` files, as ``<file>.corrupt-<timestamp>``, a `CacheWarning` names both
   paths, and a fresh database takes its place: the operation is retried on it.
   Nothing is deleted.  Every thread's connection to the old file is replaced at
   its next use (a generation count); another process that finds the file already
   replaced (a new inode) reconnects without moving anything.
8. **Task directories go with their entries** (issue 14): ``<path>/task-dirs/<key>``
   holds what a task kept in `taskmap.task_directory` (and its captured output).
   Whatever drops an entry (a deletion, `prune`, `trim`) removes its key's directory
   once the transaction has committed.  Only the tasks that have directories are
   looked at (one listing of ``task-dirs``), so a store without any pays one
   ``stat``.
9. **``last`` records are kept apart** (schema version 2): a task's record of its
   last run is one row of table ``records``, not an entry (a row in ``entries``
   and its key index, a row in ``meta`` and its index on last use: half the cost
   of a cold run's commit).  Records are not counted in ``totals``, not listed by
   ``stat_under`` and never trimmed; reads, listings of keys and deletions see
   them, and also those an older taskmap wrote among the entries.  The index on
   last use is made by the first trim: a store never trimmed does without it.
   Small values are written a batch to one statement (`_put`).

::

    driver thread ─ get, get_many ───────────┐          entries (key, value)
    writer thread ─ commit(writes, uses) ────┼─► one ─► meta (key, size, used, task, written, enc)
    prune, trim ─ stat_under, drop ──────────┘   txn    totals (entries, bytes, highest rowid)
                                                        uses (when, n, keys): folded into meta
                                                        records (key, value): 'last' records
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import operator
import os
import shutil
import sqlite3
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from ..errors import CacheWarning, with_article
from .encoders import HEAD_PROBE, CorruptEntryError, entry_head, head_span, parse_head

__all__ = ["ChainStore", "DirectoryStore", "Stat", "Store", "open_store"]

Store = MutableMapping[str, bytes]
T = TypeVar("T")

DB_NAME = "taskmap-cache.sqlite3"
#: the directory, beside the database, of the task directories (rule 8)
TASK_DIRS = "task-dirs"
SCHEMA_VERSION = 2
_SCHEMA = "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, value BLOB NOT NULL)"
#: schema version 1: what rule 6 keeps beside the entries
_SCHEMA_1 = (
    # small rows, read in key order: clustered on the key (no rowid, no second b-tree)
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, size INTEGER NOT NULL,"
    " used REAL NOT NULL, task TEXT, written REAL, enc TEXT) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 0),"
    " entries INTEGER NOT NULL, bytes INTEGER NOT NULL, mark INTEGER NOT NULL)",
)
#: schema version 2: the log of uses (rule 6), one row per run: when, and the keys read;
#: the tasks' ``last`` records, one small row each (rule 9)
_SCHEMA_2 = (
    "CREATE TABLE IF NOT EXISTS uses (used REAL NOT NULL, n INTEGER NOT NULL, keys TEXT)",
    "CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
)
#: the index on last use: made by the first trim (rule 6), then kept
_USED_INDEX = "CREATE INDEX IF NOT EXISTS meta_used ON meta (used)"
#: the log is folded into ``meta`` when it holds this many runs, or this many keys
_FOLD_ROWS, _FOLD_KEYS = 32, 250_000
_GET = "SELECT value FROM entries WHERE key = ?"
#: a ``last`` record: in ``records``, or in ``entries`` where an older taskmap wrote it
_GET_RECORD = (
    "SELECT value FROM records WHERE key = ?"
    " UNION ALL SELECT value FROM entries WHERE key = ? LIMIT 1"
)
#: seconds: last uses are recorded to this resolution (least-recently-used order among
#: entries used within it is the order they were written in)
USE_RESOLUTION = 60.0
_HIGHEST = "\U0010ffff"  # sorts after every character a key may hold
#: result codes (the low byte of an extended code) of a file SQLite cannot use
_DAMAGED = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


class Stat(NamedTuple):
    """What a listing knows of an entry without reading its value.

    ``used``: when a run last wrote or read it (None: the store does not record use);
    ``task``, ``written``, ``enc``: what the entry's header says (None when the value
    is not a taskmap entry, or its header is damaged).
    """

    key: str
    size: int
    used: float | None
    task: str | None = None
    written: float | None = None
    enc: str | None = None


class DirectoryStore(MutableMapping[str, bytes]):
    """The embedded default store: one SQLite database in a directory.

    Args:
        path: the directory; created if missing.  The database is
            ``<path>/taskmap-cache.sqlite3``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"cache directory {str(self.path)!r} is a file")
        self.path.mkdir(parents=True, exist_ok=True)
        self.file = self.path / DB_NAME
        self.dirs = self.path.absolute() / TASK_DIRS  # a task may change directory
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._finalizer = weakref.finalize(self, _close_all, self._connections)
        self._generation = 0  # bumped when the file is replaced: every thread reconnects
        self._notes: collections.deque[str] = collections.deque()  # warnings not given yet
        self._read(_check)  # fail now, naming the file, rather than in the middle of a run
        self._warn_notes()

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.path)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (DirectoryStore, (str(self.path),))

    # -- connections -----------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        local = self._local
        db: sqlite3.Connection | None = getattr(local, "db", None)
        if db is not None and local.generation == self._generation:
            return db
        if db is not None:  # the file was replaced (rule 7): this one reads the old file
            self.release()
        generation = self._generation
        db, inode = self._connect()
        local.db, local.inode, local.generation = db, inode, generation
        with self._lock:
            self._connections.append(db)
        return db

    def _connect(self) -> tuple[sqlite3.Connection, int]:
        # Switching a new file to WAL mode writes its header outside SQLite's busy
        # handler: a second process opening it then fails at once with "database is
        # locked".  Processes opening the store take turns, on a lock file.
        with _file_lock(self.path / f"{DB_NAME}.lock"):
            try:
                db = self._open()
            except sqlite3.DatabaseError as exc:
                if not _damaged(exc):
                    raise self._unusable(exc) from exc
                self._move_aside(exc)  # rule 7; we hold the lock, so the file is the one read
                try:
                    db = self._open()
                except sqlite3.DatabaseError as again:
                    raise self._unusable(again) from again
            return db, os.stat(self.file).st_ino

    def _open(self) -> sqlite3.Connection:
        new = not self.file.exists() or self.file.stat().st_size == 0
        # one thread uses each connection; close() may run on another thread
        db = sqlite3.connect(self.file, timeout=60, isolation_level=None, check_same_thread=False)
        try:
            if new:  # on an existing file this pragma costs milliseconds (and a write)
                db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # pruning and trimming walk many pages of entries and meta at once; SQLite's
            # default (2 MB) would read most of them twice.  Memory grows only if used.
            db.execute("PRAGMA cache_size = -32768")
            db.execute("PRAGMA temp_store = MEMORY")  # prune's temporary table
            db.execute("PRAGMA secure_delete = FAST")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                _migrate(db)
            else:  # reads the schema: a damaged first page fails here, not mid-run
                db.execute("SELECT entries, bytes, mark FROM totals").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def _unusable(self, exc: sqlite3.DatabaseError) -> sqlite3.DatabaseError:
        return sqlite3.DatabaseError(
            f"cache database {str(self.file)!r} cannot be used ({exc}); delete it, "
            "or choose another cache directory"
        )

    # -- rule 7: healing -------------------------------------------------------

    def _heal(self, exc: sqlite3.DatabaseError) -> None:
        """The calling thread's connection met a damaged file: move the file aside
        unless another thread or process did already, and reconnect everyone."""
        inode = getattr(self._local, "inode", None)
        with self._lock, _file_lock(self.path / f"{DB_NAME}.lock"):
            try:
                current: int | None = os.stat(self.file).st_ino
            except FileNotFoundError:
                current = None
            if current is not None and current == inode:
                self._move_aside(exc)
            self._generation += 1
        self.release()

    def _move_aside(self, exc: sqlite3.DatabaseError) -> None:
        """Rename the database and its -wal and -shm files; call holding the file lock."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.path / f"{DB_NAME}.corrupt-{stamp}"
        n = 1
        while aside.exists():
            n += 1
            aside = self.path / f"{DB_NAME}.corrupt-{stamp}-{n}"
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.file}{suffix}", f"{aside}{suffix}")
        self._notes.append(
            f"cache database {str(self.file)!r} cannot be used ({exc}): moved it aside to "
            f"{str(aside)!r} and started a fresh one (its tasks run again)"
        )

    def _warn_notes(self) -> None:
        """Warn of what healing did, once the operation that healed is complete (a
        warning made an error by a filter then leaves no work undone)."""
        while self._notes:
            try:
                note = self._notes.popleft()
            except IndexError:  # another thread took it
                return
            warnings.warn(note, CacheWarning, stacklevel=3)

    def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        try:
            result = op(self._db())
        except sqlite3.DatabaseError as exc:
            if not _damaged(exc):
                raise
            self._heal(exc)
            result = op(self._db())
        if self._notes:
            self._warn_notes()
        return result

    def _write(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``body`` in one write transaction (healing and retrying once)."""
        return self._read(lambda db: _transaction(db, body))

    # -- the mapping -----------------------------------------------------------

    def __getitem__(self, key: str) -> bytes:
        data = self.get(key)
        if data is None:
            raise KeyError(key)
        return data  # type: ignore[no-any-return]

    def get(self, key: str, default: Any = None) -> Any:
        sql, params = (_GET_RECORD, (key, key)) if key.endswith("/last") else (_GET, (key,))
        try:  # the hot path of a cached rerun: no closure
            row = self._db().execute(sql, params).fetchone()
        except sqlite3.DatabaseError as exc:
            if not _damaged(exc):
                raise
            self._heal(exc)
            row = self._read(lambda db: db.execute(sql, params).fetchone())
        if self._notes:
            self._warn_notes()
        return default if row is None else row[0]

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The entries of those ``keys`` that exist, read in one query (a few where
        SQLite has no ``json_each``)."""
        records = [key for key in keys if key.endswith("/last")]
        entries = sorted(keys) if not records else sorted(set(keys).difference(records))

        def read(db: sqlite3.Connection) -> dict[str, bytes]:
            found = dict(_keyed(db, "get", entries))
            if records:  # rare: a run asks for entries; an older taskmap's records too
                found.update(_keyed(db, "get", sorted(records)))
                found.update(_keyed(db, "get record", sorted(records)))
            return found

        return self._read(read)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str) and key.endswith("/last"):
            return self.get(key) is not None
        sql = "SELECT 1 FROM entries WHERE key = ?"
        return self._read(lambda db: db.execute(sql, (key,)).fetchone() is not None)

    def __setitem__(self, key: str, value: bytes) -> None:
        self.update([(key, value)])

    def update(self, pairs: Any = (), /, **kwargs: bytes) -> None:
        """Write many entries in one transaction (all or none of them)."""
        items = list(pairs.items() if isinstance(pairs, Mapping) else pairs)
        items += kwargs.items()
        if items:
            self.commit(items)

    def commit(
        self,
        writes: Sequence[tuple[str, bytes]] = (),
        deletes: Sequence[str] = (),
        uses: Sequence[str] = (),
        when: float | None = None,
        heads: Mapping[str, tuple[str | None, float | None, str | None]] | None = None,
    ) -> None:
        """Write, delete and record the use of entries in one transaction (rule 6).

        ``uses``: keys a run read.  Their last use, and that of the written entries,
        becomes ``when`` (default: now): the uses as one row of the log (rule 6),
        where a use within `USE_RESOLUTION` seconds of the last one recorded does
        not move it.
        ``heads``: key -> the task, time written and encoder its entry's header names,
        as the writer knows them (the header is not parsed again for ``meta``).
        """
        used = time.time() if when is None else when
        final = dict(writes)  # the last write of a key wins
        records = [(k, final.pop(k)) for k in [k for k in final if k.endswith("/last")]]

        def body(db: sqlite3.Connection) -> None:
            if records:  # rule 9
                _put(db, "records", records)
            if final:
                count, size = _sizes(db, list(final))  # of the entries replaced
                _put(db, "entries", list(final.items()))
                known = heads or {}
                meta = [
                    (k, len(d), *head) if (head := known.get(k)) else _meta(k, d)
                    for k, d in final.items()
                ]
                _put_meta(db, meta, used)
                added = sum(row[1] for row in meta)
                db.execute(_COUNT, (len(meta) - count, added - size))
            if deletes:
                _drop(db, deletes)
            if uses:
                _use(db, uses, used)

        self._write(body)
        if deletes:
            drop_dirs(self.dirs, deletes)

    def __delitem__(self, key: str) -> None:
        if not self.delete([key]):
            raise KeyError(key)

    def delete(self, keys: Iterable[str]) -> int:
        """Drop the entries of ``keys`` (missing ones are ignored); return how many went."""
        keys = list(keys)

        def body(db: sqlite3.Connection) -> int:
            return _drop(db, keys)

        count = self._write(body)
        if count:
            self._vacuum()
        drop_dirs(self.dirs, keys)
        return count

    def keys_under(self, prefix: str) -> list[str]:
        """The keys starting with ``prefix``, sorted (``last`` records' too)."""
        sql = (
            "SELECT key FROM entries WHERE key >= ? AND key < ?"
            " UNION SELECT key FROM records WHERE key >= ? AND key < ? ORDER BY key"
        )
        span = (prefix, prefix + _HIGHEST) * 2
        rows = self._read(lambda db: db.execute(sql, span).fetchall())
        return [key for (key,) in rows]

    def keys_under_many(self, prefixes: Sequence[str]) -> list[str]:
        """The keys starting with any of ``prefixes`` (in one query per table where
        SQLite has ``json_each``; ``last`` records' too): what a run asks at its first
        miss, for its own tasks only."""

        def read(db: sqlite3.Connection) -> list[Any]:
            return _under(db, "e.key", "entries", prefixes) + _under(
                db, "e.key", "records", prefixes
            )

        return [key for (key,) in self._read(read)]

    def stat_under(self, prefixes: Sequence[str]) -> list[Stat]:
        """A `Stat` of every entry whose key starts with one of ``prefixes`` (``['']``:
        every entry), in no particular order, read from ``meta``: no value is read,
        except the head of an entry written by an older taskmap.  ``last`` records,
        kept apart (rule 9), are not listed."""

        self._fold()

        def read(db: sqlite3.Connection) -> list[Stat]:
            columns = "e.key, e.size, e.used, e.task, e.written, e.enc"
            (count,) = db.execute("SELECT entries FROM totals").fetchone()
            if "" in prefixes:  # every key
                stats = list(map(Stat._make, db.execute(f"SELECT {columns} FROM meta AS e")))
            elif len(prefixes) * 2 >= count:  # most of the store: one scan beats a join
                wanted = set(prefixes)
                rows = db.execute(f"SELECT {columns} FROM meta AS e")
                stats = [Stat._make(r) for r in rows if r[0][: r[0].find("/") + 1] in wanted]
            else:
                stats = list(map(Stat._make, _under(db, columns, "meta", prefixes)))
            for i, stat in enumerate(stats):
                if stat.task is None and not stat.key.endswith("/last"):
                    stats[i] = _stat_of(db, stat.key, stat.size, stat.used)
            return stats

        return self._read(read)

    def _fold(self) -> None:
        """Fold the log of uses into ``meta``, if it holds any (rule 6)."""
        if self._read(lambda db: db.execute(_LOGGED).fetchone()) is not None:
            self._write(_fold)

    def usage(self) -> tuple[int, int]:
        """``(entries, bytes)``: how many keys the store holds and their size in bytes."""
        row = self._read(lambda db: db.execute("SELECT entries, bytes FROM totals").fetchone())
        return int(row[0]), int(row[1])

    def trim(self, max_bytes: int) -> list[Stat]:
        """Drop least-recently-used entries until the store holds at most ``max_bytes``
        (``last`` records stay: they are small and explain the next miss).  Returns
        what was dropped, least recently used first."""

        def body(db: sqlite3.Connection) -> list[Stat]:
            excess = int(db.execute("SELECT bytes FROM totals").fetchone()[0]) - max_bytes
            if excess <= 0:
                return []
            _fold(db)
            db.execute(_USED_INDEX)  # once: a store never trimmed does without it
            dropped: list[Stat] = []
            columns = "key, size, used, task, written, enc"
            rows = db.execute(f"SELECT {columns} FROM meta ORDER BY used")
            for row in rows:
                if row[0].endswith("/last"):
                    continue
                dropped.append(Stat(*row))
                excess -= row[1]
                if excess <= 0:
                    break
            rows.close()
            _drop(db, [s.key for s in dropped])
            return dropped

        dropped = self._write(body)
        if dropped:
            self._vacuum()
            drop_dirs(self.dirs, [stat.key for stat in dropped])
        return dropped

    def _vacuum(self) -> None:
        """Give freed pages back to the file system (a store made with incremental
        auto-vacuum: every store made by this version)."""
        with contextlib.suppress(sqlite3.OperationalError):  # busy: the next one will
            db = self._db()
            (free,) = db.execute("PRAGMA freelist_count").fetchone()
            (pages,) = db.execute("PRAGMA page_count").fetchone()
            if free * 2 > pages and free >= _VACUUM_PAGES:
                # most of the file is free (a prune dropped most entries): rewriting
                # the pages in use costs less than moving them one by one (0.006
                # against 0.2 s after dropping 99,000 of 100,000 entries)
                db.execute("VACUUM")
                db.execute(_MARK)  # VACUUM may renumber the rowids (rule 6 compares)
                # the file shrinks when the log is copied back: now, not at close
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            else:
                # one page a step: executescript steps it to the end (execute steps once)
                db.executescript("PRAGMA incremental_vacuum;")

    def __iter__(self) -> Iterator[str]:
        sql = "SELECT key FROM entries UNION SELECT key FROM records ORDER BY key"
        rows = self._read(lambda db: db.execute(sql).fetchall())
        return iter([key for (key,) in rows])

    def __len__(self) -> int:
        sql = "SELECT (SELECT count(*) FROM entries) + (SELECT count(*) FROM records)"
        return int(self._read(lambda db: db.execute(sql).fetchone()[0]))

    def release(self) -> None:
        """Close the calling thread's connection (a thread that is ending calls it)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            return
        self._local.db = None
        with self._lock, contextlib.suppress(ValueError):
            self._connections.remove(db)
        db.close()

    def close(self) -> None:
        """Close every connection this store opened (it reopens on next use).

        Call when no other thread is using the store (the end of a run)."""
        with self._lock:
            connections = list(self._connections)
            self._connections.clear()  # the finalizer's list: it is emptied, not replaced
        for db in connections:
            db.close()
        self._local = threading.local()


def _check(db: sqlite3.Connection) -> None:
    """Re-index a store an older taskmap wrote to since (rule 6)."""
    if not _consistent(db):
        _reindex(db)


def _damaged(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite said the file is not a database, or is corrupt (rule 7)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in _DAMAGED


def _transaction(db: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
    db.execute("BEGIN IMMEDIATE")
    try:
        result = body(db)
    except BaseException:
        with contextlib.suppress(sqlite3.Error):  # a damaged file may refuse this too
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


def _migrate(db: sqlite3.Connection) -> None:
    """Bring a store to `SCHEMA_VERSION`: add ``meta`` and ``totals`` (rule 6) and fill
    them from the entries, reading only each entry's head; add the log of uses.  One
    transaction; a process that waited for the lock meanwhile finds it done."""

    def body(db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version >= SCHEMA_VERSION:
            return
        if version < 1:
            db.execute(_SCHEMA)
            for statement in _SCHEMA_1:
                db.execute(statement)
        for statement in _SCHEMA_2:
            db.execute(statement)
        _move_records(db)
        if version < 1:
            _index(db, {})
        else:  # made again by the first trim: most stores are never trimmed
            db.execute("DROP INDEX IF EXISTS meta_used")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    _transaction(db, body)


def _index(db: sqlite3.Connection, used: Mapping[str, float]) -> None:
    """(Re)build ``meta`` and ``totals`` from the entries (their heads only), keeping
    the last use of the keys in ``used``; unknown, it is when the entry was written."""
    rows = db.execute("SELECT rowid, key, length(value) FROM entries").fetchall()
    now = time.time()
    meta = []
    for rowid, key, size in rows:
        stat = _stat_of(db, key, size, now, rowid)
        last = used.get(key, now if stat.written is None else min(stat.written, now))
        meta.append((key, size, last, stat.task, stat.written, stat.enc))
    db.execute("DELETE FROM meta")
    db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?, ?, ?, ?, ?)", meta)
    db.execute("DELETE FROM totals")
    db.execute(
        "INSERT INTO totals VALUES (0, ?, ?, (SELECT coalesce(max(rowid), 0) FROM entries))",
        (len(meta), sum(row[1] for row in meta)),
    )


def _move_records(db: sqlite3.Connection) -> None:
    """Move ``last`` records from ``entries`` (and ``meta``) to ``records`` (rule 9):
    a store made before schema version 2, or written to by an older taskmap since.
    The caller counts ``totals`` again (`_index`) or keeps them right: ``_COUNT``."""
    last = "substr(key, -5) = '/last'"
    db.execute(f"INSERT OR REPLACE INTO records SELECT key, value FROM entries WHERE {last}")
    count, size = db.execute(f"SELECT count(*), total(size) FROM meta WHERE {last}").fetchone()
    db.execute(f"DELETE FROM meta WHERE {last}")
    db.execute(f"DELETE FROM entries WHERE {last}")
    if db.execute("SELECT 1 FROM totals").fetchone() is not None:
        db.execute(_COUNT, (-count, -int(size)))


def _consistent(db: sqlite3.Connection) -> bool:
    """Whether ``totals`` still counts what ``entries`` holds: an older taskmap writing
    to a migrated store changes the count or the highest rowid without telling it."""
    found = db.execute("SELECT count(*), coalesce(max(rowid), 0) FROM entries").fetchone()
    kept = db.execute("SELECT entries, mark FROM totals").fetchone()
    return tuple(found) == tuple(kept)


def _reindex(db: sqlite3.Connection) -> None:
    """Rebuild ``meta`` after an older taskmap wrote to the store (rare: O(entries))."""

    def body(db: sqlite3.Connection) -> None:
        if not _consistent(db):  # another process may have done it meanwhile
            _fold(db)
            _move_records(db)
            _index(db, dict(db.execute("SELECT key, used FROM meta").fetchall()))

    _transaction(db, body)


#: free pages from which a VACUUM may replace the incremental one (below, moving a
#: few pages costs less than rewriting the file and copying the log back)
_VACUUM_PAGES = 1024
_MARK = "UPDATE totals SET mark = (SELECT coalesce(max(rowid), 0) FROM entries)"
_COUNT = (
    "UPDATE totals SET entries = entries + ?, bytes = bytes + ?,"
    " mark = (SELECT coalesce(max(rowid), 0) FROM entries)"
)
_CHUNK = 500  # keys per statement: SQLite caps the parameters of one


def _sizes(db: sqlite3.Connection, keys: Sequence[str]) -> tuple[int, int]:
    """How many of ``keys`` ``meta`` holds, and their bytes."""
    count = size = 0
    for n, total in _keyed(db, "sizes", sorted(keys)):  # a row per chunk, or one
        count, size = count + n, size + int(total)
    return count, size


#: from this many keys a deletion goes set by set, through a temporary table
_MANY = 1000


def _drop(db: sqlite3.Connection, keys: Iterable[str]) -> int:
    """Delete ``keys`` from entries and meta, in key order (the b-trees' order), and
    count them out of totals, and ``last`` records from theirs; return how many keys
    went.  Call in a transaction."""
    keys = sorted(set(keys))
    if not keys:
        return 0
    # records from their table; from entries too (below), where an older taskmap wrote
    gone = _delete(db, "records", [key for key in keys if key.endswith("/last")])
    if len(keys) >= _MANY:
        return gone + _drop_many(db, keys)
    count, size = _sizes(db, keys)
    _delete(db, "meta", keys)
    gone += _delete(db, "entries", keys)
    db.execute(_COUNT, (-count, -size))
    return gone


def _delete(db: sqlite3.Connection, table: str, keys: Sequence[str]) -> int:
    """Delete sorted ``keys`` from ``table``, a chunk a statement; return how many went."""
    gone = 0
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        gone += db.execute(f"DELETE FROM {table} WHERE key IN ({marks})", chunk).rowcount
    return gone


def _drop_many(db: sqlite3.Connection, keys: list[str]) -> int:
    """`_drop` for many sorted keys: they go into a temporary table, and the tables
    lose them set by set.  When most of the store goes (a prune of a daily job's
    old entries), the few entries that stay are copied into new tables and the old
    ones dropped whole (`_rebuild`): deleting 100,000 rows one by one from two
    tables of two b-trees each, and logging each page, took three times as long."""
    db.execute("CREATE TEMP TABLE IF NOT EXISTS doomed (key TEXT PRIMARY KEY)")
    db.execute("DELETE FROM temp.doomed")
    if _has_json(db):
        db.execute(
            "INSERT OR IGNORE INTO temp.doomed SELECT value FROM json_each(?)", (json.dumps(keys),)
        )
    else:
        db.executemany("INSERT OR IGNORE INTO temp.doomed VALUES (?)", [(k,) for k in keys])
    (before,) = db.execute("SELECT count(*) FROM entries").fetchone()
    if len(keys) * 2 > before:
        _rebuild(db)
    else:
        count, size = db.execute(
            "SELECT count(*), total(m.size) FROM temp.doomed AS d JOIN meta AS m ON m.key = d.key"
        ).fetchone()
        db.execute("DELETE FROM meta WHERE key IN (SELECT key FROM temp.doomed)")
        db.execute("DELETE FROM entries WHERE key IN (SELECT key FROM temp.doomed)")
        db.execute(_COUNT, (-count, -int(size)))
    db.execute("DELETE FROM temp.doomed")
    (after,) = db.execute("SELECT count(*) FROM entries").fetchone()
    return int(before - after)


def _rebuild(db: sqlite3.Connection) -> None:
    """Keep only the entries and meta rows not in ``temp.doomed``: copy them into new
    tables (rowids kept: `_consistent` compares the highest), drop the old ones, count
    the totals again from what stayed (the caller then vacuums)."""
    keep = "WHERE key NOT IN (SELECT key FROM temp.doomed)"
    db.execute(_SCHEMA.replace("entries", "entries_new"))
    db.execute(
        f"INSERT INTO entries_new (rowid, key, value) SELECT rowid, key, value FROM entries {keep}"
    )
    db.execute(_SCHEMA_1[0].replace("meta", "meta_new"))
    db.execute(f"INSERT INTO meta_new SELECT * FROM meta {keep}")
    indexed = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta_used'").fetchone()
    db.execute("DROP TABLE entries")
    db.execute("DROP TABLE meta")
    db.execute("ALTER TABLE entries_new RENAME TO entries")
    db.execute("ALTER TABLE meta_new RENAME TO meta")
    if indexed:
        db.execute(_USED_INDEX)
    db.execute(
        "UPDATE totals SET entries = (SELECT count(*) FROM meta),"
        " bytes = (SELECT total(size) FROM meta),"
        " mark = (SELECT coalesce(max(rowid), 0) FROM entries)"
    )


def _stat_of(
    db: sqlite3.Connection, key: str, size: int, used: float | None, rowid: int | None = None
) -> Stat:
    """A `Stat` from the entry's head, read from the value's first bytes (incremental
    blob I/O: the rest of the value is not read)."""
    if rowid is None:
        row = db.execute("SELECT rowid FROM entries WHERE key = ?", (key,)).fetchone()
        if row is None:
            return Stat(key, size, used)
        rowid = row[0]
    with db.blobopen("entries", "value", rowid, readonly=True) as blob:
        span = head_span(blob.read(HEAD_PROBE))
        if span is None:
            return Stat(key, size, used)
        blob.seek(0)
        return Stat(key, size, used, *_fields(blob.read(span)))


def _meta(key: str, data: bytes) -> tuple[Any, ...]:
    """A row of ``meta`` (without its last use) for an entry written without its
    header's fields at hand."""
    return (key, len(data), *_fields(data))


#: bytes of values from which a batch is bound row by row (see `_put`)
_PUT_INLINE = 16 << 20
_PUT = (
    "INSERT OR REPLACE INTO {table} (key, value) SELECT json_extract(j.value, '$[0]'),"
    " coalesce(substr(?, json_extract(j.value, '$[1]'), json_extract(j.value, '$[2]')), x'')"
    " FROM json_each(?) AS j"
)
_PUT_META = (
    "INSERT OR REPLACE INTO meta SELECT json_extract(j.value, '$[0]'),"
    " json_extract(j.value, '$[1]'), ?, json_extract(j.value, '$[2]'),"
    " json_extract(j.value, '$[3]'), json_extract(j.value, '$[4]') FROM json_each(?) AS j"
)


def _put(db: sqlite3.Connection, table: str, pairs: list[tuple[str, bytes]]) -> None:
    """Write ``(key, value)`` pairs into ``table``: one statement over a JSON array of
    (key, offset, length) and one blob of the values, in key order.  SQLite steps
    through the whole batch without the GIL, where ``executemany`` takes it back at
    each row while the driver's thread competes for it (a cold run of 10,000 tiny
    tasks under `run_parallel_async`: ~100 against ~94 µs a task, A/B).  Row by row
    where SQLite has no ``json_each``, or for large values (no copy into one blob)."""
    size = sum(len(value) for _, value in pairs)
    if len(pairs) < 2 or size >= _PUT_INLINE or not _has_json(db):
        db.executemany(f"INSERT OR REPLACE INTO {table} VALUES (?, ?)", pairs)
        return
    pairs = sorted(pairs)
    spans, offset = [], 1
    for key, value in pairs:
        spans.append((key, offset, len(value)))
        offset += len(value)
    blob = b"".join([value for _, value in pairs])
    db.execute(_PUT.format(table=table), (blob, json.dumps(spans)))  # in the text's order


def _put_meta(db: sqlite3.Connection, rows: list[tuple[Any, ...]], used: float) -> None:
    """Write ``meta`` rows (without their last use, ``used`` for all): as `_put`."""
    if len(rows) < 2 or not _has_json(db):
        rows = [(key, size, used, *rest) for key, size, *rest in rows]
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?, ?, ?, ?, ?)", rows)
        return
    db.execute(_PUT_META, (used, json.dumps(sorted(rows))))  # in the text's order


def _fields(data: bytes) -> tuple[str | None, float | None, str | None]:
    """The task, time written and encoder an entry's header names (Nones: not an
    entry, or a damaged header)."""
    head = entry_head(data)
    if head is None:
        return None, None, None
    try:
        return parse_head(head)
    except CorruptEntryError:
        return None, None, None


_JSON_EACH: dict[str, bool] = {}  # sqlite version -> whether it has json_each


def _keyed(
    db: sqlite3.Connection, name: str, keys: Sequence[str], params: Sequence[Any] = ()
) -> list[Any]:
    """Run the statement `_KEYED` names for ``keys``, with ``params`` first: its form
    over a JSON array of the keys, or, where SQLite has no ``json_each`` (or the
    statement has no such form), its form over a list of them, once per chunk.
    Sorted keys visit the b-trees' pages in order: twice as fast as a run's order at
    10,000 keys."""
    if not keys:
        return []
    whole, chunked = _KEYED[name]
    if whole is not None and _has_json(db):
        return db.execute(whole, (*params, json.dumps(keys))).fetchall()
    rows = []
    for start in range(0, len(keys), 500):  # SQLite caps the parameters of a query
        chunk = keys[start : start + 500]
        query = chunked.format(keys=",".join("?" * len(chunk)))
        rows += db.execute(query, (*params, *chunk)).fetchall()
    return rows


_LOGGED = "SELECT 1 FROM uses LIMIT 1"


def _use(db: sqlite3.Connection, keys: Sequence[str], when: float) -> None:
    """Record that ``keys`` were used at ``when`` (rule 6): one row in the log of uses,
    folded into ``meta`` when the log grows long or ``used`` is read; directly into
    ``meta`` where SQLite has no ``json_each``.  Updating ``meta`` row by row (and its
    index on last use) cost a rerun of 10,000 cached tasks 4.6 µs a task."""
    if not _has_json(db):
        _keyed(db, "use", sorted(keys), (when, when - USE_RESOLUTION, when))
        return
    db.execute("INSERT INTO uses VALUES (?, ?, ?)", (when, len(keys), json.dumps(keys)))
    rows, logged = db.execute("SELECT count(*), total(n) FROM uses").fetchone()
    if rows >= _FOLD_ROWS or logged >= _FOLD_KEYS:
        _fold(db)


def _fold(db: sqlite3.Connection) -> None:
    """Move the log of uses into ``meta``: each key's last logged use becomes its
    ``used``, unless that is within `USE_RESOLUTION` of the one recorded (an entry's
    place in the index on last use moves once per resolution).  Call in a transaction."""
    if db.execute(_LOGGED).fetchone() is None:
        return
    try:
        db.execute(
            "UPDATE meta SET used = l.used FROM (SELECT j.value AS key, max(u.used) AS used"
            " FROM uses AS u, json_each(u.keys) AS j GROUP BY j.value) AS l"
            " WHERE meta.key = l.key AND meta.used NOT BETWEEN l.used - ? AND l.used",
            (USE_RESOLUTION,),
        )
    except sqlite3.OperationalError as exc:  # before 3.33: no UPDATE ... FROM
        if "syntax error" not in str(exc):
            raise
        for when, keys in db.execute("SELECT used, keys FROM uses ORDER BY used").fetchall():
            _keyed(db, "use", sorted(json.loads(keys)), (when, when - USE_RESOLUTION, when))
    db.execute("DELETE FROM uses")


def _has_json(db: sqlite3.Connection) -> bool:
    """Whether this SQLite has ``json_each`` (built in since 3.38; optional before)."""
    found = _JSON_EACH.get(sqlite3.sqlite_version)
    if found is None:
        try:
            db.execute("SELECT count(*) FROM json_each('[]')").fetchone()
            found = True
        except sqlite3.OperationalError:
            found = False
        _JSON_EACH[sqlite3.sqlite_version] = found
    return found


#: name -> (the statement over a JSON array of keys, or None; over a list of them)
_KEYED: dict[str, tuple[str | None, str]] = {
    "get": (
        "SELECT e.key, e.value FROM json_each(?) AS j CROSS JOIN entries AS e ON e.key = j.value",
        "SELECT key, value FROM entries WHERE key IN ({keys})",
    ),
    "sizes": (
        "SELECT count(*), total(m.size) FROM json_each(?) AS j CROSS JOIN meta AS m"
        " ON m.key = j.value",
        "SELECT count(*), total(size) FROM meta WHERE key IN ({keys})",
    ),
    "get record": (None, "SELECT key, value FROM records WHERE key IN ({keys})"),
    # without the log (no json_each): a use within USE_RESOLUTION of the last one
    # recorded writes nothing
    "use": (None, "UPDATE meta SET used = ? WHERE used NOT BETWEEN ? AND ? AND key IN ({keys})"),
}


def _under(db: sqlite3.Connection, columns: str, table: str, prefixes: Sequence[str]) -> list[Any]:
    """Rows of ``table`` (alias ``e``) whose key starts with one of ``prefixes``."""
    if not prefixes:
        return []
    if _has_json(db):
        sql = (
            f"SELECT {columns} FROM json_each(?) AS p JOIN {table} AS e"
            " ON e.key >= p.value AND e.key < p.value || char(1114111)"
        )
        return db.execute(sql, (json.dumps(list(prefixes)),)).fetchall()
    sql = f"SELECT {columns} FROM {table} AS e WHERE e.key >= ? AND e.key < ?"
    return [row for p in prefixes for row in db.execute(sql, (p, p + _HIGHEST)).fetchall()]


class ChainStore(MutableMapping[str, bytes]):
    """Reads from several stores in order, writes to the first.

    A team cache on shared storage behind a fast local one:
    ``ChainStore([DirectoryStore('.taskmap'), fsspec.get_mapper('s3://team/cache')])``.
    Deleting drops the key from every store that has it; a size limit trims the first.
    """

    def __init__(self, stores: Iterable[Store]) -> None:
        self.stores = list(stores)
        if not self.stores:
            raise ValueError("a ChainStore needs at least one store")

    def __repr__(self) -> str:
        return f"ChainStore({self.stores!r})"

    def __getitem__(self, key: str) -> bytes:
        for store in self.stores:
            data = store.get(key)
            if data is not None:
                return data
        raise KeyError(key)

    def __setitem__(self, key: str, value: bytes) -> None:
        self.stores[0][key] = value

    def update(self, pairs: Any = (), /, **kwargs: bytes) -> None:
        self.stores[0].update(pairs, **kwargs)

    def __delitem__(self, key: str) -> None:
        found = False
        for store in self.stores:
            if key in store:
                del store[key]
                found = True
        if not found:
            raise KeyError(key)

    def keys_under(self, prefix: str) -> list[str]:
        return sorted({k for store in self.stores for k in keys_under(store, prefix)})

    def __iter__(self) -> Iterator[str]:
        return iter(sorted({key for store in self.stores for key in store}))

    def __len__(self) -> int:
        return sum(1 for _ in self)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes, held while the block runs (POSIX flock;
    elsewhere no lock, and SQLite's own locking)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def task_dirs(store: Store) -> Path | None:
    """Where the task directories of ``store``'s entries live (rule 8): beside the
    database of a `DirectoryStore` (the first store of a chain); None for a store
    that is not a directory on this machine (a dict, an fsspec mapper)."""
    if isinstance(store, ChainStore):
        store = store.stores[0]
    return store.dirs if isinstance(store, DirectoryStore) else None


def dir_tokens(root: Path | None) -> set[str]:
    """The task tokens (key prefixes, without the slash) that have directories."""
    if root is None:
        return set()
    try:
        return {entry.name for entry in os.scandir(root) if entry.is_dir()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def dirs_under(root: Path | None, tokens: Iterable[str]) -> dict[str, Path]:
    """key -> its directory, for the keys of ``tokens`` that have one."""
    found: dict[str, Path] = {}
    present = dir_tokens(root)
    if not present or root is None:
        return found
    for token in present.intersection(tokens):
        with contextlib.suppress(OSError):
            for entry in os.scandir(root / token):
                if entry.is_dir():
                    found[f"{token}/{entry.name}"] = Path(entry.path)
    return found


def drop_dirs(root: Path | None, keys: Iterable[str]) -> None:
    """Remove the directories of ``keys`` (those that have one: rule 8)."""
    present = dir_tokens(root)
    if not present or root is None:
        return
    emptied = set()
    for key in keys:
        token, _, rest = key.partition("/")
        if token in present and rest and rest != "last":
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                shutil.rmtree(root / key)
                emptied.add(token)
    for token in emptied:
        with contextlib.suppress(OSError):  # not empty: another key's directory stays
            os.rmdir(root / token)


def drop_task_dirs(root: Path | None, tokens: Iterable[str]) -> None:
    """Remove every directory of the tasks of ``tokens`` (clear_cache, reset_tasks)."""
    present = dir_tokens(root)
    if root is None:
        return
    for token in present.intersection(tokens):
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            shutil.rmtree(root / token)


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """No garbage collection while a listing or a prune makes 100,000 records: none of
    them can be garbage, and the collector's passes over them doubled the time."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _close_all(connections: list[sqlite3.Connection]) -> None:
    for db in connections:
        with contextlib.suppress(sqlite3.Error):
            db.close()
    connections.clear()


def release(store: Store) -> None:
    """The calling thread is done with ``store``: close what it opened for this thread."""
    if isinstance(store, ChainStore):
        for inner in store.stores:
            release(inner)
    elif isinstance(store, DirectoryStore):  # a user's store is the user's to manage
        store.release()


def close(store: Store) -> None:
    """A run is over: close what ``store`` holds open (it reopens on next use)."""
    if isinstance(store, ChainStore):
        for inner in store.stores:
            close(inner)
    elif isinstance(store, DirectoryStore):  # a user's store is closed by its owner
        store.close()


# -- what taskmap asks of any store: the fast way when it has one ----------------------


def keys_under(store: Store, prefix: str) -> list[str]:
    """The keys of ``store`` that start with ``prefix``, through ``keys_under`` when the
    store has it, else by listing every key."""
    method = getattr(store, "keys_under", None)
    if method is not None:
        return list(method(prefix))
    return sorted(key for key in store if isinstance(key, str) and key.startswith(prefix))


def keys_under_many(store: Store, prefixes: Sequence[str]) -> set[str] | None:
    """The keys of ``store`` under any of ``prefixes``, or None when the store cannot
    say without listing every key (then ask for each key: a run never lists a store)."""
    if isinstance(store, DirectoryStore):
        return set(store.keys_under_many(prefixes))
    if isinstance(store, ChainStore):
        found: set[str] = set()
        for inner in store.stores:
            keys = keys_under_many(inner, prefixes)
            if keys is None:
                return None
            found |= keys
        return found
    return None


def stat_under(store: Store, prefixes: Sequence[str]) -> list[Stat]:
    """A `Stat` of every entry under ``prefixes``, in no particular order; from the
    store's own records when it keeps them (no value is read), else by reading each
    value."""
    if isinstance(store, DirectoryStore):
        return store.stat_under(prefixes)
    if isinstance(store, ChainStore):
        seen: dict[str, Stat] = {}
        for inner in store.stores:  # the first store's entry is the one a run reads
            for stat in stat_under(inner, prefixes):
                seen.setdefault(stat.key, stat)
        return list(seen.values())
    found = []
    keys = sorted({key for prefix in prefixes for key in keys_under(store, prefix)})
    for key in keys:
        data = store.get(key)
        if data is not None:
            found.append(Stat(key, len(data), None, *_fields(data)))
    return found


def commit(
    store: Store,
    writes: Sequence[tuple[str, bytes]],
    deletes: Sequence[str],
    uses: Sequence[str],
    heads: Mapping[str, tuple[str | None, float | None, str | None]] | None = None,
) -> None:
    """Write, delete, and record uses: one transaction where the store offers it."""
    if isinstance(store, DirectoryStore):
        store.commit(writes, deletes, uses, heads=heads)
        return
    if writes:
        store.update(writes)
    for key in deletes:
        store.pop(key, None)
    if uses and isinstance(store, ChainStore):  # a hit may come from any of its stores
        when = time.time()
        for inner in store.stores:
            if isinstance(inner, DirectoryStore):
                inner.commit(uses=uses, when=when)


def usage(store: Store) -> tuple[int, int] | None:
    """``(entries, bytes)`` of a store that keeps count (the first of a chain), else None."""
    if isinstance(store, ChainStore):
        store = store.stores[0]
    return store.usage() if isinstance(store, DirectoryStore) else None


def trim(store: Store, max_bytes: int) -> list[Stat] | None:
    """Trim a store that records use (the first of a chain) to ``max_bytes``, least
    recently used first; None when it records no use (the caller trims by listing)."""
    if isinstance(store, ChainStore):
        store = store.stores[0]
    return store.trim(max_bytes) if isinstance(store, DirectoryStore) else None


def delete(store: Store, keys: Sequence[str]) -> int:
    """Drop ``keys`` from ``store`` (in one transaction where it can); return how many went."""
    method = getattr(store, "delete", None)
    if callable(method):
        return int(method(keys))
    count = 0
    for key in keys:
        if store.pop(key, None) is not None:
            count += 1
    return count


def _last_use(stat: Stat) -> float:
    """When an entry was last used: recorded by the store, else when it was written."""
    if stat.used is not None:
        return stat.used
    return stat.written or 0.0


_USED = operator.itemgetter(2)  # a Stat's last use, where the store records it


def _is_value(stat: Stat) -> bool:
    return not stat.key.endswith("/last")


def prune(
    store: Store,
    prefixes: Sequence[str],
    *,
    keep_last: int | None,
    older_than: float | None,
    now: float | None = None,
) -> list[Stat]:
    """Drop, among the entries under ``prefixes`` (one prefix per task), those beyond
    each task's ``keep_last`` most recently used, and those last used more than
    ``older_than`` seconds ago.  ``last`` records stay.  Returns what was dropped."""
    now = time.time() if now is None else now
    cutoff = None if older_than is None else now - older_than
    stats = stat_under(store, prefixes)
    dropped: list[Stat] = []
    if keep_last == 0 and cutoff is None:  # every value goes: no ranking
        dropped = [stat for stat in stats if not stat[0].endswith("/last")]
    else:
        # 100,000 entries a prune: plain loops over tuples, no call per entry
        groups: dict[str, list[Stat]] = {}
        for stat in stats:
            key = stat[0]
            if key.endswith("/last"):
                continue
            token = key[: key.index("/")]
            group = groups.get(token)
            if group is None:
                groups[token] = [stat]
            else:
                group.append(stat)
        by_use = _last_use if any(stat[2] is None for stat in stats) else _USED
        for group in groups.values():
            if cutoff is None and (keep_last is None or len(group) <= keep_last):
                continue
            group.sort(key=by_use, reverse=True)  # most recently used first
            if keep_last is not None:
                dropped += group[keep_last:]
                del group[keep_last:]
            if cutoff is not None:
                dropped += [stat for stat in group if by_use(stat) < cutoff]
    delete(store, [stat[0] for stat in dropped])
    return dropped


def trim_listed(store: Store, prefixes: Sequence[str], max_bytes: int) -> list[Stat]:
    """`trim` for a store that records no use: the entries under ``prefixes`` (and
    nothing else: the store is not listed), oldest written first, until they hold at
    most ``max_bytes``."""
    stats = stat_under(store, prefixes)
    excess = sum(stat.size for stat in stats) - max_bytes
    dropped = []
    for stat in sorted(filter(_is_value, stats), key=_last_use):
        if excess <= 0:
            break
        dropped.append(stat)
        excess -= stat.size
    delete(store, [stat.key for stat in dropped])
    return dropped


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_DURATION_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(where: str, value: object) -> int:
    """A number of bytes from an int or a string such as ``'500MB'``, ``'20GB'`` or
    ``'1.5GiB'`` (kB, MB, GB, TB: powers of 1000; KiB, MiB, GiB, TiB: of 1024).

    Raises:
        ValueError: anything else, named with ``where``.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        number, unit = _split_unit(value)
        factor = _SIZE_UNITS.get(unit.lower())
        if number is not None and factor is not None:
            return int(number * factor)
    raise ValueError(
        f"{where} must be a number of bytes or a size such as '500MB' or '20GB' (got {value!r})"
    )


def parse_duration(where: str, value: object) -> float:
    """Seconds from a number, a `datetime.timedelta`, or a string such as ``'30d'``,
    ``'12h'``, ``'90min'`` or ``'2w'`` (units s, m or min, h, d, w).

    Raises:
        ValueError: anything else, named with ``where``.
    """
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif hasattr(value, "total_seconds") and callable(value.total_seconds):
        seconds = float(value.total_seconds())
    elif isinstance(value, str):
        number, unit = _split_unit(value)
        factor = _DURATION_UNITS.get(unit.lower())
        if number is not None and factor is not None:
            seconds = number * factor
    if seconds is not None and seconds >= 0 and seconds == seconds and seconds != float("inf"):
        return seconds
    raise ValueError(
        f"{where} must be a number of seconds, a timedelta or a duration such as '30d' or "
        f"'12h' (got {value!r})"
    )


def _split_unit(text: str) -> tuple[float | None, str]:
    """``'20 GB'`` -> ``(20.0, 'GB')``; ``(None, '')`` when there is no number."""
    text = text.strip()
    end = len(text)
    while end and not (text[end - 1].isdigit() or text[end - 1] == "."):
        end -= 1
    try:
        number = float(text[:end])
    except ValueError:
        return None, ""
    if number < 0 or number != number or number == float("inf"):
        return None, ""
    return number, text[end:].strip()


def open_store(spec: object) -> Store:
    """A store from what ``cache=`` accepts: a directory path, a mapping, or a list
    of those (a `ChainStore`).

    Raises:
        TypeError: ``spec`` is none of these.
    """
    if isinstance(spec, str | os.PathLike):
        return DirectoryStore(spec)
    if isinstance(spec, MutableMapping):
        return spec
    if isinstance(spec, list | tuple) and spec:
        return ChainStore(open_store(s) for s in spec)
    raise TypeError(
        "cache must be a directory path, a MutableMapping[str, bytes] or a list of those "
        f"(got {spec!r:.60}, {with_article(type(spec).__name__)})"
    )
