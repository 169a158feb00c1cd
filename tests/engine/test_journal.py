"""The journal's segment files (exporter/engine/journal.py): what is appended is read back exactly, across
rotations, removals and reopenings; a crash's partial record, a damaged byte or a failed write never makes
it read anything else than a prefix of what was acknowledged. Checked against a plain list of the records
appended, on generated sequences of operations."""

from __future__ import annotations

import logging
import os
import random
import shutil

import pytest

from exporter.config import Storage
from exporter.engine import journal as jl
from exporter.engine.storage import StorageError, Store

KINDS = ["predictions", "labels", "predictions/arrow", "labels/columns", "reference", "reset"]


def record(rng: random.Random, seq: int) -> jl.Record:
    key = rng.choice([None, None, "", f"k-{seq}", f"clé-{seq}-\u2603"])
    body = rng.randbytes(rng.choice([0, 1, 17, 300, 5000, 70_000]))
    at = rng.choice([0.0, 1.5, 1_800_000_000.123456, -3.25, rng.uniform(0, 2e9)])
    return jl.Record(seq, rng.choice(KINDS), at, key, body)


def append(j: jl.Journal, e: jl.Record) -> None:
    j.append(e.seq, e.kind, e.at, e.key, e.body)


def segment_files(data) -> list[str]:
    return sorted(p for p in os.listdir(os.path.join(data, jl.DIRECTORY)))


@pytest.mark.parametrize("seed", range(12))
def test_records_read_back_exactly_across_rotations_removals_and_reopening(tmp_path, seed):
    rng = random.Random(seed)
    j = jl.Journal(str(tmp_path), 0, fsync=False)
    written: list[jl.Record] = []
    removed_through = 0
    for _ in range(rng.randint(20, 80)):
        op = rng.random()
        if op < 0.7:
            e = record(rng, j.last_seq + 1)
            append(j, e)
            written.append(e)
        elif op < 0.8:
            j.rotate()
        elif op < 0.9 and written:
            removed_through = max(removed_through, rng.choice(written).seq)
            j.rotate()  # as a checkpoint does: cut, then remove what the snapshot holds
            j.remove_through(removed_through)
        else:
            j.close()
            j = jl.Journal(str(tmp_path), 0, fsync=False)
        after = rng.choice([removed_through] + [e.seq for e in written if e.seq >= removed_through])
        assert list(j.records(after)) == [e for e in written if e.seq > after]
        assert j.last_seq == (written[-1].seq if written else 0)
        on_disk = sum(os.path.getsize(p) - len(jl.MAGIC) for _, p in j.segments)
        assert j.bytes == on_disk
    j.close()
    again = jl.Journal(str(tmp_path), 0, fsync=False)
    assert list(again.records(removed_through)) == [e for e in written if e.seq > removed_through]


def fill(data, n: int, seed: int = 0, rotate_every: int = 0) -> list[jl.Record]:
    rng = random.Random(seed)
    j = jl.Journal(str(data), 0, fsync=False)
    out = []
    for i in range(n):
        e = record(rng, i + 1)
        append(j, e)
        out.append(e)
        if rotate_every and (i + 1) % rotate_every == 0 and i + 1 < n:
            j.rotate()
    j.close()
    return out


@pytest.mark.parametrize("seed", range(4))
def test_a_record_cut_short_by_a_crash_is_dropped_and_the_journal_goes_on(tmp_path, seed):
    """Cut the active segment at every kind of place (inside the header, the kind, the key, the body):
    the journal reopens with the records written whole before the cut, and appends after them."""
    written = fill(tmp_path / "src", 12, seed)
    (path,) = [os.path.join(tmp_path / "src" / jl.DIRECTORY, f) for f in segment_files(tmp_path / "src")]
    size = os.path.getsize(path)
    ends, offset = [], len(jl.MAGIC)
    for e in written:
        offset += len(jl.encode(e.seq, e.kind, e.at, e.key, e.body)) + len(e.body)
        ends.append(offset)
    assert ends[-1] == size
    rng = random.Random(seed)
    for cut in sorted({0, 3, len(jl.MAGIC), size - 1, *(rng.randrange(size) for _ in range(30))}):
        data = tmp_path / f"cut{cut}"
        shutil.copytree(tmp_path / "src", data)
        os.truncate(os.path.join(data, jl.DIRECTORY, os.path.basename(path)), cut)
        whole = [e for e, end in zip(written, ends) if end <= cut]
        j = jl.Journal(str(data), 0, fsync=False)
        assert list(j.records(0)) == whole
        assert j.last_seq == (whole[-1].seq if whole else 0)
        extra = jl.Record(j.last_seq + 1, "labels", 2.0, "after-the-crash", b"{}")
        append(j, extra)
        j.close()
        assert list(jl.Journal(str(data), 0, fsync=False).records(0)) == whole + [extra]


