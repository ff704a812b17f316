"""One cache entry: its on-disk format (checked header, body, metadata) and the objects that describe it.

Layout (all integers big-endian)::

    header   36 bytes   magic "GWCE", version, flags, body_length, meta_length,
                        meta_crc (CRC-32 of the metadata), entry_id,
                        header_crc (CRC-32 of the 32 bytes before it)
    body     body_length bytes, exactly as received (content codings kept)
    metadata meta_length bytes, see :func:`encode_meta`

Invariants:

- An entry is valid only if the magic, version and both CRCs check and the
  file is exactly ``36 + body_length + meta_length`` bytes long, so truncation
  anywhere, a torn metadata update or a flipped header/metadata bit is found
  before a byte is served. The body's own CRC-32 is in the metadata, checked
  while a whole body is streamed (``answer.CheckedRange``) the first time
  this process serves that entry version (:class:`Decoded`).
- The metadata sits after the body so that freshening an entry after a 304
  rewrites only the metadata and header, never the body.
- Decoding never trusts a length: every read is bounds-checked and any
  inconsistency raises :class:`CorruptEntry`.
- :class:`EntryInfo` is what the store's index keeps per entry (no headers);
  :class:`Entry` is an opened, validated entry with its file.
- Metadata is decoded once per entry and version: a :class:`Decoded` names
  the entry id and metadata CRC it was decoded from, and a later read whose
  checked header carries both (and whose file length agrees) takes it instead
  of reading and decoding the metadata again. What it holds was checked when
  it was decoded, so a metadata bit flipped since is not served either way.
- Several processes may use one entry file at once: one updating it in place
  holds an exclusive ``flock`` on it, and :func:`read_entry_file` rereads
  under a shared lock before calling a file corrupt, so a torn read is never
  taken for corruption; :func:`unlink_entry` removes a file only if it still
  holds the entry meant, not a newer one another process put there.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from twisted.logger import Logger

from gateway.cache.keys import secondary_key
from gateway.compat import SLOTS
from gateway.parser import Headers

if TYPE_CHECKING:
    from gateway.cache.policy import CacheRules, Freshness

__all__ = [
    "HEADER_SIZE",
    "MAX_META_SIZE",
    "CorruptEntry",
    "Decoded",
    "Entry",
    "EntryInfo",
    "EntryMeta",
    "EntryRead",
    "entry_name",
    "decode_meta",
    "encode_meta",
    "pack_header",
    "read_entry_file",
    "remove_file",
    "unlink_entry",
    "unpack_header",
]

_MAGIC = b"GWCE"
_VERSION = 1
_HEAD = struct.Struct(">4sHHQIIQ")
_HEAD_CRC = struct.Struct(">I")
HEADER_SIZE = _HEAD.size + _HEAD_CRC.size  # 36
#: Largest metadata accepted when reading (heads are bounded far below this by
#: the parser's limits); a larger length in a header means corruption.
MAX_META_SIZE = 4 * 1024 * 1024

#: Opening entry files: never through a symlink; not inherited by children.
OPEN_READ = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
OPEN_UPDATE = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

_FIXED = struct.Struct(">HdddIIHHHH")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_LENGTH = struct.Struct(">Q")


class CorruptEntry(Exception):
    """An entry file failed validation; it is dropped and counted as a miss."""


@dataclass(frozen=True, **SLOTS)
class EntryMeta:
    """Everything stored about a response besides its body.

    ``key`` is the primary key; ``vary_names``/``vary_values`` the stored
    response's Vary names and the original request's normalised values for
    them (``keys.vary_values``); ``request_time``/``response_time`` those of the
    exchange that produced or last validated the response; ``keep_until`` the
    time after which the entry is of no use (``policy.retention``);
    ``body_crc`` the CRC-32 of the body.
    """

    key: bytes
    status: int
    reason: bytes
    headers: Headers
    request_time: float
    response_time: float
    vary_names: tuple[bytes, ...] = ()
    vary_values: tuple[bytes | None, ...] = ()
    keep_until: float = float("inf")
    surrogate_keys: tuple[bytes, ...] = ()
    body_crc: int = field(default=0)


def encode_meta(meta: EntryMeta) -> bytes:
    """The metadata bytes for ``meta``.

    Fixed part: status, request_time, response_time, keep_until, body_crc, key
    length, then counts of reason bytes, headers, vary names, surrogate keys.
    Then the key, the reason, each header as (u16 name length, u32 value
    length, name, value), each vary name as (u16, name), each vary value as
    (u8 present, [u32, value]), each surrogate key as (u16, key).
    """
    if len(meta.vary_names) != len(meta.vary_values):
        raise ValueError("vary_names and vary_values differ in length")
    parts = [
        _FIXED.pack(
            meta.status, meta.request_time, meta.response_time, meta.keep_until, meta.body_crc,
            len(meta.key), len(meta.reason), len(meta.headers), len(meta.vary_names), len(meta.surrogate_keys),
        ),
        meta.key,
        meta.reason,
    ]  # fmt: skip
    for name, value in meta.headers:
        parts += (_U16.pack(len(name)), _U32.pack(len(value)), name, value)
    for name in meta.vary_names:
        parts += (_U16.pack(len(name)), name)
    for varied in meta.vary_values:
        if varied is None:
            parts.append(_U8.pack(0))
        else:
            parts += (_U8.pack(1), _U32.pack(len(varied)), varied)
    for key in meta.surrogate_keys:
        parts += (_U16.pack(len(key)), key)
    return b"".join(parts)


class Decoded:
    """An entry's metadata as decoded from its file, and what was derived from it.

    Valid for the file version with this ``entry_id`` and ``meta_crc`` (the
    checked header names both). ``fresh`` is the caching route's memo for
    this head: ``(rules, Freshness)`` (``flow.CacheExchange``), so a hit does
    not parse Cache-Control and dates again. ``body_checked``: the whole body
    was read back and matched its CRC-32 once in this process
    (``answer.EntryFeed``); bodies are never rewritten in place, so later
    hits on this version may send it without reading it (``sendfile``).
    """

    __slots__ = ("entry_id", "meta_crc", "meta", "fresh", "body_checked")

    def __init__(self, entry_id: int, meta_crc: int, meta: EntryMeta) -> None:
        self.entry_id = entry_id
        self.meta_crc = meta_crc
        self.meta = meta
        self.fresh: tuple[CacheRules, Freshness] | None = None
        self.body_checked = False


class _Cursor:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise CorruptEntry("metadata ends early")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, fmt: struct.Struct) -> tuple:  # type: ignore[type-arg]
        return fmt.unpack(self.take(fmt.size))


def decode_meta(data: bytes) -> EntryMeta:
    """The :class:`EntryMeta` encoded in ``data``; raises :class:`CorruptEntry`."""
    cursor = _Cursor(data)
    (status, request_time, response_time, keep_until, body_crc,
     key_length, reason_length, n_headers, n_vary, n_keys) = cursor.unpack(_FIXED)  # fmt: skip
    key = cursor.take(key_length)
    reason = cursor.take(reason_length)
    headers: Headers = []
    for _ in range(n_headers):
        (name_length,) = cursor.unpack(_U16)
        (value_length,) = cursor.unpack(_U32)
        headers.append((cursor.take(name_length), cursor.take(value_length)))
    names = tuple(cursor.take(cursor.unpack(_U16)[0]) for _ in range(n_vary))
    values: list[bytes | None] = []
    for _ in range(n_vary):
        (present,) = cursor.unpack(_U8)
        if present == 0:
            values.append(None)
        elif present == 1:
            values.append(cursor.take(cursor.unpack(_U32)[0]))
        else:
            raise CorruptEntry("bad vary value flag")
    surrogates = tuple(cursor.take(cursor.unpack(_U16)[0]) for _ in range(n_keys))
    if cursor.pos != len(data):
        raise CorruptEntry("trailing bytes after metadata")
    if not 100 <= status <= 599:
        raise CorruptEntry(f"bad status {status}")
    return EntryMeta(
        key=key, status=status, reason=reason, headers=headers, request_time=request_time,
        response_time=response_time, vary_names=names, vary_values=tuple(values), keep_until=keep_until,
        surrogate_keys=surrogates, body_crc=body_crc,
    )  # fmt: skip


def pack_header(body_length: int, meta: bytes, entry_id: int) -> bytes:
    """The 36-byte header for a body of ``body_length`` bytes followed by ``meta``."""
    head = _HEAD.pack(_MAGIC, _VERSION, 0, body_length, len(meta), zlib.crc32(meta), entry_id)
    return head + _HEAD_CRC.pack(zlib.crc32(head))


def unpack_header(data: bytes) -> tuple[int, int, int, int]:
    """``(body_length, meta_length, meta_crc, entry_id)`` from a header; raises :class:`CorruptEntry`."""
    if len(data) != HEADER_SIZE:
        raise CorruptEntry("short header")
    head = data[: _HEAD.size]
    (crc,) = _HEAD_CRC.unpack(data[_HEAD.size :])
    if zlib.crc32(head) != crc:
        raise CorruptEntry("header checksum mismatch")
    magic, version, _flags, body_length, meta_length, meta_crc, entry_id = _HEAD.unpack(head)
    if magic != _MAGIC:
        raise CorruptEntry("bad magic")
    if version != _VERSION:
        raise CorruptEntry(f"unknown version {version}")
    if meta_length > MAX_META_SIZE:
        raise CorruptEntry("metadata too large")
    return body_length, meta_length, meta_crc, entry_id


def entry_name(key: bytes, secondary: bytes) -> str:
    """The 32-hex-digit file name of the entry for (primary ``key``, ``secondary`` key).

    The key's length goes first, so no (key, secondary) pair hashes the bytes
    of another.
    """
    digest = hashlib.blake2b(_LENGTH.pack(len(key)) + key + secondary, digest_size=16)
    return digest.hexdigest()


class EntryInfo:
    """What the index knows about one committed entry (no headers: those stay on disk)."""

    __slots__ = ("name", "key", "secondary", "vary_names", "vary_values", "size", "body_length", "status",
                 "request_time", "response_time", "keep_until", "last_access", "entry_id",
                 "surrogate_keys")  # fmt: skip

    def __init__(
        self, name: str, meta: EntryMeta, size: int, body_length: int, entry_id: int, last_access: float
    ) -> None:
        self.name = name
        self.key = meta.key
        self.secondary = secondary_key(meta.vary_names, meta.vary_values)
        self.vary_names = meta.vary_names
        self.vary_values = meta.vary_values
        self.size = size
        self.body_length = body_length
        self.status = meta.status
        self.request_time = meta.request_time
        self.response_time = meta.response_time
        self.keep_until = meta.keep_until
        self.last_access = last_access
        self.entry_id = entry_id
        self.surrogate_keys = meta.surrogate_keys

    def __repr__(self) -> str:
        return f"<EntryInfo {self.name} {self.key[:80]!r} size={self.size}>"


class Entry:
    """An opened, validated entry: its metadata and an open file to stream the body from.

    The body is ``body_length`` bytes at ``body_offset`` in the descriptor
    ``fd``; read it with :meth:`read` or stream it through
    :mod:`gateway.bodystore` (``answer.EntryFeed``). Close the entry when done,
    once or more (also usable as a context manager).
    """

    __slots__ = ("info", "decoded", "meta", "fd", "body_offset", "body_length")

    def __init__(self, info: EntryInfo, decoded: Decoded, fd: int, body_length: int) -> None:
        self.info = info
        self.decoded = decoded
        self.meta = decoded.meta
        self.fd = fd
        self.body_offset = HEADER_SIZE
        self.body_length = body_length

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` body bytes from body position ``offset``."""
        size = max(0, min(size, self.body_length - offset))
        return os.pread(self.fd, size, self.body_offset + offset) if size else b""

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Entry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EntryRead(NamedTuple):
    """What an entry file holds, read and validated (:func:`read_entry_file`)."""

    decoded: Decoded
    body_length: int
    size: int

    @property
    def meta(self) -> EntryMeta:
        return self.decoded.meta

    @property
    def entry_id(self) -> int:
        return self.decoded.entry_id


