"""Durable state in the data directory: a journal of requests, a snapshot, and Idempotency-Keys.

Every ingest request that is acknowledged was first appended to the *journal* (its raw body, arrival time
and Idempotency-Key: exporter/engine/journal.py, segment files written once and unlinked whole), then
applied to memory in journal order under one lock. Every ``storage.checkpoint_interval`` (or
``storage.checkpoint_bytes`` of journal) the whole in-memory state is written as one *snapshot* into a
SQLite database (WAL mode) together with the last journal sequence it contains, and the Idempotency-Keys
of the requests it contains with it; once that is on disk, the journal's segments up to that sequence are
unlinked. A restart loads the snapshot and replays the journal after it with the recorded arrival times, so
the windows come back exactly as they were: an acknowledged event is never lost, and never counted twice.

The keys of the requests since the last snapshot live in memory and in their journal records (a restart
reads them back from there), so a request writes one file and nothing else; a key is in the database only
once its request is in the snapshot, which keeps the two consistent whatever is lost in a crash.

What survives what (docs/durability.md): with ``storage.sync: normal`` (default) a record is in the
operating system's cache before the request is answered, so a crash of the process (``kill -9``, OOM
killer) loses nothing; a power loss or kernel crash can lose the last records. ``sync: full`` flushes
each record to disk (``fdatasync``) before the answer, which survives a power loss too at the cost of one
flush per request.

A data directory of an earlier release kept its journal in the database's ``journal`` table: those
records are replayed first, and deleted by the next checkpoint.

The ``memory`` backend keeps the same interface (idempotency keys included) without a file: nothing
survives a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import pickle
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

from exporter.config import Storage
from exporter.engine import journal as segments
from exporter.engine.journal import Record

log = logging.getLogger("mlmon.storage")

DB_NAME = "mlmon.db"
LOCK_NAME = "LOCK"  # held by the process that has the directory open (_DirLock)
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: a sequence is never reused after a checkpoint
    kind TEXT NOT NULL,
    at REAL NOT NULL,
    key TEXT,  -- the request's Idempotency-Key, if it had one
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    at REAL NOT NULL,
    state BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    key TEXT PRIMARY KEY,
    at REAL NOT NULL,
    digest BLOB NOT NULL,
    response BLOB
);
CREATE INDEX IF NOT EXISTS requests_at ON requests (at);
"""