def test_a_damaged_record_ends_the_journal_and_later_segments_are_set_aside(tmp_path, caplog):
    written = fill(tmp_path, 30, seed=7, rotate_every=10)
    names = segment_files(tmp_path)
    assert len(names) == 3
    middle = os.path.join(tmp_path, jl.DIRECTORY, names[1])
    # The fifth record of the middle segment: one of its body's bytes flipped (as a power loss can leave).
    offset = len(jl.MAGIC) + sum(
        len(jl.encode(e.seq, e.kind, e.at, e.key, e.body)) + len(e.body) for e in written[10:14]
    )
    e = written[14]
    at = offset + len(jl.encode(e.seq, e.kind, e.at, e.key, e.body)) + max(0, len(e.body) // 2 - 1)
    with open(middle, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0x40]) if byte else b"\x01")
    with caplog.at_level(logging.WARNING, logger="mlmon.storage"):
        j = jl.Journal(str(tmp_path), 0, fsync=False)
    assert list(j.records(0)) == written[:14]
    assert j.last_seq == 14
    assert segment_files(tmp_path) == names[:2] + [names[2] + ".damaged"]
    assert "cut off" in caplog.text and "renamed" in caplog.text


def test_a_segment_of_another_format_is_refused_by_name(tmp_path):
    os.makedirs(tmp_path / jl.DIRECTORY)
    (tmp_path / jl.DIRECTORY / f"{1:020d}.seg").write_bytes(b"mlmon journal 9\n....")
    with pytest.raises(StorageError, match=r"not a journal segment of this mlmon"):
        Store(Storage(backend="sqlite", path=str(tmp_path)))


def test_the_record_just_appended_can_be_taken_back_and_its_sequence_is_not_reused(tmp_path):
    j = jl.Journal(str(tmp_path), 5, fsync=False)
    append(j, jl.Record(6, "labels", 1.0, None, b"kept"))
    append(j, jl.Record(7, "labels", 2.0, "k", b"taken back"))
    j.drop_last(7)
    with pytest.raises(jl.JournalError):
        j.drop_last(6)  # only the last one appended
    assert j.last_seq == 7
    append(j, jl.Record(8, "labels", 3.0, None, b"next"))
    j.close()
    assert [e.body for e in jl.Journal(str(tmp_path), 0, fsync=False).records(0)] == [b"kept", b"next"]


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    """A full disk in the middle of a record: the segment is cut back, the error raised, the next write
    goes where the failed one began."""
    j = jl.Journal(str(tmp_path), 0, fsync=False)
    append(j, jl.Record(1, "labels", 1.0, None, b"one"))
    real = os.writev

    def half_then_full(fd, buffers):
        data = b"".join(buffers)
        os.write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "writev", half_then_full)
    with pytest.raises(OSError, match="No space"):
        append(j, jl.Record(2, "labels", 2.0, "k", b"two" * 100))
    monkeypatch.setattr(os, "writev", real)
    assert j.last_seq == 1
    append(j, jl.Record(2, "labels", 2.0, "k", b"two again"))
    j.close()
    assert [e.body for e in jl.Journal(str(tmp_path), 0, fsync=False).records(0)] == [b"one", b"two again"]


def test_sync_full_flushes_every_record_before_it_returns(tmp_path, monkeypatch):
    flushed = []
    monkeypatch.setattr(os, "fdatasync", lambda fd: flushed.append(fd))
    j = jl.Journal(str(tmp_path), 0, fsync=True)
    created = len(flushed)  # the new segment's header
    for seq in range(1, 4):
        append(j, jl.Record(seq, "labels", 1.0, None, b"x"))
    assert len(flushed) - created == 3
    assert not jl.Journal(str(tmp_path / "other"), 0, fsync=False).fsync


# -- the store: Idempotency-Keys live with their records until a snapshot holds them ------------------------------


def store(path) -> Store:
    return Store(Storage(backend="sqlite", path=str(path)))


def test_keys_since_the_snapshot_come_back_from_the_journal_and_go_with_it(tmp_path):
    s = store(tmp_path)
    s.append("labels", 10.0, b"one", "key-1", b"d1")
    s.set_response("key-1", b"answer-1")
    seq = s.cut()
    s.checkpoint(seq, 11.0, b"snapshot")
    s.append("labels", 12.0, b"two", "key-2", b"d2")
    # A crash here: a new store on the directory (what kill -9 leaves).
    again = store(tmp_path)
    assert again.seen("key-1").response == b"answer-1"  # in the database with the snapshot
    assert again.seen("key-2") is None  # known again once the replay has read its record
    assert [(r.seq, r.key) for r in again.records(again.load()[0])] == [(2, "key-2")]
    assert again.seen("key-2").digest == jl_digest(b"two")
    # A power loss that lost the record loses its key too: a retry is applied, not answered as done.
    for _, path in again.journal.segments:
        os.truncate(path, len(jl.MAGIC))
    third = store(tmp_path)
    list(third.records(third.load()[0]))
    assert third.seen("key-2") is None
    third.append("labels", 13.0, b"two", "key-2", b"d2")
    assert third.seen("key-2") is not None