def _read(fd: int, known: Decoded | None) -> EntryRead:
    size = os.fstat(fd).st_size
    body_length, meta_length, meta_crc, entry_id = unpack_header(os.pread(fd, HEADER_SIZE, 0))
    if size != HEADER_SIZE + body_length + meta_length:
        raise CorruptEntry(f"file is {size} bytes, header says {HEADER_SIZE + body_length + meta_length}")
    if known is not None and known.entry_id == entry_id and known.meta_crc == meta_crc:
        return EntryRead(known, body_length, size)
    encoded = os.pread(fd, meta_length, HEADER_SIZE + body_length)
    if len(encoded) != meta_length or zlib.crc32(encoded) != meta_crc:
        raise CorruptEntry("metadata checksum mismatch")
    return EntryRead(Decoded(entry_id, meta_crc, decode_meta(encoded)), body_length, size)


def read_entry_file(fd: int, *, locked: bool = False, known: Decoded | None = None) -> EntryRead:
    """Read and validate the open entry file ``fd``; raises :class:`CorruptEntry` or ``OSError``.

    A file that fails is read once more under a shared ``flock``: another
    process may be updating it in place under its exclusive one, and waiting
    for that tells a torn read from a corrupt file. ``locked``: the caller
    holds the exclusive lock already (it is the updater), so one read decides.
    ``known``: metadata decoded earlier from this file, taken (not read again)
    if the header still names its entry id and metadata CRC.
    """
    try:
        return _read(fd, known)
    except CorruptEntry:
        if locked:
            raise
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        return _read(fd, known)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def remove_file(path: str) -> None:
    """Unlink ``path``; already gone is fine, other failures are logged."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        Logger().warn("cache: cannot remove {path}: {error}", path=path, error=exc)


def unlink_entry(path: str, entry_id: int) -> None:
    """Remove the entry file at ``path`` unless it now holds another entry than ``entry_id``.

    Another process sharing the directory may have replaced the entry since
    the caller learnt of it; that newer file stays. A file whose header can't
    be read is no valid entry and goes.
    """
    try:
        fd = os.open(path, OPEN_READ)
    except FileNotFoundError:
        return
    except OSError:
        remove_file(path)
        return
    try:
        found = unpack_header(os.pread(fd, HEADER_SIZE, 0))[3]
    except (OSError, CorruptEntry):
        found = entry_id
    finally:
        os.close(fd)
    if found == entry_id:
        remove_file(path)
