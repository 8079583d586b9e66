"""Stores and the entry format: the mapping protocol, atomic batches, concurrent writers."""

from __future__ import annotations

import functools
import gc
import multiprocessing
import operator
import os
import pickle
import platform
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import cloudpickle
import pytest

import taskmap
from taskmap.checkpoint.encoders import (
    CorruptEntryError,
    JsonEncoder,
    PickleEncoder,
    pack_entry,
    read_header,
    unpack_entry,
)
from taskmap.checkpoint.store import ChainStore, DirectoryStore, keys_under, open_store


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