def jl_digest(body: bytes) -> bytes:
    from exporter.engine.storage import digest

    return digest(body)


def test_a_checkpoint_unlinks_the_segments_its_snapshot_holds(tmp_path):
    s = store(tmp_path)
    for i in range(5):
        s.append("labels", float(i), b"x" * 1000)
    seq = s.cut()
    s.append("labels", 9.0, b"after the cut")  # journalled while the snapshot is written
    s.checkpoint(seq, 9.0, b"snapshot")
    assert len(s.journal.segments) == 1
    assert [r.body for r in s.records(seq)] == [b"after the cut"]
    assert s.journal_bytes == len(jl.encode(6, "labels", 9.0, None, b"after the cut")) + len(b"after the cut")


def test_a_journal_that_begins_after_the_snapshot_is_reported(tmp_path, caplog):
    """A copy of the database taken before the journal's, with a checkpoint in between that unlinked the
    segments the older snapshot needs: the records between are missing, and the log says so."""
    live = tmp_path / "live"
    s = store(live)
    s.append("labels", 1.0, b"one")
    s.checkpoint(s.cut(), 1.0, b"snapshot 1")
    s.close()
    database_then = (live / "mlmon.db").read_bytes()  # closed: the write-ahead log is folded in
    s = store(live)
    s.append("labels", 2.0, b"two")
    s.checkpoint(s.cut(), 2.0, b"snapshot 2")
    s.append("labels", 3.0, b"three")
    s.close()
    with caplog.at_level(logging.ERROR, logger="mlmon.storage"):
        store(live).close()
    assert "missing" not in caplog.text
    (live / "mlmon.db").write_bytes(database_then)
    with caplog.at_level(logging.ERROR, logger="mlmon.storage"):
        store(live).close()
    assert "begins at record 3 but the snapshot holds records up to 1 only" in caplog.text


def test_a_rotation_that_fails_leaves_no_segment_behind(tmp_path, monkeypatch):
    """A full disk when a checkpoint starts a new segment: the records go on to the current one, and no empty
    segment named after them is left to mislead the next start about where they are."""
    j = jl.Journal(str(tmp_path), 0, fsync=False)
    append(j, jl.Record(1, "labels", 1.0, None, b"one"))
    real = os.write

    def full(fd, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space"):
        j.rotate()
    monkeypatch.setattr(os, "write", real)
    append(j, jl.Record(2, "labels", 2.0, None, b"two"))
    j.close()
    assert segment_files(tmp_path) == [f"{1:020d}.seg"]
    again = jl.Journal(str(tmp_path), 0, fsync=False)
    again.remove_through(1)  # a snapshot holding record 1 only must not take record 2 with it
    assert [e.body for e in again.records(0)] == [b"one", b"two"]


def test_an_earlier_release_numbers_its_records_after_ours_and_we_after_its(tmp_path):
    """Going back to an earlier release after a clean stop (it journals in the database's table, numbered by
    SQLite's counter), then forward again: sequence numbers keep growing, nothing is reported missing."""
    import sqlite3

    s = store(tmp_path)
    for i in range(3):
        s.append("labels", float(i), b"ours")
    s.checkpoint(s.cut(), 3.0, b"snapshot")
    s.close()
    db = sqlite3.connect(tmp_path / "mlmon.db")  # what the earlier release's append does
    older = db.execute("INSERT INTO journal (kind, at, key, body) VALUES ('labels', 4.0, NULL, x'00')").lastrowid
    db.commit()
    db.close()
    assert older == 4
    again = store(tmp_path)
    assert [r.seq for r in again.records(3)] == [4]
    assert again.append("labels", 5.0, b"ours again") == 5


def test_the_size_on_disk_counts_a_segment_unlinked_while_it_is_read_as_nothing(tmp_path):
    """A scrape reads the data directory's size without the store's lock while a checkpoint may unlink a
    segment: the gauge must not fail."""
    s = store(tmp_path)
    s.append("labels", 1.0, b"x" * 1000)
    before = s.size_bytes()
    s.journal.segments = [*s.journal.segments, (99, str(tmp_path / "journal" / "gone.seg"))]
    assert s.size_bytes() == before > 1000
