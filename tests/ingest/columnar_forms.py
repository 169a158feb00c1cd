"""Row batches in the columnar forms of docs/api.md#columnar-batches (columnar JSON, an Arrow IPC stream), for
the tests that send the same predictions in several forms. pyarrow is imported only when a stream is asked
for, so that the tests of JSON bodies run without it."""

from __future__ import annotations

import json
from typing import Any

PLAIN = {"id": "ids", "timestamp": "timestamps", "prediction": "predictions", "label": "labels"}
PLAIN |= {"score": "score", "latency_seconds": "latency_seconds"}
OBJECTS = ("features", "attributes", "attributions", "scores")
BATCH = ("model", "version", "registry")


def transpose(rows: list[dict], model: str, batch: dict | None = None) -> dict:
    """A row batch of one model as columns: each field a column (null where a row lacks it), object fields as
    objects of columns. Fields that are no object where one is due, and unknown fields, are left out (a
    columnar body cannot carry them)."""
    body: dict = {"model": model, **(batch or {})}
    for field, column in PLAIN.items():
        if any(field in r for r in rows):
            body[column] = [r.get(field) for r in rows]
    for field in OBJECTS:
        values = [r.get(field) if isinstance(r.get(field), dict) else None for r in rows]
        names = list(dict.fromkeys(k for v in values if v for k in v))
        if names:
            body[field] = {k: [(v or {}).get(k) for v in values] for k in names}
    return body


def arrow_table(body: dict) -> Any:
    """A columnar body as an Arrow table (object fields flattened to `field.name` columns, the batch-wide
    fields in the schema's metadata, a registry entry as its JSON); None when a column's values have no
    common Arrow type (numbers and text mixed, integers beyond 64 bits)."""
    import pyarrow as pa

    arrays, meta = {}, {}
    for name, value in body.items():
        if name in BATCH:
            meta[name] = value if isinstance(value, str) else json.dumps(value)
        elif isinstance(value, dict):
            arrays.update({f"{name}.{k}": v for k, v in value.items()})
        else:
            arrays[name] = value
    try:
        return pa.table({k: pa.array(v) for k, v in arrays.items()}).replace_schema_metadata(meta)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return None


def arrow_stream(body: dict, **options) -> bytes | None:
    """A columnar body as an Arrow IPC stream; None as arrow_table."""
    table = arrow_table(body)
    return None if table is None else stream_of(table, **options)


def stream_of(table: Any, **options) -> bytes:
    """An Arrow table as an IPC stream (``options``: pyarrow's IpcWriteOptions)."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(**options)) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