# Where the classes of a snapshot written by an earlier release live now: a snapshot pickles the windows'
# objects by module path, and release 0.1.0 kept every module at the top of the package. Old paths are read
# through this map, so a data directory keeps its windows across the move (tests/engine/test_datadir_compat.py).
MOVED_MODULES = {
    **{f"exporter.{m}": f"exporter.security.{m}" for m in ("auth", "audit", "webconfig", "tls")},
    **{f"exporter.{m}": f"exporter.stats.{m}" for m in ("window", "quality", "drift", "reference", "binning")},
    **{f"exporter.{m}": f"exporter.ingest.{m}" for m in ("validation", "fastpath")},
    **{f"exporter.{m}": f"exporter.engine.{m}" for m in ("state", "joins", "redis_joins", "storage")},
    **{f"exporter.{m}": f"exporter.serve.{m}" for m in ("collector", "openapi")},
    "exporter.app": "exporter.engine.core",
}
MOVED_CLASSES = {
    ("exporter.state", "Histogram"): ("exporter.stats.histogram", "Histogram"),
    # Release 0.1.0 pickled each waiting prediction and early label as an object; they are tuples now, and a
    # snapshot holds them as plain tuples (exporter/engine/joins.py JoinStore.__getstate__).
    **{(m, "Pending"): ("exporter.engine.joins", "_PendingV1") for m in ("exporter.joins", "exporter.engine.joins")},
    **{
        (m, "EarlyLabel"): ("exporter.engine.joins", "_EarlyLabelV1")
        for m in ("exporter.joins", "exporter.engine.joins")
    },
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        module, name = MOVED_CLASSES.get((module, name), (MOVED_MODULES.get(module, module), name))
        return super().find_class(module, name)


def unpickle(blob: bytes):
    """``pickle.loads`` that also reads the class paths of earlier releases (:data:`MOVED_MODULES`)."""
    return _Unpickler(io.BytesIO(blob)).load()


PAGE_SIZE = 65536


class StorageError(Exception):
    """The data directory or its database cannot be used (the message says why and where)."""


class KeyTaken(sqlite3.IntegrityError):
    """The Idempotency-Key of a request being journalled was taken meanwhile (by the same request sent
    twice at once): it is answered as a retry."""


@dataclass(slots=True)
class _RecentKey:
    """An Idempotency-Key of a request journalled since the snapshot (the database has it from the next one)."""

    seq: int
    at: float
    digest: bytes
    response: bytes | None = None


@dataclass(frozen=True)
class Seen:
    """An Idempotency-Key already used: the digest of its body and the response it got (None until applied)."""

    digest: bytes
    response: bytes | None


def digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


class _DirLock:
    """One process per data directory: an exclusive ``flock`` on ``LOCK`` in it, held while a store is open.

    Two exporters journalling into one directory would each replay the other's requests as their own. The
    lock is per process (stores opened again in the same process, as tests do, share it) and the kernel
    drops it when the process dies, so a crash never leaves a stale lock behind.
    """

    _held: dict[str, _DirLock] = {}
    _guard = threading.Lock()

    def __init__(self, path: str, fd: int):
        self.path, self.fd, self.users = path, fd, 0

    @classmethod
    def acquire(cls, path: str) -> _DirLock:
        with cls._guard:
            lock = cls._held.get(path)
            if lock is None:
                name = os.path.join(path, LOCK_NAME)
                try:
                    fd = os.open(name, os.O_RDWR | os.O_CREAT, 0o644)
                except OSError as exc:
                    raise StorageError(f"cannot open {name}: {exc.strerror}") from None
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                    os.close(fd)
                    raise StorageError(
                        f"the data directory {path} is in use by another mlmon process (pid {owner}); "
                        "give each exporter its own storage.path"
                    ) from None
                except OSError as exc:  # a file system without flock (some NFS): run, as before the lock
                    os.close(fd)
                    fd = -1
                    log.warning(
                        "cannot lock the data directory; a second exporter on it would not be refused",
                        extra={"fields": {"path": path, "error": exc.strerror}},
                    )
                if fd >= 0:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                lock = cls._held[path] = cls(path, fd)
            lock.users += 1
            return lock

    def release(self) -> None:
        with self._guard:
            self.users -= 1
            if self.users == 0:
                self._held.pop(self.path, None)
                if self.fd >= 0:
                    os.close(self.fd)  # closing the descriptor releases the flock


class Store:
    """The journal, the snapshot and the Idempotency-Keys; thread-safe (one connection behind a lock)."""

    def __init__(self, settings: Storage):
        self.settings = settings
        self.durable = settings.backend == "sqlite"
        self._dir_lock: _DirLock | None = None
        if self.durable:
            path = os.path.abspath(settings.path)
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create the data directory {path} (storage.path): {exc.strerror}") from None
            self.file = os.path.join(path, DB_NAME)
            self._dir_lock = _DirLock.acquire(path)
        else:
            self.file = ":memory:"
        self.lock = threading.Lock()
        try:
            self.db = sqlite3.connect(self.file, isolation_level=None, check_same_thread=False, timeout=30)
            if self.durable:
                self.db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # takes effect on a new database only
                mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise StorageError(f"{self.file}: SQLite refused WAL mode (got {mode})")
                self.db.execute(f"PRAGMA synchronous={settings.sync.upper()}")
            self.db.executescript(_SCHEMA)
            self._check_schema()
            self.replica = self._replica_id()
            # The journal table: where earlier releases journalled (empty once a checkpoint has run here).
            self.last_seq = self.db.execute(
                "SELECT MAX(COALESCE((SELECT MAX(seq) FROM journal), 0), COALESCE((SELECT seq FROM snapshot), 0),"
                " COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'journal'), 0))"
            ).fetchone()[0]
            self._legacy_bytes = self.db.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM journal").fetchone()[0]
            # Idempotency-Keys of the requests journalled since the snapshot, in journal order.
            self._recent: dict[str, _RecentKey] = {}
            self.journal: segments.Journal | None = None
            if self.durable:
                self.journal = segments.Journal(path, self.last_seq, fsync=settings.sync == "full")
                self.last_seq = self.journal.last_seq
                self._check_continuity()
        except StorageError:
            self._release_dir()
            raise
        except sqlite3.Error as exc:
            self._release_dir()
            raise StorageError(f"{self.file}: {exc}") from None
        except (OSError, segments.JournalError) as exc:
            self.db.close()
            self._release_dir()
            raise StorageError(f"the journal in {path}: {exc}") from None

    @property
    def journal_bytes(self) -> int:
        """Bytes of journal since the last snapshot: what a restart would replay."""
        return self._legacy_bytes + (self.journal.bytes if self.journal is not None else 0)

    # -- opening ------------------------------------------------------------------------------------

    def _check_schema(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise StorageError(
                f"{self.file} has storage schema {row[0]}, this mlmon uses {SCHEMA_VERSION}; "
                "move the data directory away to start afresh"
            )

    def _check_continuity(self) -> None:
        """Log an error when the journal begins after the record that follows the snapshot: the records between
        are missing, which only a copy of the data directory taken in the wrong order leaves (docs/deploy.md)."""
        row = self.db.execute("SELECT seq FROM snapshot WHERE id = 1").fetchone()
        if row is None or self._legacy_bytes or not self.journal.segments:
            return
        first = self.journal.segments[0][0]  # a segment is created when its first sequence is the next one
        if first > row[0] + 1:
            log.error(
                "the journal in %s begins at record %d but the snapshot holds records up to %d only: the requests "
                "between are missing (was the data directory restored from a copy of the database taken before "
                "its journal?)",
                self.journal.directory,
                first,
                row[0],
                extra={"fields": {"snapshot_seq": row[0], "journal_first_seq": first}},
            )

    def _replica_id(self) -> str:
        """A name for this data directory, stable across restarts: it tells replicas' join tokens apart."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'replica'").fetchone()
        if row is not None:
            return row[0]
        replica = uuid.uuid4().hex[:16]
        self.db.execute("INSERT INTO meta VALUES ('replica', ?)", (replica,))
        return replica

    def load(self) -> tuple[int, bytes | None]:
        """The snapshot: (last journal sequence it holds, its bytes), or (0, None) on a first start."""
        with self.lock:
            row = self.db.execute("SELECT seq, state FROM snapshot WHERE id = 1").fetchone()
        return (row[0], row[1]) if row else (0, None)

    def records(self, after: int) -> Iterator[Record]:
        """Journal records after sequence ``after``, in order: an earlier release's (the database's journal
        table, read in pages), then the segment files'. Each Idempotency-Key read is remembered again."""
        seq = after
        while True:
            with self.lock:
                rows = self.db.execute(
                    "SELECT seq, kind, at, key, body FROM journal WHERE seq > ? ORDER BY seq LIMIT 256", (seq,)
                ).fetchall()
            if not rows:
                break
            for row in rows:
                yield Record(row[0], row[1], row[2], row[3], bytes(row[4]))
            seq = rows[-1][0]
        if self.journal is None:
            return
        for record in self.journal.records(after):
            if record.key is not None:
                with self.lock:
                    self._recent[record.key] = _RecentKey(record.seq, record.at, digest(record.body))
            yield record

    # -- the request path ---------------------------------------------------------------------------

    def seen(self, key: str) -> Seen | None:
        with self.lock:
            recent = self._recent.get(key)
            if recent is not None:
                return Seen(recent.digest, recent.response)
            row = self.db.execute("SELECT digest, response FROM requests WHERE key = ?", (key,)).fetchone()
        return Seen(bytes(row[0]), None if row[1] is None else bytes(row[1])) if row else None

    def append(self, kind: str, at: float, body: bytes, key: str | None = None, body_digest: bytes = b"") -> int:
        """Journal one request and remember its Idempotency-Key; return its sequence. Raises KeyTaken when
        the key was taken meanwhile, OSError when the journal cannot be written (nothing is kept then).

        The memory backend journals nothing (sequence numbers still count up, for the join tokens).
        """
        with self.lock:
            seq = self.last_seq + 1
            if self.journal is None:
                if key is not None:
                    try:
                        self.db.execute("INSERT INTO requests VALUES (?, ?, ?, NULL)", (key, at, body_digest))
                    except sqlite3.IntegrityError:
                        raise KeyTaken(key) from None
            else:
                if key is not None and (
                    key in self._recent
                    or self.db.execute("SELECT 1 FROM requests WHERE key = ?", (key,)).fetchone() is not None
                ):
                    raise KeyTaken(key)
                self.journal.append(seq, kind, at, key, body)
                if key is not None:
                    self._recent[key] = _RecentKey(seq, at, body_digest)
            self.last_seq = seq
            return seq

    def abort(self, seq: int, key: str | None) -> None:
        """Take back the request just journalled: it could not be applied (it is answered with an error)."""
        with self.lock:
            if self.journal is not None:
                self.journal.drop_last(seq)
                if key is not None:
                    self._recent.pop(key, None)
            elif key is not None:
                self.db.execute("DELETE FROM requests WHERE key = ?", (key,))

    def set_response(self, key: str, response: bytes) -> None:
        """Remember what an Idempotency-Key was answered (lost in a crash: the replay sets it again)."""
        with self.lock:
            recent = self._recent.get(key)
            if recent is not None:
                recent.response = response
            else:
                self.db.execute("UPDATE requests SET response = ? WHERE key = ?", (response, key))

    # -- maintenance --------------------------------------------------------------------------------

    def cut(self) -> int:
        """The last journal sequence, the records after it going to a new segment: called, under the ingest
        lock, when a checkpoint copies the state (the older segments then hold only what it copies)."""
        with self.lock:
            if self.journal is not None:
                self.journal.rotate()
            return self.last_seq

    def checkpoint(self, seq: int, at: float, state: bytes) -> None:
        """Store a snapshot holding every record up to ``seq`` (from ``cut``) with the Idempotency-Keys of those
        records, in one transaction; once it is on disk, drop the journal up to ``seq``."""
        if not self.durable:
            return
        with self.lock:
            keys = [(k, r.at, r.digest, r.response) for k, r in self._recent.items() if r.seq <= seq]
            try:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.execute("INSERT OR REPLACE INTO snapshot VALUES (1, ?, ?, ?)", (seq, at, state))
                self.db.executemany("INSERT OR REPLACE INTO requests VALUES (?, ?, ?, ?)", keys)
                self.db.execute("DELETE FROM journal WHERE seq <= ?", (seq,))  # an earlier release's records
                # The journal table's counter past every sequence used: an earlier release run on this directory
                # after a clean stop numbers its records after ours, and ours after its when we come back.
                self.db.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'journal'", (self.last_seq,))
                self.db.execute(
                    "INSERT INTO sqlite_sequence (name, seq) SELECT 'journal', ? "
                    "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'journal')",
                    (self.last_seq,),
                )
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            for key, *_ in keys:
                del self._recent[key]
            self._legacy_bytes = self.db.execute("SELECT COALESCE(SUM(LENGTH(body)), 0) FROM journal").fetchone()[0]
            # Fold the write-ahead log into the database: the snapshot is then on disk (the checkpoint syncs
            # the log and the database), which it must be before the journal it holds is unlinked.
            busy = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if busy:  # cannot happen with this one connection; the segments then wait for the next checkpoint
                log.warning("the snapshot could not be folded into %s yet; the journal is kept", self.file)
                return
            self.journal.remove_through(seq)

    def forget_requests(self, now: float) -> int:
        """Drop Idempotency-Keys past storage.idempotency_ttl, and the oldest over max_idempotency_keys."""
        ttl, cap = self.settings.idempotency_ttl_seconds, self.settings.max_idempotency_keys
        with self.lock:
            old = [k for k, r in self._recent.items() if r.at < now - ttl]
            for key in old:
                del self._recent[key]
            gone = len(old) + self.db.execute("DELETE FROM requests WHERE at < ?", (now - ttl,)).rowcount
            count = self.db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
            over = count + len(self._recent) - cap
            if over > 0:  # the database's keys are older than those since the snapshot: they go first
                gone += self.db.execute(
                    "DELETE FROM requests WHERE key IN (SELECT key FROM requests ORDER BY at LIMIT ?)",
                    (min(over, count),),
                ).rowcount
                for key in list(islice(self._recent, max(0, over - count))):
                    del self._recent[key]
                    gone += 1
        return gone

    def size_bytes(self) -> int:
        """Bytes on disk: the database, its write-ahead log and the journal's segments (read at scrape time,
        without the lock: a segment a checkpoint unlinks meanwhile counts as nothing)."""
        if not self.durable:
            return 0
        total = 0
        for name in [self.file, self.file + "-wal", *(path for _, path in self.journal.segments)]:
            with contextlib.suppress(OSError):
                total += os.path.getsize(name)
        return total

    def close(self) -> None:
        with self.lock:
            if self.journal is not None:
                self.journal.close()
            self.db.close()
            self._release_dir()

    def _release_dir(self) -> None:
        if self._dir_lock is not None:
            self._dir_lock.release()
            self._dir_lock = None
