"""Stores and the entry format: the mapping protocol, atomic batches, concurrent writers."""

from __future__ import annotations

import datetime
import functools
import gc
import json
import multiprocessing
import operator
import os
import pickle
import platform
import random
import re
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import cloudpickle
import pytest

import taskmap
import taskmap.checkpoint.store as store_module
from taskmap.checkpoint.encoders import (
    CorruptEntryError,
    JsonEncoder,
    PickleEncoder,
    pack_entry,
    read_header,
    unpack_entry,
)
from taskmap.checkpoint.store import (
    DB_NAME,
    ChainStore,
    DirectoryStore,
    keys_under,
    open_store,
    parse_duration,
    parse_size,
)


def test_directory_store_is_a_mutable_mapping(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "s")
    assert len(store) == 0
    assert list(store) == []
    store["t-1/aa"] = b"one"
    store.update({"t-1/bb": b"two", "t-2/aa": b"three"})
    assert store["t-1/aa"] == b"one"
    assert store.get("missing") is None
    assert "t-1/bb" in store
    assert "nope" not in store
    assert sorted(store) == ["t-1/aa", "t-1/bb", "t-2/aa"]
    assert len(store) == 3
    assert store.keys_under("t-1/") == ["t-1/aa", "t-1/bb"]
    del store["t-1/aa"]
    with pytest.raises(KeyError):
        del store["t-1/aa"]
    with pytest.raises(KeyError):
        store["t-1/aa"]
    assert store.delete(["t-1/bb", "absent"]) == 1
    reopened = pickle.loads(pickle.dumps(store))
    assert dict(reopened) == {"t-2/aa": b"three"}
    store.close()
    assert store["t-2/aa"] == b"three"  # reopens on use


def test_keys_under_works_for_any_mapping() -> None:
    store = {"a-1/x": b"", "a-10/x": b"", "a-1/y": b""}
    assert keys_under(store, "a-1/") == ["a-1/x", "a-1/y"]


def test_open_store_accepts_paths_mappings_and_lists(tmp_path: Path) -> None:
    assert isinstance(open_store(tmp_path / "a"), DirectoryStore)
    assert isinstance(open_store(str(tmp_path / "b")), DirectoryStore)
    plain: dict[str, bytes] = {}
    assert open_store(plain) is plain
    chained = open_store([tmp_path / "c", plain])
    assert isinstance(chained, ChainStore)
    assert chained.stores[1] is plain


def test_chain_store_reads_in_order_writes_first_deletes_everywhere() -> None:
    first: dict[str, bytes] = {"k": b"1"}
    second: dict[str, bytes] = {"k": b"2", "only": b"3"}
    chain = ChainStore([first, second])
    assert chain["k"] == b"1"
    assert chain["only"] == b"3"
    chain["new"] = b"4"
    assert first["new"] == b"4"
    assert "new" not in second
    assert sorted(chain) == ["k", "new", "only"]
    assert len(chain) == 3
    del chain["k"]
    assert "k" not in first
    assert "k" not in second
    with pytest.raises(KeyError):
        del chain["k"]
    with pytest.raises(ValueError, match="at least one store"):
        ChainStore([])


def _writer(path: str, worker: int, count: int) -> None:
    store = DirectoryStore(path)
    for i in range(count):
        store.update({f"w{worker}/{i}": bytes([worker]) * 1000, "shared/k": bytes([worker]) * 50})


def test_concurrent_writers_in_several_processes_do_not_corrupt_the_store(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "s")
    DirectoryStore(path)
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_writer, args=(path, w, 200)) for w in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    store = DirectoryStore(path)
    assert len(store) == 4 * 200 + 1
    for w in range(4):
        assert all(store[f"w{w}/{i}"] == bytes([w]) * 1000 for i in range(200))
    assert store["shared/k"] in {bytes([w]) * 50 for w in range(4)}


