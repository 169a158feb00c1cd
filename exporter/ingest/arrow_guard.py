"""A check of an Arrow IPC stream's framing and declared sizes, run before pyarrow reads an untrusted body.

Ingest bodies may be Arrow IPC streams (``application/vnd.apache.arrow.stream``) of at most
limits.max_body_bytes. pyarrow reads such a stream safely, but not in memory and time bounded by its size:

- buffers compressed with LZ4_FRAME or ZSTD decompress to whatever size they declare (a 64 MiB body can
  become many GiB);
- a record batch's ``length`` is only a number: a batch of zero columns (or of null columns) may declare
  2**62 rows in a few bytes, and whatever the caller then does per row is unbounded;
- a dictionary delta is appended to its dictionary, and pyarrow concatenates the pieces again for every
  record batch that follows deltas: measured with pyarrow 26, 400 deltas of 20 kB interleaved with
  one-row batches (an 8 MB body) made ``read_all()`` allocate 1.6 GB and take 5 s.

:func:`check_stream` walks the encapsulated messages itself and reads the few flatbuffer fields that
decide those sizes (Arrow's format/Message.fbs and Schema.fbs), without decoding any batch: it is linear
in the number of messages and in the size of their metadata, never in the size of their bodies. It
refuses, with a :class:`StreamRefused` whose message says what to change, a stream that is compressed,
declares too many rows, batches or dictionary entries, or is not a well-formed stream.

What it guarantees is a bound, not a full validation: a stream it accepts may still be refused by pyarrow
(buffers that do not fit the schema, dictionary ids the schema does not name, a dictionary missing before
the first batch...), so the caller must still catch pyarrow's errors (ArrowInvalid, and OSError for some
truncations). The schema's fields are not read: nested and null types, whose child lengths the body does
not bound, and the number of columns (pyarrow builds objects per column and batch, so a schema of 100,000
columns costs far more memory than its metadata), are for the caller to limit from the schema pyarrow
reads (``pa.ipc.open_stream(raw).schema`` reads only the schema message) before reading the batches.

Accepted forms, as pyarrow reads them:

- each message may have the 0xFFFFFFFF continuation marker or not (the format before Arrow 0.15, which
  ``IpcWriteOptions(use_legacy_format=True)`` still writes); both end-of-stream markers are accepted;
- a stream may end at a message boundary without an end-of-stream marker (the format allows a writer to
  signal the end by closing the stream). So every prefix of a valid stream cut at a message boundary
  after the schema is accepted, with the rows of the batches it holds; a cut anywhere else is refused.
  One such prefix pyarrow refuses (cleanly, "IPC stream ended without reading the expected number of
  dictionaries"): a cut after some but not all of the dictionaries sent before the first record batch,
  as the guard does not count the schema's dictionary fields.
- bytes after an end-of-stream marker are refused (pyarrow would silently ignore them).
"""

from __future__ import annotations

import operator
import struct

__all__ = ["StreamRefused", "check_stream", "DEFAULT_MAX_DICTIONARY", "DELTA_COPY_RATIO"]

# A dictionary's entries, whole or accumulated over its deltas. Categorical values have few distinct
# values, but a unified dictionary may hold as many entries as a batch has rows (limits.max_batch_size
# is at most 1,000,000).
DEFAULT_MAX_DICTIONARY = 1_000_000

# How many bytes of dictionaries pyarrow may copy when it concatenates deltas, as a multiple of the body's
# size. A writer with emit_dictionary_deltas=True whose dictionary grows over k batches makes pyarrow copy
# about k/2 times the dictionary's bytes, so honest streams of a few batches stay well under this.
DELTA_COPY_RATIO = 4

# MessageHeader union (Message.fbs): 0 is NONE.
_SCHEMA, _DICTIONARY_BATCH, _RECORD_BATCH, _TENSOR, _SPARSE_TENSOR = 1, 2, 3, 4, 5
# MetadataVersion (Schema.fbs): V1 = 0 ... V5 = 4. pyarrow reads only V4 and V5.
_V4, _V5 = 3, 4
_CODECS = {0: "lz4", 1: "zstd"}
_CONTINUATION = 0xFFFFFFFF

_i16 = struct.Struct("<h").unpack_from
_u16x2 = struct.Struct("<HH").unpack_from
_u32 = struct.Struct("<I").unpack_from
_i32 = struct.Struct("<i").unpack_from
_i64 = struct.Struct("<q").unpack_from
_i8 = struct.Struct("<b").unpack_from


