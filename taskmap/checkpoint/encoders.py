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

`Encrypted(inner, key)` wraps either (or any encoder) for encryption at rest, with
AES-GCM from ``cryptography`` (the ``taskmap[crypto]`` extra).

Entry format (version 1): a fixed binary prefix, so a cache hit reads two fields
without parsing text, then the encoder's name, a JSON header, and the payload::

    b"TMCK" | version: 1 byte | out: 16 bytes | has out: 1 byte | payload CRC-32: 4 bytes
         | payload length: 8 bytes | name length: 1 byte | header length: 4 bytes
         | encoder name | header | payload                        (integers big-endian)

``out`` is the digest of the value, which keys its children.  The length and CRC
detect a torn or corrupted payload.  The header is UTF-8 JSON, read only by
listings and explanations: ``py`` and ``cp`` (the Python and cloudpickle versions
that wrote it), ``code`` and ``in`` (the code fingerprint and input digests the
key was made of), ``task`` (the task's name) and ``t`` (when it was written,
seconds since the epoch).  The *head* of an entry is everything before its payload.

A *signed* entry (a cache with a secret, issue 14) is an entry behind a tag::

    b"TMSG" | version: 1 byte | HMAC-SHA256(secret, key + NUL + entry): 32 bytes | entry

The tag binds the entry to its key, so a signed entry copied under another key
does not verify either.  A reader with the secret decodes an entry only if its tag
verifies (`verify_entry`); a reader without one reads signed entries as plain ones.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle
import platform
import struct
import zlib
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import cloudpickle

__all__ = [
    "ENCODERS",
    "HEAD_PROBE",
    "CorruptEntryError",
    "Encoder",
    "Encrypted",
    "JsonEncoder",
    "PickleEncoder",
    "Signer",
    "entry_head",
    "head_span",
    "pack_entry",
    "parse_head",
    "read_header",
    "sign_entry",
    "signer",
    "unpack_entry",
    "verify_entry",
]

MAGIC = b"TMCK"
FORMAT = 1
SIGNED = b"TMSG"
SIGNED_FORMAT = 1
_SIGNED_START = SIGNED + bytes((SIGNED_FORMAT,))
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
        if tag == b"P":  # first: most entries are not compressed
            return pickle.loads(body)
        if tag == b"Z":
            return pickle.loads(_zstd().ZstdDecompressor().decompress(body))
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


class Encrypted:
    """Encryption at rest: AES-GCM over the bytes of another encoder.

    Each payload gets a fresh 96-bit nonce; the GCM tag authenticates it, so a
    payload altered by anyone without the key fails to decode (a cache miss, with
    a warning), as does one written with another key.  The entry's header (task,
    time, code and input digests) stays readable: listings work without the key.

    Args:
        inner: the encoder whose bytes are encrypted: ``'pickle'``, ``'json'`` or
            an `Encoder`.
        key: 16, 24 or 32 random bytes (AES-128, -192 or -256), such as
            ``os.urandom(32)``; keep it as you keep a password.  The encoder's
            name carries a short digest of it, so entries written with an older
            key are told apart (misses) rather than failing to decrypt.

    Raises:
        ImportError: ``cryptography`` is not installed: ``pip install 'taskmap[crypto]'``.
        ValueError: ``key`` is not 16, 24 or 32 bytes long.

    Example:
        >>> create_graph(funcs, deps, cache='.taskmap',
        ...              encoders={'patients': Encrypted('pickle', key)})
    """

    NONCE = 12

    def __init__(self, inner: Encoder | str, key: bytes) -> None:
        if isinstance(inner, str):
            if inner not in ENCODERS:
                known = ", ".join(map(repr, ENCODERS))
                raise ValueError(f"Encrypted: unknown encoder {inner!r} (known: {known})")
            inner = ENCODERS[inner]
        if not isinstance(inner, Encoder):
            raise TypeError(
                "Encrypted: the inner encoder must be 'pickle', 'json' or an object with "
                f"name, encode and decode (got {inner!r:.60})"
            )
        if not isinstance(key, bytes | bytearray) or len(key) not in (16, 24, 32):
            got = f"{len(key)} bytes" if isinstance(key, bytes | bytearray) else type(key).__name__
            raise ValueError(
                f"Encrypted: key must be 16, 24 or 32 bytes, such as os.urandom(32) (got {got})"
            )
        self.inner = inner
        self.key = bytes(key)
        key_id = hashlib.sha256(b"taskmap-key-id" + self.key).hexdigest()[:8]
        self.name = f"aes-gcm/{inner.name}/{key_id}"
        self._aad = self.name.encode()
        self._cipher = _aes_gcm()(self.key)

    def __repr__(self) -> str:  # never the key
        return f"Encrypted({self.inner!r}, key=<{len(self.key)} bytes>)"

    def __reduce__(self) -> tuple[Any, ...]:  # the cipher object does not pickle
        return (Encrypted, (self.inner, self.key))

    def encode(self, value: Any) -> bytes:
        nonce = os.urandom(self.NONCE)
        sealed: bytes = self._cipher.encrypt(nonce, self.inner.encode(value), self._aad)
        return nonce + sealed

    def decode(self, data: bytes) -> Any:
        nonce, sealed = data[: self.NONCE], data[self.NONCE :]
        return self.inner.decode(self._cipher.decrypt(nonce, sealed, self._aad))