def test_entry_header_names_encoder_and_versions() -> None:
    payload = PickleEncoder().encode({"x": 1})
    out = bytes(range(16))
    data = pack_entry(payload, "pickle", out, {"task": "a"})
    name, digest, body = unpack_entry(data)
    assert (name, digest) == ("pickle", out)
    assert PickleEncoder().decode(body) == {"x": 1}  # type: ignore[arg-type]
    header = read_header(data)
    assert header["enc"] == "pickle"
    assert header["task"] == "a"
    assert header["py"] == platform.python_version()
    assert header["cp"] == cloudpickle.__version__
    assert header["out"] == out.hex()
    assert header["size"] == len(payload)
    assert unpack_entry(pack_entry(payload, "pickle", b"", {}))[1] == b""


def test_damaged_header_is_detected_by_listings_only() -> None:
    data = bytearray(pack_entry(b"xyz", "json", b"", {"task": "a"}))
    start = data.index(b"{")
    data[start] = ord("!")
    assert unpack_entry(bytes(data))[2] == b"xyz"  # a hit does not read the header
    with pytest.raises(CorruptEntryError, match="not valid JSON"):
        read_header(bytes(data))


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda d: d[:-1], "torn or corrupt"),
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "torn or corrupt"),
        (lambda d: d[:3], "shorter than its prefix"),
        (lambda d: b"XXXX" + d[4:], "not a taskmap cache entry"),
        (lambda d: d[:4] + b"\x02" + d[5:], "entry format 2"),
    ],
)
def test_damaged_entries_are_detected(mangle: object, message: str) -> None:
    data = pack_entry(PickleEncoder().encode(list(range(100))), "pickle", b"", {})
    with pytest.raises(CorruptEntryError, match=message):
        unpack_entry(mangle(data))  # type: ignore[operator]


def test_pickle_encoder_compresses_large_payloads_only() -> None:
    small, large = PickleEncoder().encode("x"), PickleEncoder().encode("x" * 100_000)
    assert small[:1] == b"P"
    assert large[:1] == b"Z"
    assert len(large) < 1000
    assert PickleEncoder(level=0).encode("x" * 100_000)[:1] == b"P"
    assert PickleEncoder().decode(large) == "x" * 100_000
    with pytest.raises(
        ValueError, match=r"compression level must be an int from 0 to 22 \(got 23\)"
    ):
        PickleEncoder(level=23)


def test_pickle_encoder_stores_lambdas_and_main_classes_by_value() -> None:
    encoded = PickleEncoder().encode(lambda x: x + 1)
    assert PickleEncoder().decode(encoded)(1) == 2


def test_json_encoder_round_trips_json_values() -> None:
    value = {"a": [1, 2.5, None, True], "é": "ü"}
    assert JsonEncoder().decode(JsonEncoder().encode(value)) == value


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("runner", [taskmap.run, taskmap.run_async, taskmap.run_parallel_async])
def test_fifty_cached_graphs_in_one_process_leave_no_descriptor_open(
    tmp_path: Path, runner: Callable[..., taskmap.Graph]
) -> None:
    # gh-issue 11: every SQLite connection is closed (Python 3.13 warns of each one
    # collected open); a service runs graphs all day in one process
    kept = []  # a service keeps its graphs: their stores are not collected

    def graph_run(i: int) -> None:
        graph = taskmap.create_graph(
            {"a": functools.partial(operator.add, i, i), "b": functools.partial(operator.mul, 2)},
            {"a": [], "b": ["a"]},
            cache=tmp_path / f"c{i % 5}",  # new stores and reused directories alike
        )
        options = {"ncores": 1} if runner is taskmap.run_parallel_async else {}
        graph = runner(graph, **options)
        assert graph.results == {"a": 2 * i, "b": 4 * i}
        kept.append(graph)

    for i in range(3):  # warm: imports, the forkserver, loggers
        graph_run(i)
    gc.collect()
    before = open_descriptors()
    for i in range(50):
        graph_run(i)
    gc.collect()
    assert open_descriptors() <= before


def test_a_directory_store_closes_its_connections_when_released_closed_or_collected(
    tmp_path: Path,
) -> None:
    store = DirectoryStore(tmp_path / "s")
    store["k"] = b"v"

    def use_then_release(store: DirectoryStore) -> None:
        store.get("k")
        store.release()

    thread = threading.Thread(target=use_then_release, args=(store,))
    thread.start()
    thread.join()
    assert len(store._connections) == 1  # the creating thread's
    store.close()
    assert store._connections == []
    assert store["k"] == b"v"  # reopens on use
    connections = list(store._connections)
    del store
    gc.collect()
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        connections[0].execute("SELECT 1")


