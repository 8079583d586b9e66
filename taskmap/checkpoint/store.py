"""Stores: where cache entries live.  Any ``MutableMapping[str, bytes]`` is a store.

Design note
-----------
The store protocol is the mapping protocol, nothing more: ``store[key]`` returns an
entry's bytes or raises KeyError, ``store[key] = data`` writes one, ``del store[key]``
drops one, iterating lists the keys.  A dict, an ``fsspec`` mapper (remote storage)
or a ``diskcache.Cache`` works as it is.  Two optional methods make a store faster,
and are used when present: ``update(pairs)`` writing many entries at once,
``get_many(keys)`` reading many (a dict of those found), and ``keys_under(prefix)``
listing the keys that start with a prefix.

Keys are ``'<task token>/<32 hex digits>'``; a task's token is its name made safe
for paths plus a short digest of the name, so the entries of one task share a
prefix.  ``'<task token>/failed'`` remembers that the task failed (the failure's
key, to explain the rerun); it holds no value.

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
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import with_article

__all__ = ["ChainStore", "DirectoryStore", "Store", "open_store"]

Store = MutableMapping[str, bytes]

DB_NAME = "taskmap-cache.sqlite3"
_SCHEMA = "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, value BLOB NOT NULL)"


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
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._finalizer = weakref.finalize(self, _close_all, self._connections)
        self._db()  # fail now, naming the file, rather than in the middle of a run

    def __repr__(self) -> str:
        return f"DirectoryStore({str(self.path)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (DirectoryStore, (str(self.path),))

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    def _connect(self) -> sqlite3.Connection:
        # Switching a new file to WAL mode writes its header outside SQLite's busy
        # handler: a second process opening it then fails at once with "database is
        # locked".  Processes opening the store take turns, on a lock file.
        with _file_lock(self.path / f"{DB_NAME}.lock"):
            # one thread uses each connection; close() may run on another thread
            db = sqlite3.connect(
                self.file, timeout=60, isolation_level=None, check_same_thread=False
            )
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.execute(_SCHEMA)
            except sqlite3.DatabaseError as exc:
                db.close()
                raise sqlite3.DatabaseError(
                    f"cache database {str(self.file)!r} cannot be used ({exc}); delete it, "
                    "or choose another cache directory"
                ) from exc
        return db

    def __getitem__(self, key: str) -> bytes:
        row = self._db().execute("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return row[0]  # type: ignore[no-any-return]

    def get(self, key: str, default: Any = None) -> Any:
        row = self._db().execute("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The entries of those ``keys`` that exist, read in a few queries."""
        db = self._db()
        found: dict[str, bytes] = {}
        for start in range(0, len(keys), 500):  # SQLite caps the parameters of a query
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT key, value FROM entries WHERE key IN ({marks})"
            found.update(db.execute(sql, chunk).fetchall())
        return found

    def __contains__(self, key: object) -> bool:
        sql = "SELECT 1 FROM entries WHERE key = ?"
        return self._db().execute(sql, (key,)).fetchone() is not None

    def __setitem__(self, key: str, value: bytes) -> None:
        self.update([(key, value)])

    def update(self, pairs: Any = (), /, **kwargs: bytes) -> None:
        """Write many entries in one transaction (all or none of them)."""
        items = list(pairs.items() if isinstance(pairs, Mapping) else pairs)
        items += kwargs.items()
        if not items:
            return
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?)", items)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def __delitem__(self, key: str) -> None:
        if not self.delete([key]):
            raise KeyError(key)

    def delete(self, keys: Iterable[str]) -> int:
        """Drop the entries of ``keys`` (missing ones are ignored); return how many went."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            count = sum(
                db.execute("DELETE FROM entries WHERE key = ?", (key,)).rowcount for key in keys
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return count

    def keys_under(self, prefix: str) -> list[str]:
        """The keys starting with ``prefix``, sorted."""
        sql = "SELECT key FROM entries WHERE key >= ? AND key < ? ORDER BY key"
        rows = self._db().execute(sql, (prefix, prefix + "\U0010ffff")).fetchall()
        return [key for (key,) in rows]

    def __iter__(self) -> Iterator[str]:
        rows = self._db().execute("SELECT key FROM entries ORDER BY key").fetchall()
        return iter([key for (key,) in rows])

    def __len__(self) -> int:
        return int(self._db().execute("SELECT count(*) FROM entries").fetchone()[0])

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


class ChainStore(MutableMapping[str, bytes]):
    """Reads from several stores in order, writes to the first.

    A team cache on shared storage behind a fast local one:
    ``ChainStore([DirectoryStore('.taskmap'), fsspec.get_mapper('s3://team/cache')])``.
    Deleting drops the key from every store that has it.
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


def keys_under(store: Store, prefix: str) -> list[str]:
    """The keys of ``store`` that start with ``prefix``, through ``keys_under`` when the
    store has it, else by listing every key."""
    method = getattr(store, "keys_under", None)
    if method is not None:
        return list(method(prefix))
    return sorted(key for key in store if isinstance(key, str) and key.startswith(prefix))


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
