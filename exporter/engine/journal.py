"""The journal: every acknowledged ingest request's raw body, appended to segment files in the data directory.

A request costs one ``write`` of its record at the end of the active segment (and one ``fdatasync`` with
``storage.sync: full``); nothing is written twice. A checkpoint starts a new segment at the moment the state
is copied (``rotate``), and once the snapshot holding every record of the older segments is on disk they are
unlinked whole (``remove_through``): no row deletion, no write-ahead log to fold back.

A segment, ``journal/<sequence of its first record, 20 digits>.seg``, is a header line then records::

    crc32 u32 | body length u32 | seq u64 | arrival f64 | kind length u16 | key length u16 | kind | key | body

little-endian; the CRC covers everything after itself; a key length of 0xFFFF means no Idempotency-Key.
A crash can leave a partial record at the end of the active segment (never acknowledged: the request is
answered after its write returns); opening the journal keeps the records up to the first one that is
incomplete or fails its CRC and cuts the rest off (a later segment after a damaged one, which only a power
loss with ``sync: normal`` can leave, is renamed ``*.damaged`` and logged, not read).

Not thread-safe: the store (exporter/engine/storage.py) calls it under its lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger("mlmon.storage")

DIRECTORY = "journal"
MAGIC = b"mlmon journal 1\n"  # a segment's first bytes: the format (a later one is refused, not misread)
_HEAD = struct.Struct("<IIQdHH")  # crc, body length, seq, arrival, kind length, key length
_NO_KEY = 0xFFFF
_NAME = re.compile(r"^(\d{20})\.seg$")
_READ = 1 << 20  # bytes read at a time when scanning


class JournalError(Exception):
    """A segment cannot be used as it is (an unknown format): the message names it."""


@dataclass(frozen=True)
class Record:
    """A journalled request (from a segment, or from an earlier release's journal table)."""

    seq: int
    kind: str
    at: float
    key: str | None
    body: bytes


def encode(seq: int, kind: str, at: float, key: str | None, body: bytes) -> bytes:
    """A record's header, kind and key (the body follows them), its CRC covering all but the CRC itself."""
    kind_b = kind.encode()
    key_b = b"" if key is None else key.encode()
    if len(kind_b) >= _NO_KEY or len(key_b) >= _NO_KEY:
        raise ValueError("a journal record's kind and key are shorter than 65535 bytes")
    rest = _HEAD.pack(0, len(body), seq, at, len(kind_b), _NO_KEY if key is None else len(key_b))[4:] + kind_b + key_b
    return struct.pack("<I", zlib.crc32(body, zlib.crc32(rest))) + rest


def _segments(directory: str) -> list[tuple[int, str]]:
    """(first sequence, path) of every segment, in order."""
    out = []
    for name in os.listdir(directory):
        match = _NAME.match(name)
        if match:
            out.append((int(match.group(1)), os.path.join(directory, name)))
    return sorted(out)


def read_segment(path: str) -> Iterator[tuple[Record, int]]:
    """The valid records of one segment with the offset just after each; stops at the first that is
    incomplete or damaged. Raises JournalError for a file of another format."""
    with open(path, "rb", buffering=_READ) as fh:
        magic = fh.read(len(MAGIC))
        if magic != MAGIC:
            if len(magic) < len(MAGIC) and MAGIC.startswith(magic):
                return  # created, its header not all written when the process died: empty
            raise JournalError(f"{path} is not a journal segment of this mlmon (unknown header {magic[:16]!r})")
        offset = len(MAGIC)
        while True:
            head = fh.read(_HEAD.size)
            if len(head) < _HEAD.size:
                return
            crc, length, seq, at, kind_len, key_len = _HEAD.unpack(head)
            body_at = kind_len + (0 if key_len == _NO_KEY else key_len)
            tail = fh.read(body_at + length)
            if len(tail) < body_at + length or zlib.crc32(tail, zlib.crc32(head[4:])) != crc:
                return
            try:
                kind = tail[:kind_len].decode()
                key = None if key_len == _NO_KEY else tail[kind_len:body_at].decode()
            except UnicodeDecodeError:  # a CRC that matched damaged bytes: as unlikely as 1 in 2^32, still ends it
                return
            offset += _HEAD.size + len(tail)
            yield Record(seq, kind, at, key, tail[body_at:]), offset


class Journal:
    """Segment files in ``<data directory>/journal``; ``last_seq`` is the last record's sequence (or the
    ``floor`` given, for a journal that is empty)."""

    def __init__(self, data_dir: str, floor: int, fsync: bool):
        self.directory = os.path.join(data_dir, DIRECTORY)
        self.fsync = fsync
        os.makedirs(self.directory, exist_ok=True)
        self.last_seq = floor
        self.segments: list[tuple[int, str]] = []  # (first sequence, path), oldest first; the last is active
        self.bytes = 0  # records' bytes in all segments (what a restart would read)
        self._scan()
        self._fd = -1
        self._end = 0  # the active segment's size
        self._last_start = -1  # where the last appended record starts (abort cuts it off), -1 when unknown
        if self.segments:
            self._open(self.segments[-1][1])
        else:
            self._create(self.last_seq + 1)

    # -- opening ------------------------------------------------------------------------------------

    def _scan(self) -> None:
        """Find every segment's valid records; cut off a partial or damaged end; set last_seq and bytes."""
        found = _segments(self.directory)
        for i, (first, path) in enumerate(found):
            end, last = len(MAGIC), None
            for entry, offset in read_segment(path):
                end, last = offset, entry.seq
            size = os.path.getsize(path)
            if size > end:
                log.warning(
                    "journal segment %s ends with %d bytes that are not a whole record (the process stopped "
                    "while writing it, before answering); cut off",
                    path,
                    size - end,
                    extra={"fields": {"segment": path, "bytes": size - end}},
                )
                with open(path, "r+b") as fh:
                    fh.truncate(end)
            elif size < end:  # created, its header cut short: no record in it
                with open(path, "r+b") as fh:
                    fh.write(MAGIC)
            self.segments.append((first, path))
            self.bytes += end - len(MAGIC)
            self.last_seq = max(self.last_seq, first - 1)  # a segment is named after the sequence that was next
            if last is not None:
                self.last_seq = max(self.last_seq, last)
            if size > end:
                for _, later in found[i + 1 :]:  # past a damaged record nothing can be replayed in order
                    os.replace(later, later + ".damaged")
                    log.warning("journal segment %s follows a damaged one: renamed *.damaged, not replayed", later)
                return

    def _create(self, first: int) -> None:
        path = os.path.join(self.directory, f"{first:020d}.seg")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, MAGIC)
            if self.fsync:
                _flush(fd)
                _sync_dir(self.directory)  # the new name itself survives a power loss
        except BaseException:
            # (a full disk): no segment named after records that will go on to the current one
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._end, self._last_start = fd, len(MAGIC), -1
        self.segments.append((first, path))

    def _open(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._end = os.fstat(self._fd).st_size

    # -- writing ------------------------------------------------------------------------------------

    def append(self, seq: int, kind: str, at: float, key: str | None, body: bytes) -> None:
        """Write one record at the end of the active segment (flushed to disk first with fsync). On an error
        (a full disk) the segment is cut back to where it was and the error raised: nothing half-written."""
        head = encode(seq, kind, at, key, body)
        start = self._end
        try:
            written = os.writev(self._fd, (head, body))  # one call: no other write can come between the two
            if written < len(head) + len(body):
                _write_all(self._fd, (head + body)[written:])
            if self.fsync:
                _flush(self._fd)
        except BaseException:
            os.ftruncate(self._fd, start)
            raise
        self._end = start + len(head) + len(body)
        self._last_start = start
        self.bytes += len(head) + len(body)
        self.last_seq = seq

    def drop_last(self, seq: int) -> None:
        """Take back the record just appended (its request could not be applied and is answered an error)."""
        if self._last_start < 0 or seq != self.last_seq:
            raise JournalError(f"record {seq} is not the last one appended")
        os.ftruncate(self._fd, self._last_start)
        self.bytes -= self._end - self._last_start
        self._end, self._last_start = self._last_start, -1  # (last_seq stays: a sequence is never reused)

    def rotate(self) -> None:
        """Start a new segment for the records after ``last_seq`` (a checkpoint copies the state now)."""
        if self._end > len(MAGIC):
            self._create(self.last_seq + 1)

    def remove_through(self, seq: int) -> None:
        """Unlink the segments whose records are all at or before ``seq`` (held by a snapshot on disk now)."""
        keep = []
        for i, (first, path) in enumerate(self.segments):
            last = self.segments[i + 1][0] - 1 if i + 1 < len(self.segments) else None
            if last is not None and last <= seq:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            else:
                keep.append((first, path))
        self.segments = keep
        self.bytes = sum(os.path.getsize(path) - len(MAGIC) for _, path in keep[:-1]) + self._end - len(MAGIC)

    # -- reading ------------------------------------------------------------------------------------

    def records(self, after: int) -> Iterator[Record]:
        """Records after sequence ``after``, in order."""
        listed = list(self.segments)
        for i, (_, path) in enumerate(listed):
            if i + 1 < len(listed) and listed[i + 1][0] - 1 <= after:
                continue  # every record of it is at or before ``after``
            for entry, _ in read_segment(path):
                if entry.seq > after:
                    yield entry

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _flush(fd: int) -> None:
    """The file's data on disk (fdatasync; fsync where there is none, as on macOS)."""
    getattr(os, "fdatasync", os.fsync)(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