# -- issue 14: size and use beside the entries, migration, healing --------------------------


def entry(task: str, value: object = 0, t: float = 1000.0) -> bytes:
    payload = PickleEncoder().encode(value)
    return pack_entry(payload, "pickle", bytes(16), {"task": task, "t": t})


def old_store(path: Path, items: dict[str, bytes]) -> None:
    """A store as taskmap wrote it before issue 14: one table, user_version 0."""
    path.mkdir()
    db = sqlite3.connect(path / DB_NAME, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE entries (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
    db.executemany("INSERT INTO entries VALUES (?, ?)", items.items())
    db.close()


def test_a_store_made_before_use_was_recorded_is_migrated_in_place(tmp_path: Path) -> None:
    items = {
        "a-1/" + "0" * 32: entry("a", list(range(1000)), t=1000.0),
        "a-1/last": b"a-1/00 code -",
        "b-2/" + "1" * 32: entry("b", "x", t=2000.0),
        "mine": b"not a taskmap entry",
    }
    old_store(tmp_path / "s", items)
    store = DirectoryStore(tmp_path / "s")
    assert dict(store.items()) == items  # every entry kept as it was
    values = {k: v for k, v in items.items() if not k.endswith("/last")}
    assert store.usage() == (3, sum(map(len, values.values())))  # records apart (rule 9)
    stats = {s.key: s for s in store.stat_under([""])}
    assert {k: s.size for k, s in stats.items()} == {k: len(v) for k, v in values.items()}
    assert stats["a-1/" + "0" * 32][1:] == (
        len(items["a-1/" + "0" * 32]),
        1000.0,
        "a",
        1000.0,
        "pickle",
    )
    assert stats["b-2/" + "1" * 32].used == 2000.0  # last use unknown: when it was written
    assert stats["mine"][3:] == (None, None, None)  # not a taskmap entry
    store.close()
    db = sqlite3.connect(tmp_path / "s" / DB_NAME)
    assert db.execute("PRAGMA user_version").fetchone() == (2,)
    db.close()
    assert DirectoryStore(tmp_path / "s").usage() == (3, sum(map(len, values.values())))


def test_a_store_an_older_taskmap_wrote_to_is_reindexed_when_opened(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "s")
    store.update({"t-1/a": entry("t", 1), "t-1/b": entry("t", 2), "t-1/d": entry("t", 4)})
    store.commit(uses=["t-1/d"], when=5.0)
    store.close()
    for statements in (  # what an older taskmap does: the entries table only
        ["INSERT OR REPLACE INTO entries VALUES ('t-1/a', ?)"],
        ["INSERT INTO entries VALUES ('t-1/c', ?)"],
        ["DELETE FROM entries WHERE key = 't-1/b'"],
    ):
        db = sqlite3.connect(tmp_path / "s" / DB_NAME, isolation_level=None)
        for sql in statements:
            db.execute(sql, (entry("t", "a longer value", t=7.0),) if "?" in sql else ())
        db.close()
        store = DirectoryStore(tmp_path / "s")
        values = dict(store.items())
        assert store.usage() == (len(values), sum(map(len, values.values())))
        stats = {s.key: s for s in store.stat_under(["t-1/"])}
        assert {k: s.size for k, s in stats.items()} == {k: len(v) for k, v in values.items()}
        assert stats["t-1/d"].used == 5.0  # a known key keeps its last use
        store.close()
    assert stats["t-1/c"][2:] == (7.0, "t", 7.0, "pickle")  # a new one: when written


def test_trim_drops_least_recently_used_entries_and_keeps_last_records(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "s")
    old, mid, new = entry("t", "a" * 100), entry("t", "b" * 100), entry("t", "c" * 100)
    store.update({"t-1/old": old, "t-1/mid": mid, "t-1/new": new, "t-1/last": b"x" * 10})
    store.commit(uses=["t-1/last"], when=0.0)  # the oldest of all, yet kept
    store.commit(uses=["t-1/old"], when=1.0)
    store.commit(uses=["t-1/new"], when=2.0)
    store.commit(uses=["t-1/mid"], when=3.0)  # read most recently
    assert store.trim(10**9) == []
    dropped = store.trim(len(mid) + 10)
    assert [s.key for s in dropped] == ["t-1/old", "t-1/new"]
    assert sorted(store) == ["t-1/last", "t-1/mid"]
    assert store.usage() == (1, len(mid))  # a record is kept apart (rule 9), not counted


def test_keys_under_many_lists_only_those_prefixes(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "s")
    store.update({"a-1/x": b"", "a-1/last": b"", "a-10/x": b"", "b-2/y": b"", "c-3/z": b""})
    assert sorted(store.keys_under_many(["a-1/", "c-3/"])) == ["a-1/last", "a-1/x", "c-3/z"]
    assert store.keys_under_many([]) == []


def damage_root_of(path: Path, table: str) -> None:
    """Overwrite the root page of ``table``: the file opens, reading the table fails."""
    db = sqlite3.connect(path / DB_NAME)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    (page,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    with open(path / DB_NAME, "r+b") as file:
        file.seek((root - 1) * page)
        file.write(random.Random(6).randbytes(page))


def test_a_store_damaged_while_open_heals_once_for_every_thread(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "s")
    store.update({f"t-1/{i}": entry("t", i) for i in range(50)})
    assert store.get("t-1/3") is not None  # the main thread holds a connection
    opened, damaged = threading.Event(), threading.Event()

    def writer() -> None:  # the writer thread, with its own connection, meets the damage
        store.get("t-1/4")
        opened.set()
        damaged.wait(10)
        store.update({"t-1/new": b"fresh"})
        store.release()

    def damage_while_open() -> None:
        thread = threading.Thread(target=writer)
        thread.start()
        opened.wait(10)
        damage_root_of(tmp_path / "s", "entries")
        damaged.set()
        thread.join(10)

    database = str(tmp_path / "s" / DB_NAME)
    with pytest.warns(
        taskmap.CacheWarning,
        match=re.escape(f"cache database {database!r} cannot be used (")
        + r"database disk image is malformed\): moved it aside to "
        + re.escape(f"'{database}.corrupt-")
        + r"\d{8}-\d{6}' and started a fresh one \(its tasks run again\)$",
    ) as caught:
        damage_while_open()
    assert len(caught) == 1
    [aside] = (tmp_path / "s").glob(f"{DB_NAME}.corrupt-*[0-9]")
    assert str(aside) in str(caught[0].message)
    assert store.get("t-1/3") is None  # the main thread reconnects: to the fresh file
    assert store.get("t-1/new") == b"fresh"
    assert store.usage() == (1, 5)
    assert len(list((tmp_path / "s").glob(f"{DB_NAME}.corrupt-*[0-9]"))) == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (123, 123),
        ("500MB", 500 * 10**6),
        ("20GB", 20 * 10**9),
        ("1.5 GiB", 3 * 2**29),
        ("64kb", 64_000),
        ("100", 100),
        ("7 B", 7),
        ("2tb", 2 * 10**12),
    ],
)
def test_sizes_in_bytes_or_with_a_unit(value: object, expected: int) -> None:
    assert parse_size("cache_limit", value) == expected


@pytest.mark.parametrize("value", ["20 parsecs", "GB", "-1GB", -5, 1.5, True, None, "nanGB", ""])
def test_a_bad_size_is_a_value_error_naming_it(value: object) -> None:
    with pytest.raises(
        ValueError,
        match=r"^cache_limit must be a number of bytes or a size such as '500MB' or '20GB' "
        + re.escape(f"(got {value!r})")
        + "$",
    ):
        parse_size("cache_limit", value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (30, 30.0),
        (1.5, 1.5),
        (datetime.timedelta(days=2), 172800.0),
        ("30d", 30 * 86400.0),
        ("12h", 43200.0),
        ("90min", 5400.0),
        ("90m", 5400.0),
        ("2w", 14 * 86400.0),
        ("45 s", 45.0),
    ],
)
def test_durations_in_seconds_a_timedelta_or_with_a_unit(value: object, expected: float) -> None:
    assert parse_duration("older_than", value) == expected