def _aes_gcm() -> Any:
    try:  # deferred: an optional dependency, needed only by a graph that encrypts
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        raise ImportError(
            "Encrypted needs the cryptography package: pip install 'taskmap[crypto]'"
        ) from None
    return AESGCM


class CorruptEntryError(ValueError):
    """A stored entry is torn, corrupted or of an unknown format (a cache miss)."""


_PREFIX = struct.Struct(">4sB16sBIQBI")
_SIGNED_SIZE = 4 + 1 + 32  # magic, version, tag
#: how many bytes of an entry `head_span` needs
HEAD_PROBE = _SIGNED_SIZE + _PREFIX.size
_NO_OUT = bytes(16)
_JSON = json.JSONEncoder(separators=(",", ":"))


_VERSIONS_JSON = _JSON.encode(_VERSIONS)[1:-1]


def pack_entry(payload: bytes, encoder: str, out: bytes, meta: dict[str, Any] | str) -> bytes:
    """Frame an encoded value (see the module docstring); ``out`` may be empty.

    ``meta``: the header's fields, or (the fast path) their JSON members already
    encoded, without braces.
    """
    name = encoder.encode()
    if isinstance(meta, dict):
        meta = _JSON.encode(meta)[1:-1]
    head = f"{{{_VERSIONS_JSON},{meta}}}".encode() if meta else f"{{{_VERSIONS_JSON}}}".encode()
    prefix = _PREFIX.pack(
        MAGIC,
        FORMAT,
        out or _NO_OUT,
        bool(out),
        zlib.crc32(payload),
        len(payload),
        len(name),
        len(head),
    )
    return b"".join((prefix, name, head, payload))


def unpack_entry(data: bytes, *, verified: bool = False) -> tuple[str, bytes, memoryview]:
    """Split an entry into its encoder's name, its value's digest (b'' when it has
    none) and its payload, checking the payload.  A signed entry is read as the entry
    it wraps: its tag is checked by `verify_entry`, not here.  ``verified``: its tag
    was checked, so its bytes are the ones written and the CRC is not computed
    (hashing every byte twice cost a signed rerun a few percent).

    Raises:
        CorruptEntryError: not an entry, an unknown format version, or a payload
            whose length or CRC does not match.
    """
    base = _SIGNED_SIZE if data[:4] == SIGNED else 0
    size = len(data) - base
    if size < _PREFIX.size:
        raise CorruptEntryError(f"entry of {size} bytes is shorter than its prefix")
    magic, version, out, has_out, crc, length, name_size, head_size = _PREFIX.unpack_from(
        data, base
    )
    if magic != MAGIC:
        raise CorruptEntryError("not a taskmap cache entry")
    if version != FORMAT:
        raise CorruptEntryError(f"entry format {version} (this taskmap reads {FORMAT})")
    start = base + _PREFIX.size + name_size + head_size
    payload = memoryview(data)[start:]
    if len(payload) != length or (not verified and zlib.crc32(payload) != crc):
        raise CorruptEntryError(
            f"entry payload is torn or corrupt ({len(payload)} bytes, expected {length})"
        )
    name = bytes(data[base + _PREFIX.size : base + _PREFIX.size + name_size])
    return name.decode(errors="replace"), out if has_out else b"", payload


def read_header(data: bytes) -> dict[str, Any]:
    """The entry's header (with ``enc``, ``out`` and ``size`` added), for listings.

    Raises:
        CorruptEntryError: the entry or its header is damaged.
    """
    name, out, payload = unpack_entry(data)
    head = entry_head(data)
    assert head is not None  # unpack_entry checked the prefix
    header = _parse_json(head)
    return {**header, "enc": name, "out": out.hex(), "size": len(payload)}


def head_span(data: bytes) -> int | None:
    """How many leading bytes of an entry hold its head (with a signed entry's tag), from
    its first `HEAD_PROBE` bytes (or all of it, if shorter); None: not an entry."""
    base = _SIGNED_SIZE if data[:4] == SIGNED else 0
    if len(data) < base + _PREFIX.size or data[base : base + 4] != MAGIC:
        return None
    name_size, head_size = _PREFIX.unpack_from(data, base)[-2:]
    return int(base + _PREFIX.size + name_size + head_size)


