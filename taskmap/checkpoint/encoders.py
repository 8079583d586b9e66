"""Encoders turn a task's value into stored bytes and back; the entry format lives here.

An *encoder* is any object with a ``name`` (a short string stored in each entry),
``encode(value) -> bytes`` and ``decode(data) -> value``.  Two are built in:

- `PickleEncoder` (the default, ``'pickle'``): pickle, then cloudpickle for what
  plain pickle refuses (lambdas, functions and classes of ``__main__``);
  compressed with zstandard when the payload is 512 bytes or more and the level is
  not 0.  It stores any picklable value, but cloudpickle does not promise that
  bytes written by one Python or cloudpickle version load in another: an entry
  that fails to load is a cache miss, and the task runs again.
- `JsonEncoder` (``'json'``): for JSON-native values (dict, list, str, numbers,
  bool, None); readable by any tool, stable across versions.  A tuple comes back
  as a list.

Entry format (version 1)::

    b"TMCK" | format version: 1 byte | header length: 4 bytes, big-endian | header | payload

The header is UTF-8 JSON: ``enc`` (encoder name), ``py`` and ``cp`` (the Python and
cloudpickle versions that wrote it), ``len`` and ``crc`` (payload length and CRC-32,
so a torn or corrupted entry is detected), ``out`` (the digest of the value, which
keys its children), ``code`` and ``in`` (the code fingerprint and input digests the
key was made of, to explain a later miss), ``task`` (the task's name, for listings)
and ``t`` (when it was written, seconds since the epoch).
"""

from __future__ import annotations

import json
import pickle
import platform
import struct
import zlib
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import cloudpickle

__all__ = [
    "ENCODERS",
    "CorruptEntryError",
    "Encoder",
    "JsonEncoder",
    "PickleEncoder",
    "pack_entry",
    "unpack_entry",
]

MAGIC = b"TMCK"
FORMAT = 1
_PREFIX = struct.Struct(">4sBI")
_COMPRESS_FROM = 512  # smaller payloads rarely shrink, and zstd costs a few microseconds
_VERSIONS = {"py": platform.python_version(), "cp": cloudpickle.__version__}


@runtime_checkable
class Encoder(Protocol):
    """Turns a value into bytes and back.  ``name`` is stored in every entry it
    writes, and picks the encoder that reads the entry back."""

    name: str

    def encode(self, value: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


class PickleEncoder:
    """pickle (cloudpickle as a fallback), zstandard-compressed at ``level`` (0: off).

    Args:
        level: zstandard level, 1 (fast) to 22 (small); 0 stores uncompressed.
    """

    name = "pickle"

    def __init__(self, level: int = 3) -> None:
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 22:
            raise ValueError(f"compression level must be an int from 0 to 22 (got {level!r})")
        self.level = level

    def __repr__(self) -> str:
        return f"PickleEncoder(level={self.level})"

    def encode(self, value: Any) -> bytes:
        try:
            data = pickle.dumps(value, protocol=5)
        except Exception:
            data = cloudpickle.dumps(value, protocol=5)
        else:
            if b"__main__" in data:  # by reference to a module a later run may not have
                data = cloudpickle.dumps(value, protocol=5)
        if self.level and len(data) >= _COMPRESS_FROM:
            compressed: bytes = _zstd().ZstdCompressor(level=self.level).compress(data)
            return b"Z" + compressed
        return b"P" + data

    def decode(self, data: bytes) -> Any:
        tag, body = data[:1], memoryview(data)[1:]
        if tag == b"Z":
            return pickle.loads(_zstd().ZstdDecompressor().decompress(body))
        if tag == b"P":
            return pickle.loads(body)
        raise CorruptEntryError(f"unknown pickle payload tag {bytes(tag)!r}")


class JsonEncoder:
    """JSON, for JSON-native values; a tuple comes back as a list."""

    name = "json"

    def __repr__(self) -> str:
        return "JsonEncoder()"

    def encode(self, value: Any) -> bytes:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()

    def decode(self, data: bytes) -> Any:
        return json.loads(data)


#: the encoders a string names (``encoders={'report': 'json'}``)
ENCODERS: Mapping[str, Encoder] = {"pickle": PickleEncoder(), "json": JsonEncoder()}


class CorruptEntryError(ValueError):
    """A stored entry is torn, corrupted or of an unknown format (a cache miss)."""


def pack_entry(payload: bytes, encoder: str, meta: dict[str, Any]) -> bytes:
    """Frame an encoded value with its header (see the module docstring)."""
    header = {
        "enc": encoder,
        **_VERSIONS,
        "len": len(payload),
        "crc": zlib.crc32(payload),
        **meta,
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    return b"".join((_PREFIX.pack(MAGIC, FORMAT, len(head)), head, payload))


def unpack_entry(data: bytes) -> tuple[dict[str, Any], memoryview]:
    """Split an entry into its header and payload, checking both.

    Raises:
        CorruptEntryError: not an entry, an unknown format version, or a payload
            whose length or CRC does not match its header.
    """
    if len(data) < _PREFIX.size:
        raise CorruptEntryError(f"entry of {len(data)} bytes is shorter than its prefix")
    magic, version, size = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise CorruptEntryError("not a taskmap cache entry")
    if version != FORMAT:
        raise CorruptEntryError(f"entry format {version} (this taskmap reads {FORMAT})")
    start = _PREFIX.size + size
    try:
        header = json.loads(bytes(data[_PREFIX.size : start]))
    except ValueError:
        raise CorruptEntryError("entry header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CorruptEntryError("entry header is not a JSON object")
    payload = memoryview(data)[start:]
    if len(payload) != header.get("len") or zlib.crc32(payload) != header.get("crc"):
        raise CorruptEntryError(
            f"entry payload is torn or corrupt ({len(payload)} bytes, header says "
            f"{header.get('len')})"
        )
    return header, payload


def _zstd() -> Any:
    import zstandard  # deferred: a run without a cache never needs it

    return zstandard