@pytest.mark.parametrize("value", ["soon", "3 fortnights", -1, "-2d", True, [], "inf d"])
def test_a_bad_duration_is_a_value_error_naming_it(value: object) -> None:
    with pytest.raises(
        ValueError,
        match=r"^older_than must be a number of seconds, a timedelta or a duration such as "
        r"'30d' or '12h' " + re.escape(f"(got {value!r})") + "$",
    ):
        parse_duration("older_than", value)


@pytest.mark.parametrize(
    "task", ["load", 'quote " in it', "back\\slash", ',"t":1', "é", ("tuple", 1)]
)
def test_a_head_says_task_time_and_encoder_whatever_the_name(task: object) -> None:
    from taskmap.checkpoint.encoders import entry_head, parse_head

    label = task if isinstance(task, str) else repr(task)
    fast = f'"code":"00","in":[],"task":{json.dumps(label)},"t":1234.5'  # as a run writes it
    for meta in (fast, {"t": 1234.5, "task": label, "extra": [1, 2]}):
        data = pack_entry(b"P", "json", b"", meta)
        head = entry_head(data)
        assert head is not None
        assert parse_head(head) == (label, 1234.5, "json")


def test_dropped_entries_give_their_pages_back_to_the_file_system(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "s")
    store.update({f"t-1/{i:05d}": entry("t", os.urandom(2000)) for i in range(1000)})
    store.close()
    full = (tmp_path / "s" / DB_NAME).stat().st_size
    assert full > 2_000_000
    assert store.delete([f"t-1/{i:05d}" for i in range(990)]) == 990
    assert [s.key for s in store.trim(10_000)] == [f"t-1/{i:05d}" for i in range(990, 996)]
    store.close()  # the last connection checkpoints the log into the file
    assert (tmp_path / "s" / DB_NAME).stat().st_size < full / 20
    assert store.usage() == (4, sum(len(v) for v in store.values()))
    assert store.usage()[1] <= 10_000