class StreamRefused(ValueError):
    """An Arrow stream that must not be read. ``str(exc)`` is a sentence for the client; ``reason`` is one of
    compressed, too_many_rows, too_many_batches, dictionary_too_large, malformed (for counters and tests)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _malformed(detail: str, at: int) -> StreamRefused:
    return StreamRefused(
        "malformed",
        f"the body is not a well-formed Arrow IPC stream: {detail} (at byte {at}); send the bytes "
        "an Arrow stream writer wrote (e.g. pyarrow.ipc.new_stream), whole",
    )


# Unpackers of the first n vtable slots, one per n (a table here is read for at most 4 fields).
_SLOTS = [struct.Struct(f"<{n}H").unpack_from for n in range(5)]


def _table(buf, lo: int, hi: int, pos: int, widths: tuple[int, ...], what: str) -> list[int]:
    """The absolute positions of the first ``len(widths)`` fields of the flatbuffer table at ``pos``, -1 for a
    field that is absent (it has its default value). Field i is ``widths[i]`` bytes wide.

    The table lies in a message's metadata [lo, hi) of ``buf``, and every offset comes from the client: each
    is checked before it is followed (the vtable and the table's inline part inside the region, each field
    inside the inline part), as flatbuffers' own verifier does. Nothing is followed beyond a fixed depth
    (Message -> header -> RecordBatch -> BodyCompression), so hostile offsets cannot make a loop or a
    recursion."""
    if pos < lo or pos + 4 > hi:
        raise _malformed(f"the {what} table lies outside its message's metadata", pos)
    # soffset_t is signed: the vtable may lie before or after its table.
    vtable = pos - _i32(buf, pos)[0]
    if vtable < lo or vtable + 4 > hi:
        raise _malformed(f"the vtable of the {what} table lies outside its message's metadata", pos)
    vtable_size, size = _u16x2(buf, vtable)
    if vtable_size < 4 or vtable_size & 1 or vtable + vtable_size > hi or size < 4 or pos + size > hi:
        raise _malformed(f"the {what} table or its vtable has a bad size", pos)
    fields = [-1] * len(widths)
    # A vtable shorter than the schema's field count was written by an older schema, or leaves the last
    # fields at their defaults.
    count = min(len(widths), (vtable_size - 4) >> 1)
    for i, offset in enumerate(_SLOTS[count](buf, vtable + 4)):
        if offset:
            if offset < 4 or offset + widths[i] > size:
                raise _malformed(f"a field of the {what} table lies outside it", pos)
            fields[i] = pos + offset
    return fields


def _target(buf, hi: int, at: int, what: str) -> int:
    """Where the offset field at ``at`` points (uoffset_t: always forward), checked to lie in the region."""
    target = at + _u32(buf, at)[0]
    if target + 4 > hi:
        raise _malformed(f"the {what} lies outside its message's metadata", at)
    return target


def _vector(buf, hi: int, at: int, item_size: int, what: str) -> tuple[int, int]:
    """(position of the first item, number of items) of the vector the offset field at ``at`` points to."""
    if at < 0:
        raise _malformed(f"a record batch has no {what}", at)
    target = _target(buf, hi, at, what)
    count = _u32(buf, target)[0]
    if target + 4 + count * item_size > hi:
        raise _malformed(f"the {what} of a record batch run past its message's metadata", target)
    return target + 4, count


# RecordBatch: length (long), nodes, buffers, compression (offsets). BodyCompression: codec (byte).
_RECORD_BATCH_FIELDS = (8, 4, 4, 4)
_COMPRESSION_FIELDS = (1,)
# Message: version (short), header_type (ubyte), header (offset), bodyLength (long).
_MESSAGE_FIELDS = (2, 1, 4, 8)
# DictionaryBatch: id (long), data (offset), isDelta (bool).
_DICTIONARY_BATCH_FIELDS = (8, 4, 1)


def _record_batch(buf, lo: int, hi: int, pos: int, body_length: int, what: str) -> int:
    """The row count of the RecordBatch table at ``pos`` (also the data of a DictionaryBatch), once checked."""
    length_at, nodes_at, buffers_at, compression_at = _table(buf, lo, hi, pos, _RECORD_BATCH_FIELDS, what)
    if compression_at >= 0:
        # Refused whatever the codec and method say: any compressed buffer may declare any size.
        (codec_at,) = _table(
            buf, lo, hi, _target(buf, hi, compression_at, "compression"), _COMPRESSION_FIELDS, "compression"
        )
        codec = 0 if codec_at < 0 else _i8(buf, codec_at)[0]  # LZ4_FRAME is the default
        raise StreamRefused(
            "compressed",
            f"the Arrow stream is compressed ({_CODECS.get(codec, f'codec {codec}')}); send it uncompressed "
            "(e.g. pyarrow.ipc.IpcWriteOptions(compression=None))",
        )
    length = 0 if length_at < 0 else _i64(buf, length_at)[0]
    if length < 0:
        raise _malformed(f"a {what} declares a negative length", pos)
    # The field nodes are not read (their lengths only matter for nested and null types, the caller's to
    # refuse), but their vector must lie in the metadata.
    _vector(buf, hi, nodes_at, 16, "field nodes")
    start, count = _vector(buf, hi, buffers_at, 16, "buffers")
    if count:
        # Buffer {offset, length}: each must lie inside this message's body. pyarrow checks that too; this is
        # a second line, kept cheap: the int64s are read as unsigned, so a negative one becomes at least 2**63
        # and fails the same comparison, and the work is a few C loops over the vector.
        values = struct.unpack_from(f"<{2 * count}Q", buf, start)
        if max(map(operator.add, values[0::2], values[1::2])) > body_length:
            raise _malformed(f"a buffer of a {what} lies outside its message's body", start)
    return length


def check_stream(
    raw: bytes | bytearray | memoryview,
    *,
    max_rows: int,
    max_batches: int = 10_000,
    max_dictionary: int = DEFAULT_MAX_DICTIONARY,
    require_end: bool = False,
) -> int:
    """Check an Arrow IPC stream before pyarrow reads it; return the number of rows its record batches declare.

    Raises :class:`StreamRefused` when the stream is compressed (reason ``compressed``), when its record
    batches declare more than ``max_rows`` rows in total (``too_many_rows``), when it has more than
    ``max_batches`` record and dictionary batches (``too_many_batches``; the schema is not counted), when a
    dictionary, whole or grown by deltas, has more than ``max_dictionary`` entries, or its deltas would make
    pyarrow copy more than :data:`DELTA_COPY_RATIO` times the body's size in dictionaries
    (``dictionary_too_large``), and when it is not a well-formed stream (``malformed``): truncated, a
    message or body past the end, a bad continuation marker or length, a first message that is not a
    Schema, a second Schema, a Tensor, SparseTensor or unknown message, a metadata version pyarrow does not
    read (before V4), negative lengths, a buffer outside its body, a delta to a dictionary never sent, bytes
    after the end-of-stream marker. The module's docstring says what it does not check. ``require_end``: a
    stream without its end-of-stream marker is refused too (``malformed``): a body cut at a message boundary
    then never passes for a shorter whole stream.
    """
    if max_rows < 0 or max_batches < 0 or max_dictionary < 0:
        raise ValueError("max_rows, max_batches and max_dictionary must not be negative")
    buf = raw if isinstance(raw, bytes) else memoryview(raw).cast("B")
    end = len(buf)
    pos = 0
    seen_schema = False
    batches = 0
    rows = 0
    # Per dictionary id: [entries, body bytes] of the dictionary as it stands (base and deltas).
    dictionaries: dict[int, list[int]] = {}
    pending_deltas: set[int] = set()  # ids that got deltas since the last record batch
    copied = 0  # bytes of dictionaries pyarrow re-concatenates, summed over the record batches
    copy_budget = DELTA_COPY_RATIO * end

    while True:
        if pos == end:
            if not seen_schema:
                raise _malformed("the body is empty" if end == 0 else "the stream ends before its schema", pos)
            if require_end:
                raise _malformed("the stream ends without its end-of-stream marker (cut short, or not closed)", pos)
            break  # ended at a message boundary: the writer closed the stream without the marker
        if pos + 4 > end:
            raise _malformed("the stream is cut inside a message's prefix", pos)
        if _u32(buf, pos)[0] == _CONTINUATION:
            if pos + 8 > end:
                raise _malformed("the stream is cut after a continuation marker", pos)
            size = _i32(buf, pos + 4)[0]
            meta = pos + 8
        else:
            # No continuation marker: the framing of Arrow before 0.15, the length comes first.
            size = _i32(buf, pos)[0]
            meta = pos + 4
        if size == 0:
            if not seen_schema:
                raise _malformed("the stream ends before its schema", pos)
            if meta != end:
                raise _malformed(f"{end - meta} bytes follow the end-of-stream marker", meta)
            break
        if size < 0:
            raise _malformed("a message starts with neither a continuation marker nor a metadata length", pos)
        hi = meta + size
        if hi > end:
            raise _malformed("a message's metadata runs past the end of the body", pos)

        if meta + 4 > hi:
            raise _malformed("a message's metadata is too short", meta)
        version_at, kind_at, header_at, body_length_at = _table(
            buf, meta, hi, meta + _u32(buf, meta)[0], _MESSAGE_FIELDS, "Message"
        )
        version = 0 if version_at < 0 else _i16(buf, version_at)[0]
        if version != _V4 and version != _V5:
            raise _malformed(
                f"a message has metadata version V{version + 1}, not V4 or V5 (written by Arrow 0.8 or later)", pos
            )
        kind = 0 if kind_at < 0 else buf[kind_at]
        body_length = 0 if body_length_at < 0 else _i64(buf, body_length_at)[0]
        if body_length < 0 or body_length > end - hi:
            raise _malformed("a message's body runs past the end of the body", pos)
        if header_at < 0:
            raise _malformed("a message has no header", pos)
        header = _target(buf, hi, header_at, "message header")

        if kind == _SCHEMA:
            if seen_schema:
                raise _malformed("a second schema follows the first", pos)
            _table(buf, meta, hi, header, (), "Schema")
            seen_schema = True
        elif not seen_schema:
            raise _malformed("the first message is not a schema", pos)
        elif kind == _RECORD_BATCH or kind == _DICTIONARY_BATCH:
            batches += 1
            if batches > max_batches:
                raise StreamRefused(
                    "too_many_batches",
                    f"the Arrow stream has more than {max_batches} record and dictionary batches; "
                    "write fewer, larger batches",
                )
            if kind == _RECORD_BATCH:
                rows += _record_batch(buf, meta, hi, header, body_length, "record batch")
                if rows > max_rows:
                    raise StreamRefused(
                        "too_many_rows",
                        f"the Arrow stream declares more than {max_rows} rows; send at most {max_rows} a request",
                    )
                # pyarrow joins each dictionary's pieces when a record batch needs it: the whole dictionary
                # is copied once per batch that follows deltas (the measurement in the module's docstring).
                if pending_deltas:
                    copied += sum(dictionaries[d][1] for d in pending_deltas)
                    pending_deltas.clear()
                    if copied > copy_budget:
                        raise StreamRefused(
                            "dictionary_too_large",
                            "the Arrow stream's dictionary deltas grow dictionaries that would be copied whole "
                            f"for every batch, more than {DELTA_COPY_RATIO} times the body's size; send each "
                            "dictionary whole (e.g. pyarrow.ipc.IpcWriteOptions(emit_dictionary_deltas=False))",
                        )
            else:
                id_at, data_at, delta_at = _table(buf, meta, hi, header, _DICTIONARY_BATCH_FIELDS, "DictionaryBatch")
                dictionary_id = 0 if id_at < 0 else _i64(buf, id_at)[0]
                if data_at < 0:
                    raise _malformed("a dictionary batch has no data", pos)
                data = _target(buf, hi, data_at, "dictionary data")
                entries = _record_batch(buf, meta, hi, data, body_length, "dictionary batch")
                if delta_at >= 0 and buf[delta_at]:
                    current = dictionaries.get(dictionary_id)
                    if current is None:
                        raise _malformed(f"a delta to dictionary {dictionary_id}, which was never sent", pos)
                    current[0] += entries
                    current[1] += body_length
                    pending_deltas.add(dictionary_id)
                else:
                    # A replacement: pyarrow keeps it as one piece, read in place from the body.
                    current = dictionaries[dictionary_id] = [entries, body_length]
                    pending_deltas.discard(dictionary_id)
                if current[0] > max_dictionary:
                    raise StreamRefused(
                        "dictionary_too_large",
                        f"dictionary {dictionary_id} of the Arrow stream has more than {max_dictionary} "
                        "entries; send fewer distinct values, or the column without dictionary encoding",
                    )
        elif kind == _TENSOR or kind == _SPARSE_TENSOR:
            name = "Tensor" if kind == _TENSOR else "SparseTensor"
            raise _malformed(f"a {name} message, which a stream of record batches cannot hold", pos)
        else:
            raise _malformed(f"a message of unknown type {kind}", pos)
        pos = hi + body_length
    return rows