def entry_head(data: bytes) -> bytes | None:
    """The head of an entry (of the entry a signed one wraps): its prefix, encoder name
    and header, without the payload; None when ``data`` is not a taskmap entry.

    Reads only the head: the payload is not checked (`unpack_entry` does)."""
    span = head_span(data)
    if span is None:
        return None
    return bytes(data[_SIGNED_SIZE if data[:4] == SIGNED else 0 : span])


def parse_head(head: bytes) -> tuple[str, float, str]:
    """The task, time written and encoder name recorded in an entry's head.

    Fast for the header a run writes (it ends ``"task":"<name>","t":<time>}``: no
    JSON parser); any other header is parsed as JSON.

    Raises:
        CorruptEntryError: the head is damaged.
    """
    if len(head) < _PREFIX.size or head[:4] != MAGIC:
        raise CorruptEntryError("not a taskmap cache entry")
    name_size, head_size = _PREFIX.unpack_from(head)[-2:]
    start = _PREFIX.size + name_size
    name = bytes(head[_PREFIX.size : start]).decode(errors="replace")
    text = bytes(head[start : start + head_size])
    t = text.rfind(b',"t":')
    task = text.rfind(b',"task":"', 0, t)
    if task >= 0 and text.endswith(b"}") and text[t - 1 : t] == b'"':
        label = text[task + 9 : t - 1]  # a JSON string's inside: unescaped, no quote in it
        if b"\\" not in label and b'"' not in label:
            try:
                return label.decode(), float(text[t + 5 : -1]), name
            except ValueError:  # not a plain number: the parser decides
                pass
    header = _parse_json(head)
    written = header.get("t", 0.0)
    return str(header.get("task")), float(written) if _is_number(written) else 0.0, name


def _parse_json(head: bytes) -> dict[str, Any]:
    name_size, head_size = _PREFIX.unpack_from(head)[-2:]
    start = _PREFIX.size + name_size
    text = bytes(head[start : start + head_size])
    if len(text) != head_size:
        raise CorruptEntryError("entry header is torn")
    try:
        header = json.loads(text)
    except ValueError:
        raise CorruptEntryError("entry header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CorruptEntryError("entry header is not a JSON object")
    return header


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- signed entries ---------------------------------------------------------------------


class Signer:
    """Signs and checks entries with one secret: HMAC-SHA256 (RFC 2104) with the key's
    two padded blocks hashed once, not per entry, so a check costs 0.6x what
    ``hmac.digest`` does on a small entry; the tag is the same (tested).  (OpenSSL's
    own HMAC state, copied per entry, measured slower: it allocates a context.)  Get
    one with `signer`."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, secret: bytes) -> None:
        if len(secret) > 64:  # the SHA-256 block size
            secret = hashlib.sha256(secret).digest()
        secret = secret.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in secret))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in secret))

    def tag(self, key: str, entry: bytes | memoryview) -> bytes:
        inner = self._inner.copy()
        label = key.encode("utf-8", "surrogatepass") + b"\0"
        if len(entry) < 4096:  # one update of a small copy beats two
            inner.update(label + entry)
        else:
            inner.update(label)
            inner.update(entry)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def sign(self, key: str, entry: bytes) -> bytes:
        """``entry`` behind its tag."""
        return b"".join((_SIGNED_START, self.tag(key, entry), entry))

    def verify(self, key: str, data: bytes) -> bool:
        """Whether ``data`` is an entry signed with this secret for ``key`` (the tags
        compared in constant time)."""
        if data[:5] != _SIGNED_START:
            return False
        if len(data) >= 4096:
            return hmac.compare_digest(
                data[5:_SIGNED_SIZE], self.tag(key, memoryview(data)[_SIGNED_SIZE:])
            )
        # the small entry of a cached rerun, once per task: `tag` inlined
        inner = self._inner.copy()
        inner.update(key.encode("utf-8", "surrogatepass") + b"\0" + data[_SIGNED_SIZE:])
        outer = self._outer.copy()
        outer.update(inner.digest())
        return hmac.compare_digest(data[5:_SIGNED_SIZE], outer.digest())


_SIGNERS: dict[bytes, Signer] = {}


def signer(secret: bytes) -> Signer:
    """The `Signer` of ``secret`` (made once per secret and process)."""
    found = _SIGNERS.get(secret)
    if found is None:
        if len(_SIGNERS) >= 16:  # a process rarely holds more than one or two secrets
            _SIGNERS.clear()
        found = _SIGNERS[secret] = Signer(secret)
    return found


def sign_entry(secret: bytes, key: str, entry: bytes) -> bytes:
    """``entry`` behind its tag: an HMAC-SHA256 of the key and the entry's bytes."""
    return signer(secret).sign(key, entry)


def verify_entry(secret: bytes, key: str, data: bytes) -> bool:
    """Whether ``data`` is an entry signed with ``secret`` for ``key`` (compared in
    constant time).  An unsigned entry, or one signed with another secret, is not."""
    return signer(secret).verify(key, data)


def _zstd() -> Any:
    import zstandard  # deferred: a run without a cache never needs it

    return zstandard