@pytest.mark.parametrize("others", [0, 100])  # a scan of most of the store, or a join
def test_stat_under_gives_the_entries_under_those_prefixes_only(
    tmp_path: Path, others: int
) -> None:
    store = DirectoryStore(tmp_path / "s")
    store.update({f"other-{i:03d}/x": entry("other") for i in range(others)})
    store.update({"a-1/x": entry("a"), "a-1/last": b"r", "a-10/x": entry("a10"), "b-2/y": b"?"})
    found = sorted(store.stat_under(["a-1/", "b-2/"]))
    assert [(s.key, s.task) for s in found] == [("a-1/x", "a"), ("b-2/y", None)]  # no record
    assert len(store.stat_under([""])) == others + 3


@pytest.mark.parametrize("size", [0, 10, 5000, 100_000])
@pytest.mark.parametrize("secret", [b"s", bytes(range(64)), bytes(range(100))])
def test_a_signature_is_the_hmac_sha256_of_key_and_entry(secret: bytes, size: int) -> None:
    import hmac

    from taskmap.checkpoint.encoders import sign_entry, verify_entry

    data = os.urandom(size)
    signed = sign_entry(secret, "t-1/é", data)
    assert signed[5:37] == hmac.digest(secret, "t-1/é".encode() + b"\0" + data, "sha256")
    assert signed[37:] == data
    assert verify_entry(secret, "t-1/é", signed)
    assert not verify_entry(secret, "t-1/e", signed)  # bound to its key
    assert not verify_entry(secret + b"!", "t-1/é", signed)
    assert not verify_entry(secret, "t-1/é", data)  # unsigned


@pytest.mark.parametrize(("stored", "dropped"), [(1200, 1150), (3000, 1000)])
def test_deleting_many_keys_keeps_the_totals_and_the_survivors(
    tmp_path: Path, stored: int, dropped: int
) -> None:
    """Many keys at once go set by set; most of the store at once, by copying what stays
    into new tables (then VACUUM); either way the survivors, totals and rowid mark hold."""
    store = DirectoryStore(tmp_path)
    entries = [(f"t-{i % 7}/{i:032x}", bytes([i % 251]) * (50 + i % 13)) for i in range(stored)]
    store.commit(entries)
    doomed = [key for key, _ in entries[:dropped]] + ["t-0/not-stored"]
    assert store.delete(doomed) == dropped
    survivors = dict(entries[dropped:])
    assert store.usage() == (len(survivors), sum(map(len, survivors.values())))
    assert store.get_many(list(survivors)) == survivors
    assert store.get(entries[0][0]) is None
    store.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    try:  # a new process would find it consistent: no re-index
        assert store_module._consistent(db)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()
    again = DirectoryStore(tmp_path)
    assert sorted(again) == sorted(survivors)
    again.close()


@pytest.mark.parametrize("json_each", [True, False], ids=["json_each", "chunks"])
def test_many_keys_are_read_and_their_uses_recorded_with_or_without_json_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, json_each: bool
) -> None:
    """`get_many` takes one statement over a JSON array of keys, or chunks of 500 where
    SQLite lacks json_each; a commit's uses go to the log, or straight into meta in
    chunks: the same answers."""
    if not json_each:  # and so no log of uses either: they go straight into meta
        monkeypatch.setattr(store_module, "_JSON_EACH", {sqlite3.sqlite_version: False})
    store = DirectoryStore(tmp_path)
    entries = {f"t-{i % 3}/{i:032x}": bytes([i % 251]) * 20 for i in range(1234)}
    store.commit(list(entries.items()), when=1000.0)
    asked = [*reversed(entries), "t-0/not-stored"]
    assert store.get_many(asked) == entries
    recent = list(entries)[::2]
    store.commit(uses=recent, when=5000.0)
    used = {s.key: s.used for s in store.stat_under([""])}  # a log is folded in first
    assert used == {key: 5000.0 if key in recent else 1000.0 for key in entries}
    store.commit(uses=recent[:10], when=5000.0 + store_module.USE_RESOLUTION / 2)  # too soon
    assert {s.key: s.used for s in store.stat_under([""])} == used
    store.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    try:
        assert db.execute("SELECT count(*) FROM uses").fetchone() == (0,)  # folded, or unused
    finally:
        db.close()


def test_the_log_of_uses_is_folded_once_it_holds_enough_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each commit of uses adds one row to the log; at `_FOLD_ROWS` rows it is folded
    into meta (each key's last use) without anything reading it, and emptied."""
    monkeypatch.setattr(store_module, "_FOLD_ROWS", 3)
    store = DirectoryStore(tmp_path)
    store.commit([("t-1/a", b"1"), ("t-1/b", b"2")], when=100.0)
    db = sqlite3.connect(tmp_path / DB_NAME)
    try:
        for when in (1000.0, 2000.0):
            store.commit(uses=["t-1/a"], when=when)
        logged = db.execute("SELECT count(*) FROM uses").fetchone()
        used = dict(db.execute("SELECT key, used FROM meta").fetchall())
        assert (logged, used) == ((2,), {"t-1/a": 100.0, "t-1/b": 100.0})  # not folded yet
        store.commit(uses=["t-1/b", "t-1/a"], when=1500.0)  # the third row: folded
        # (logged out of order, as two processes may: each key takes its last use)
        assert db.execute("SELECT count(*) FROM uses").fetchone() == (0,)
        used = dict(db.execute("SELECT key, used FROM meta").fetchall())
        assert used == {"t-1/a": 2000.0, "t-1/b": 1500.0}
    finally:
        db.close()
        store.close()


def test_a_store_of_schema_1_gains_the_log_of_uses_and_keeps_its_last_uses(
    tmp_path: Path,
) -> None:
    store = DirectoryStore(tmp_path)
    store.commit([("t-1/a", b"1")], when=100.0)
    store.close()
    db = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    db.execute("DROP TABLE uses")
    db.execute("PRAGMA user_version = 1")
    db.close()
    store = DirectoryStore(tmp_path)
    store.commit(uses=["t-1/a"], when=500.0)
    assert [(s.key, s.used) for s in store.stat_under([""])] == [("t-1/a", 500.0)]
    store.close()
    db = sqlite3.connect(tmp_path / DB_NAME)
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (2,)
    finally:
        db.close()


def test_last_records_are_kept_apart_and_found_where_an_older_taskmap_wrote_them(
    tmp_path: Path,
) -> None:
    """Rule 9: a task's ``last`` record is one row of its own table, outside the
    entries' count; one an older taskmap wrote among the entries is still read,
    listed and deleted."""
    value = entry("t")
    store = DirectoryStore(tmp_path)
    store.update({"t-1/" + "a" * 32: value, "t-1/last": b"mine"})
    db = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    try:
        assert db.execute("SELECT key FROM records").fetchall() == [("t-1/last",)]
        assert db.execute("SELECT key FROM entries").fetchall() == [("t-1/" + "a" * 32,)]
        db.execute("BEGIN")  # an older taskmap writes its record as an entry, and counts it
        db.execute("INSERT INTO entries VALUES ('u-2/last', x'6f6c64')")
        db.execute("INSERT INTO meta VALUES ('u-2/last', 3, 0.0, NULL, NULL, NULL)")
        db.execute(store_module._COUNT, (1, 3))
        db.execute("COMMIT")
    finally:
        db.close()
    store.release()
    assert store.get("u-2/last") == b"old"
    assert "u-2/last" in store
    assert store.get_many(["t-1/last", "u-2/last"]) == {"t-1/last": b"mine", "u-2/last": b"old"}
    assert store.keys_under("u-2/") == ["u-2/last"]
    assert sorted(store) == ["t-1/" + "a" * 32, "t-1/last", "u-2/last"]
    del store["u-2/last"]
    assert "u-2/last" not in store
    assert store.usage() == (1, len(value))
    store.close()


def test_a_store_of_schema_1_moves_its_records_apart_and_drops_the_index_until_a_trim(
    tmp_path: Path,
) -> None:
    value = entry("t", "x" * 50)
    store = DirectoryStore(tmp_path)
    store.update({"t-1/" + "a" * 32: value, "t-1/" + "b" * 32: value, "t-1/last": b"rec"})
    store.close()
    db = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    db.execute("BEGIN")  # back to schema 1: the record among the entries, the index made
    db.execute("INSERT INTO entries VALUES ('t-1/last', CAST('rec' AS BLOB))")
    db.execute("INSERT INTO meta VALUES ('t-1/last', 3, 0.0, NULL, NULL, NULL)")
    db.execute(store_module._COUNT, (1, 3))
    db.execute("DROP TABLE records")
    db.execute("DROP TABLE uses")
    db.execute(store_module._USED_INDEX)
    db.execute("PRAGMA user_version = 1")
    db.execute("COMMIT")
    db.close()
    store = DirectoryStore(tmp_path)
    assert store.usage() == (2, 2 * len(value))
    assert store["t-1/last"] == b"rec"
    index = "SELECT count(*) FROM sqlite_master WHERE name = 'meta_used'"
    db = sqlite3.connect(tmp_path / DB_NAME)
    try:
        assert db.execute("SELECT count(*) FROM entries").fetchone() == (2,)
        assert db.execute(index).fetchone() == (0,)
        assert [s.key for s in store.trim(len(value))] == ["t-1/" + "a" * 32]
        assert db.execute(index).fetchone() == (1,)  # made by the first trim
    finally:
        db.close()
        store.close()


@pytest.mark.parametrize("inline", [1 << 20, 64], ids=["one-blob", "row-by-row"])
def test_a_batch_is_written_whole_or_row_by_row_with_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inline: int
) -> None:
    """`_put` writes a batch of small values as one statement over one blob (empty
    values included), and a batch of large ones row by row: the same entries."""
    monkeypatch.setattr(store_module, "_PUT_INLINE", inline)
    store = DirectoryStore(tmp_path)
    values = {f"t-{i % 5}/{i:032x}": bytes(range(i % 7)) * i for i in range(40)}
    values["t-0/last"], values["t-1/last"] = b"", b"record"
    store.commit(list(values.items()))
    assert dict(store.items()) == values
    entries = {k: v for k, v in values.items() if not k.endswith("/last")}
    assert store.usage() == (len(entries), sum(map(len, entries.values())))
    store.commit([(key, b"again") for key in list(entries)[:10]])  # replaced: counted once
    assert store.usage() == (
        len(entries),
        sum(map(len, entries.values())) + sum(5 - len(v) for v in list(entries.values())[:10]),
    )
    store.close()
