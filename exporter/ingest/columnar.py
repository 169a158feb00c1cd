"""Columnar batches: one model's predictions (or labels) as columns, in JSON or as an Apache Arrow IPC stream.

A columnar body is the transposition of a row batch (docs/api.md, "Columnar batches"): the batch-wide fields
(``model``, ``version``, ``registry``) once, every other field as a column of one value per row (``ids``,
``timestamps``, ``predictions``, ``labels``, ``latency_seconds``), and the object fields as objects of
columns (``features``, ``attributes``, ``attributions``, ``scores``). Row ``i`` is the prediction made of
each column's ``i``-th value; in an object field a null is left out of the row's object, and a row whose
object would be empty has none. An Arrow stream holds the same columns flat (``features.age``, ``scores.yes``)
and the batch-wide fields in its schema's metadata.

Two paths, as for row bodies (exporter/ingest/fastpath.py):

- :meth:`ColumnarDecoder.predictions` takes a valid batch straight into :class:`Columns`: numpy arrays and
  lists, typed and checked by msgspec (JSON) or by the Arrow types and vectorised checks, with no Python object
  per row but ids and categorical values. The window update then works on whole columns (``ModelState``).
- Anything it does not take goes through :func:`rows`, which turns the body into the row batch it stands
  for, and the general validation, which accepts it or words each problem with the row's index: the rules
  and the error shape are those of row batches by construction. tests/ingest/test_columnar.py checks on
  generated batches that the formats give the same answers and the same state.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np
import orjson
from msgspec import Meta

from exporter.config import ModelConfig, RegistryInfo
from exporter.ingest import fastpath, schema
from exporter.ingest.schema import (
    FUTURE_SKEW_SECONDS,
    MAX_ID_LENGTH,
    MAX_MAGNITUDE,
    MAX_STRING_LENGTH,
    MAX_TIMESTAMP_LENGTH,
)
from exporter.ingest.validation import _VERSION_RE, Invalid, Label, Prediction, Problem, Validator, parse_rfc3339
from exporter.stats.coded import Coded

JSON_COLUMNS = "application/vnd.mlmon.columns+json"
ARROW_STREAM = "application/vnd.apache.arrow.stream"
# Content-Type -> the format's name in the journal (a record's kind is "predictions/columns", ...).
FORMATS = {JSON_COLUMNS: "columns", ARROW_STREAM: "arrow"}

# Row field -> its column, the object fields and the batch-wide ones: one definition (exporter/ingest/schema.py).
PREDICTION_COLUMNS = schema.COLUMN_NAMES
OBJECT_COLUMNS = schema.OBJECT_FIELDS
BATCH_FIELDS = schema.BATCH_FIELDS["Prediction"]
LABEL_COLUMNS = {"id": "ids", "label": "labels"}
_PREDICTION_NAMES, _LABEL_NAMES = frozenset(PREDICTION_COLUMNS.values()), frozenset(LABEL_COLUMNS.values())
# Arrow messages a stream may hold beyond its rows: an attacker's many tiny batches cost time, not memory.
MAX_ARROW_MESSAGES = 10_000


@dataclass(slots=True)
class Columns:
    """A validated columnar prediction batch of one model and version: what the window update takes."""

    model: str
    version: str
    registry: RegistryInfo | None
    n: int
    ids: list | None  # per row its id (str) or None; None: no row has an id
    timestamps: np.ndarray  # unix seconds, at most the arrival time
    predictions: np.ndarray  # class indices (int64) or values (float64)
    labels: list | None  # per row a class index / value or None; None: no row has a label
    scores: np.ndarray | None  # rows x the model's score columns; None: no row has scores
    latency: np.ndarray | None  # seconds, NaN where absent; None: no row has one
    numeric: np.ndarray  # rows x the model's numeric features (Binner.numeric), NaN where missing
    categorical: dict[str, list]  # categorical feature -> its values (None where missing), every one of them:
    # a list, or a Coded (exporter/stats/coded.py) from an Arrow text column
    attributes: dict[str, list]  # attribute -> its values (None where absent); only those sent
    attributions: np.ndarray | None  # rows with attributions x every feature, NaN where absent
    attributed: np.ndarray | None  # the indices of those rows


class Refused(Exception):
    """A columnar body that is no batch of columns (ragged, a column that is not a list, a broken stream)."""

    def __init__(self, status: int, field: str, reason: str, message: str):
        super().__init__(message)
        self.status, self.field, self.reason, self.message = status, field, reason, message

    def invalid(self) -> Invalid:
        where = f"{self.field}: " if self.field else ""
        return Invalid(self.status, where + self.message, [Problem(0, self.field, self.reason, self.message)])


# -- the general path: a columnar body as the row batch it stands for -------------------------------------------


@dataclass
class Table:
    """A columnar body, format aside: its batch-wide fields, its columns by flat name, its number of rows."""

    batch: dict[str, Any]
    columns: dict[str, Any]  # "ids", "features.age", "scores.yes"... -> a list (or an Arrow array)
    n: int


def json_table(body: Any, kind: str, limit: int) -> Table:
    """The columns of a parsed columnar JSON body, or :class:`Refused` naming what is wrong with its shape."""
    if not isinstance(body, dict):
        raise Refused(400, "", "invalid_body", "a columnar body must be a JSON object of columns")
    plain = PREDICTION_COLUMNS if kind == "predictions" else LABEL_COLUMNS
    objects = OBJECT_COLUMNS if kind == "predictions" else ()
    batch_fields = BATCH_FIELDS if kind == "predictions" else ("model",)
    allowed = {*plain.values(), *objects, *batch_fields}
    columns: dict[str, Any] = {}
    batch: dict[str, Any] = {}
    for key, value in body.items():
        if key not in allowed:
            raise Refused(400, str(key)[:100], "unknown_field", f"unknown field; allowed: {', '.join(sorted(allowed))}")
        if key in batch_fields:
            batch[key] = value
        elif key in objects:
            if not isinstance(value, dict):
                raise Refused(400, key, "invalid_body", "must be an object of name to a column (a list)")
            for name, column in value.items():
                columns[f"{key}.{name}"] = column
        else:
            columns[key] = value
    return _table(batch, columns, "predictions" if kind == "predictions" else "labels", limit)


def _table(batch: dict, columns: dict, main: str, limit: int) -> Table:
    """The shape's checks: every column a list, all of one length, at least one row and at most ``limit``.
    A missing field (``model``, ``predictions``) is not the shape's business: the rows lack it, and the general
    validation names each of them, as for rows sent without it."""
    for name, column in columns.items():
        if not isinstance(column, list):
            raise Refused(400, name[:200], "invalid_body", "must be a list: one value per row")
    first = main if main in columns else next(iter(columns), None)
    n = len(columns[first]) if first is not None else 0
    if n == 0:
        raise Refused(400, first or main, "invalid_body", "a columnar batch holds at least one row")
    if n > limit:
        raise Refused(413, first, "batch_too_large", f"holds {n} rows; at most {limit} per request")
    for name, column in columns.items():
        if len(column) != n:
            raise Refused(400, name[:200], "invalid_body", f"holds {len(column)} values; {first} holds {n}")
    return Table(batch, columns, n)


def rows(table: Table, kind: str) -> list[dict]:
    """The row batch a columnar body stands for (each row a dict as a row body would hold it)."""
    plain = PREDICTION_COLUMNS if kind == "predictions" else LABEL_COLUMNS
    by_column = {column: field for field, column in plain.items()}
    out = [dict(table.batch) for _ in range(table.n)]
    for name, column in table.columns.items():
        values = column if isinstance(column, list) else column.to_pylist()
        head, dot, key = name.partition(".")
        if head in OBJECT_COLUMNS and dot:  # (a key may be empty: the validation names it)
            for row, v in zip(out, values):
                if v is not None:
                    row.setdefault(head, {})[key] = v
        else:
            field = by_column[name]
            for row, v in zip(out, values):
                if v is not None:
                    row[field] = v
    return out


# -- the fast path -------------------------------------------------------------------------------------------------


_Bounded = fastpath._Bounded
_Category = fastpath._Category


def _list(kind: Any, limit: int) -> Any:
    return Annotated[list[kind], Meta(max_length=limit)]


def _json_type(model: ModelConfig, limit: int) -> type:
    """The msgspec struct of one model's columnar JSON body; "model" is the tag that picks it."""
    tag = fastpath._struct_name(model, "")
    outcome = _Bounded if model.task == "regression" else fastpath._ClassKey

    def columns(name: str, kinds: list[tuple[str, Any]]) -> type:  # one optional list per key, as fastpath's
        return fastpath._values_type(tag + name, [(key, _list(kind, limit) | None) for key, kind in kinds])

    features = columns(
        "FeatureColumns", [(f.name, _Bounded | None if f.type == "numeric" else _Category) for f in model.features]
    )
    attributes = columns("AttributeColumns", [(a, _Category) for a in model.attributes])
    attributions = columns("AttributionColumns", [(f.name, _Bounded | None) for f in model.features])
    fields = [
        ("predictions", _list(outcome, limit)),
        ("version", str, "default"),
        ("registry", fastpath._Registry | None, None),
        ("ids", _list(fastpath._IdText | fastpath._Int | None, limit) | None, None),
        ("timestamps", _list(float | str | None, limit) | None, None),
        ("labels", _list(outcome | None, limit) | None, None),
        ("latency_seconds", _list(fastpath._Latency | None, limit) | None, None),
        ("score", _list(fastpath._Probability | None, limit) | None, None),
        ("scores", dict[str, _list(fastpath._Probability | None, limit)] | None, None),
        ("features", features | None, None),
        ("attributes", attributes | None, None),
        ("attributions", attributions | None, None),
    ]
    return msgspec.defstruct(
        tag + "Columns",
        fields,
        kw_only=True,
        tag_field="model",
        tag=model.name,
        forbid_unknown_fields=True,
        gc=False,
        namespace={"MODEL": model},
    )


def _present(struct: Any) -> dict[str, list]:
    """The columns a columns struct holds (those sent), by their names."""
    if struct is None:
        return {}
    out = {}
    for key, attribute in type(struct).ATTRIBUTES.items():
        column = getattr(struct, attribute)
        if column is not None:
            out[key] = column
    return out


class ColumnarDecoder:
    """Decodes valid columnar bodies into :class:`Columns`; anything else into rows for the general validation."""

    def __init__(self, validator: Validator, fast: fastpath.FastDecoder):
        self.validator = validator
        self.fast = fast  # the row fast path: its registry entries' check and cache
        self.config = validator.config
        self.limit = self.config.limits.max_batch_size
        self.models = {m.name: m for m in self.config.models}
        self.class_index = validator.class_index
        # model -> its numeric features and their rows in a batch's numeric array (Binner.numeric's order)
        self.numeric = {
            m.name: {name: j for j, name in enumerate(f.name for f in m.features if f.type == "numeric")}
            for m in self.config.models
        }
        self._numeric_columns = {m.name: numeric_columns(m) for m in self.config.models}
        # model -> the columns of its numeric features, in Binner.numeric's order (an Arrow batch's float64 ones
        # are read together: _float_block)
        self._float_features = {
            m.name: [f"features.{name}" for name in self.numeric[m.name]] for m in self.config.models
        }
        models = [m for m in self.config.models if all(fastpath._renamable(f.name) for f in m.features)]
        models = [m for m in models if all(fastpath._renamable(a) for a in m.attributes)]
        self._json = None
        if models:
            union = functools.reduce(operator.or_, [_json_type(m, self.limit) for m in models] + [fastpath._NoModel])
            self._json = msgspec.json.Decoder(union)

    # -- predictions ---------------------------------------------------------------------------------------------

    def predictions(self, fmt: str, raw: bytes, now: float) -> Columns | list[Prediction]:
        """A columnar body's predictions: :class:`Columns` when the fast path takes it, else the rows the general
        validation accepts; raises :class:`Invalid` (problems named by row index) or :class:`Refused`."""
        if fmt == "columns":
            fast = self._json_fast(raw, now)
            if fast is not None:
                return fast
            table = json_table(_parse(raw), "predictions", self.limit)
        else:
            table = arrow_table(raw, "predictions", self.limit)
            fast = self._arrow_fast(table, now)
            if fast is not None:
                return fast
        return self.validator.predictions({"predictions": rows(table, "predictions")}, now)

    def labels(self, fmt: str, raw: bytes) -> list[Label]:
        """A columnar body's labels (always through the general validation: a label is an id and a value)."""
        table = (
            json_table(_parse(raw), "labels", self.limit)
            if fmt == "columns"
            else arrow_table(raw, "labels", self.limit)
        )
        return self.validator.labels({"labels": rows(table, "labels")})

    def _json_fast(self, raw: bytes, now: float) -> Columns | None:
        if self._json is None:
            return None
        try:
            body = self._json.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        model = body.MODEL
        if model is None:
            return None
        columns: dict[str, Any] = {
            "predictions": body.predictions,
            **{
                k: getattr(body, k)
                for k in ("ids", "timestamps", "labels", "latency_seconds", "score")
                if getattr(body, k) is not None
            },
        }
        for head in ("features", "attributes", "attributions"):
            for key, column in _present(getattr(body, head)).items():
                columns[f"{head}.{key}"] = column
        for key, column in (body.scores or {}).items():
            columns[f"scores.{key}"] = column
        registry = None
        if body.registry is not None:
            registry = self.fast.registry(body.registry)  # the row fast path's check and cache
            if registry is None:
                return None
        return self._columns(model, body.version, registry, columns, now)

    def _columns(
        self, model: ModelConfig, version: Any, registry, columns: dict, now: float, block: tuple | None = None
    ) -> Columns | None:
        """The checks the types did not make, and the columns as the window update takes them; None: declined.
        ``block``: numeric features' columns already read and checked together (:func:`_float_block`), left out
        of ``columns``."""
        if type(version) is not str or (version != "default" and not _VERSION_RE.fullmatch(version)):
            return None
        preds = columns["predictions"]
        n = len(preds)
        if not 0 < n <= self.limit or any(len(c) != n for c in columns.values()):
            return None
        index = self.class_index[model.name]
        classification = model.task != "regression"
        if classification:
            predictions = _classes(index, preds.words if type(preds) is Coded else preds)
            if None in predictions:
                return None
            predictions = np.asarray(predictions, dtype=np.int64)
            if type(preds) is Coded:
                predictions = preds.spread(predictions)
        else:
            predictions = _floats(preds)
            if predictions is None or np.isnan(predictions).any():
                return None
        ids = columns.get("ids")
        if ids is not None:
            ids = _ids(ids)
            if ids is None:
                return None
        timestamps = _timestamps(columns.get("timestamps"), n, now)
        if timestamps is None:
            return None
        labels = columns.get("labels")
        if labels is not None:
            labels = _outcomes(index, labels) if classification else _optional_floats(labels)
            if labels is False:
                return None
        latency = columns.get("latency_seconds")
        if latency is not None:
            latency = _floats(latency)
            if latency is None or (latency < 0).any():
                return None
            if np.isnan(latency).all():
                latency = None
        scores = self._scores(model, {k[7:]: v for k, v in columns.items() if k.startswith("scores.")}, n)
        if "score" in columns:  # the binary shorthand: every row's, and no scores object beside it
            score = _floats(columns["score"])
            if model.task != "binary" or scores is not None or score is None or np.isnan(score).any():
                return None
            scores = score.reshape(n, 1)
        if scores is False:
            return None
        numeric_names = self.numeric[model.name]
        # Built feature by feature (rows of this array), read as events x features: each feature's values stay
        # contiguous, as the binning reads them (Binner._bin_whole).
        if block is not None and len(block[1]) != n:
            return None
        if block is not None and len(block[0]) == len(numeric_names):  # every numeric feature, in this order
            by_feature = block[1].T
        else:
            by_feature = np.full((len(numeric_names), n), np.nan)
            if block is not None:
                by_feature[[numeric_names[name.partition(".")[2]] for name in block[0]]] = block[1].T
        categorical: dict[str, list] = {}
        features = {f.name: f for f in model.features}
        attributes: dict[str, list] = {}
        attribution_columns: dict[str, np.ndarray] = {}
        for name, column in columns.items():
            head, _, key = name.partition(".")
            if head == "features":
                feature = features.get(key)
                if feature is None:
                    return None
                if feature.type == "numeric":
                    values = _floats(column)
                    if values is None:
                        return None
                    by_feature[numeric_names[key]] = values
                else:
                    categorical[key] = column  # (lists: only numeric columns become arrays)
            elif head == "attributes":
                if key not in model.attributes:
                    return None
                attributes[key] = column
            elif head == "attributions":
                if not model.attributions or key not in features:
                    return None
                values = _floats(column)
                if values is None:
                    return None
                attribution_columns[key] = values
        for f in model.features:
            if f.type != "numeric" and f.name not in categorical:
                categorical[f.name] = [None] * n
        attributions = attributed = None
        if attribution_columns:
            matrix = np.full((n, len(model.features)), np.nan)
            for j, f in enumerate(model.features):
                if f.name in attribution_columns:
                    matrix[:, j] = attribution_columns[f.name]
            attributed = np.flatnonzero(~np.isnan(matrix).all(axis=1))
            if attributed.size:
                attributions = matrix[attributed] if attributed.size < n else matrix
            else:
                attributed = None
        return Columns(
            model.name,
            version,
            registry,
            n,
            ids,
            timestamps,
            predictions,
            labels,
            scores,
            latency,
            by_feature.T,
            categorical,
            attributes,
            attributions,
            attributed,
        )

    def _scores(self, model: ModelConfig, scores: dict[str, Any], n: int) -> np.ndarray | None | bool:
        """The rows' scores when every row has the same complete set (else False: the general path decides)."""
        if not scores:
            return None
        if model.task == "regression":
            return False
        index = self.class_index[model.name]
        if any(key not in index for key in scores):
            return False
        columns = {}
        for key, column in scores.items():
            values = _floats(column)
            if values is None or np.isnan(values).any():
                return False  # rows without scores among rows with: the general path sorts them out
            columns[index[key]] = values
        if model.task == "binary":
            positive = index[model.positive_class]
            if positive not in columns:
                return False
            if len(columns) == 2 and (np.abs(columns[0] + columns[1] - 1) > fastpath.schema.SCORE_SUM_TOLERANCE).any():
                return False
            return columns[positive].reshape(n, 1)
        if len(columns) != len(model.classes):
            return False
        matrix = np.column_stack([columns[i] for i in range(len(model.classes))])
        if (np.abs(matrix.sum(axis=1) - 1) > fastpath.schema.SCORE_SUM_TOLERANCE).any():
            return False
        return matrix

    def _arrow_fast(self, table: Table, now: float) -> Columns | None:
        model = self.models.get(table.batch.get("model")) if isinstance(table.batch.get("model"), str) else None
        if model is None:
            return None
        registry = None
        if table.batch.get("registry") is not None:
            try:
                entry = msgspec.convert(table.batch["registry"], fastpath._Registry)
            except msgspec.ValidationError:
                return None
            registry = self.fast.registry(entry)
            if registry is None:
                return None
        columns = {}
        numeric = self._numeric_columns[model.name]
        block = _float_block(table.columns, self._float_features[model.name])
        if block is False:
            return None
        taken = block[0] if block is not None else ()
        unchecked: list[str] = []  # numeric features whose values' range is checked below, all at once
        for name, array in table.columns.items():
            if name in taken:
                continue
            values = _arrow_values(name, array, numeric, unchecked)
            if values is None:
                return None
            columns[name] = values
        if "predictions" not in columns:
            return None
        cols = self._columns(model, table.batch.get("version", "default"), registry, columns, now, block)
        if cols is not None and unchecked:
            at = self.numeric[model.name]
            values = cols.numeric[:, [at[name.partition(".")[2]] for name in unchecked]]
            with np.errstate(invalid="ignore"):
                if not (np.abs(values) <= MAX_MAGNITUDE).all():  # False for NaN too: no number JSON can send
                    return None
        return cols


def _parse(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Refused(400, "", "malformed_json", f"the body is not valid JSON: {str(exc)[:200]}") from None


# -- the fast path's column checks (JSON lists as msgspec typed them, or what _arrow_values made of an Arrow array)


def _floats(column: Any) -> np.ndarray | None:
    """A column of numbers (None where missing) as floats, NaN where missing; None if it holds anything else."""
    if isinstance(column, np.ndarray):
        return column
    try:
        return np.asarray(column, dtype=np.float64)  # None -> NaN; msgspec typed the values already
    except (TypeError, ValueError):
        return None


def _optional_floats(column: Any) -> list | None | bool:
    values = _floats(column)
    if values is None:
        return False
    if np.isnan(values).all():
        return None
    return [None if v != v else v for v in values.tolist()]


def _classes(index: dict, column: list) -> list | None:
    keys = column if _all_text(column) else [v if type(v) is str else str(v) for v in column]
    return list(map(index.get, keys))


def _all_text(column: list) -> bool:
    """Whether every value is a str (the types' set is made in C: a generator cost a tenth of a batch)."""
    return set(map(type, column)) == {str}


def _outcomes(index: dict, column: list) -> list | None | bool:
    """Labels as class indices, None where absent; None: no row has one; False: an unknown class."""
    out = [None if v is None else index.get(v if type(v) is str else str(v), -1) for v in column]
    if -1 in out:
        return False
    return None if all(v is None for v in out) else out


def _ids(column: list) -> list | None:
    if _all_text(column):
        return column
    out = []
    for v in column:
        if type(v) is int:
            v = str(v)
        elif v is not None and type(v) is not str:
            return None
        out.append(v)
    return out if any(v is not None for v in out) else None


def _timestamps(column: Any, n: int, now: float) -> np.ndarray | None:
    if column is None:
        return np.full(n, now)
    if isinstance(column, np.ndarray) or set(map(type, column)) <= {float, int}:
        ts = np.asarray(column, dtype=np.float64)
        missing = np.isnan(ts)
        if missing.any():
            ts = np.where(missing, now, ts)
    else:
        values = []
        for v in column:
            if v is None:
                v = now
            elif type(v) is str:
                if len(v) > MAX_TIMESTAMP_LENGTH:
                    return None
                v = parse_rfc3339(v)
                if v is None:
                    return None
            values.append(v)
        ts = np.asarray(values, dtype=np.float64)
    if not ((ts > 0) & (ts <= now + FUTURE_SKEW_SECONDS)).all():
        return None
    return np.minimum(ts, now)


# -- Arrow ---------------------------------------------------------------------------------------------------------


def accepted() -> list[str]:
    """The columnar formats this exporter reads: Arrow only with pyarrow installed (the ``arrow`` extra)."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return [JSON_COLUMNS]
    return [JSON_COLUMNS, ARROW_STREAM]


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.compute  # noqa: F401 - a submodule: pa.compute exists once it is imported
    except ImportError:  # an optional extra: the answer says how to get it
        raise Refused(
            415,
            "Content-Type",
            "invalid_body",
            "this exporter cannot read Arrow streams: install pyarrow (pip install 'mlmon[arrow]') or send JSON",
        ) from None
    return pa


def arrow_table(raw: bytes, kind: str, limit: int) -> Table:
    """The columns of an Arrow IPC stream body, checked before pyarrow reads it (exporter/ingest/arrow_guard.py:
    no compressed buffers, no more rows than the batch limit), then read without copying its buffers."""
    pa = _pyarrow()
    from exporter.ingest import arrow_guard

    try:
        arrow_guard.check_stream(raw, max_rows=limit, max_batches=MAX_ARROW_MESSAGES, require_end=True)
    except arrow_guard.StreamRefused as exc:
        if exc.reason == "too_many_rows":
            raise Refused(413, "", "batch_too_large", f"{exc}; at most {limit} rows per request") from None
        raise Refused(400, "", "malformed_arrow", str(exc)) from None
    try:
        reader = pa.ipc.open_stream(pa.py_buffer(raw))
        batches = list(reader)
        # (one record batch, the usual stream, is read as it is: its columns are arrays, no chunks to combine)
        table = batches[0] if len(batches) == 1 else pa.Table.from_batches(batches, schema=reader.schema)
        # The reader checks the framing and the buffers' sizes only: offsets past a column's data or text that
        # is not UTF-8 would be read out of bounds (a crash) by the first function that walks the values.
        table.validate(full=True)
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise Refused(
            400, "", "malformed_arrow", f"the body is not a readable Arrow IPC stream: {str(exc)[:200]}"
        ) from None
    meta = {
        k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in (table.schema.metadata or {}).items()
    }
    batch_fields = BATCH_FIELDS if kind == "predictions" else ("model",)
    batch: dict[str, Any] = {}
    for key, value in meta.items():
        if key in batch_fields:
            batch[key] = value
    if "registry" in batch:
        try:
            batch["registry"] = orjson.loads(batch["registry"])
        except orjson.JSONDecodeError:
            raise Refused(
                400, "registry", "invalid_value", "the schema metadata's registry must be a JSON object"
            ) from None
    plain = PREDICTION_COLUMNS if kind == "predictions" else LABEL_COLUMNS
    known = _PREDICTION_NAMES if kind == "predictions" else _LABEL_NAMES
    objects = OBJECT_COLUMNS if kind == "predictions" else ()
    columns: dict[str, Any] = {}
    for name, column in zip(table.schema.names, table.columns):
        head, dot, _ = name.partition(".")
        if name not in known and not (head in objects and dot):
            allowed = ", ".join([*plain.values(), *(f"{o}.<name>" for o in objects)])
            raise Refused(400, name[:100], "unknown_field", f"unknown column; allowed: {allowed}")
        if name in columns:
            raise Refused(400, name[:100], "invalid_body", "appears twice")
        columns[name] = _arrow_column(pa, name, column)
    if table.num_rows == 0 or not columns:
        main = "predictions" if kind == "predictions" else "labels"
        raise Refused(400, main, "invalid_body", "a columnar batch holds at least one row")
    return Table(batch, columns, table.num_rows)


def _arrow_column(pa, name: str, column):
    """One column as a single array. Dictionary-encoded columns are decoded, timestamps read as unix seconds,
    decimals as floats; values of other types (lists, structs, bytes...) go to the general validation like a
    row's, which names each row whose value is not of its field's kind."""
    array = column
    if type(column) is pa.ChunkedArray:
        array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    kind = _kind(pa, array.type)
    if kind in _PLAIN_KINDS:  # the common columns: nothing to do
        return array
    t = array.type
    if kind == "dictionary":
        # Decoding copies each row's entry: an entry far longer than any valid value, taken by every row,
        # would cost rows x its length. Such an entry is refused before anything is copied.
        v = _kind(pa, t.value_type)
        if v == "string":
            longest = pa.compute.max(pa.compute.utf8_length(array.dictionary)).as_py() or 0
            if longest > MAX_STRING_LENGTH:
                message = f"holds a dictionary entry of {longest} characters; values are at most {MAX_STRING_LENGTH}"
                raise Refused(400, name[:100], "invalid_value", message)
        elif v not in ("integer", "floating", "boolean", "decimal"):
            raise Refused(400, name[:100], "invalid_value", f"a dictionary column holds strings or numbers, not {v}")
        array = array.dictionary_decode()
        t = array.type
    if _holds_dictionary(pa, t):
        raise Refused(400, name[:100], "invalid_value", f"a nested column may not hold dictionaries ({t})")
    if name == "timestamps" and (pa.types.is_date(t) or pa.types.is_time(t)):
        # (a date has no time of day, a time no date: neither is a moment; taking a date as its midnight would
        # put every prediction of a day at one instant of some time zone)
        raise Refused(400, name, "invalid_value", f"an Arrow {t} is not a moment; send a timestamp or unix seconds")
    if pa.types.is_timestamp(t):
        unit = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[t.unit]
        # (unsafe: a safe cast refuses integers past 2**53, which any time of this century in nanoseconds is;
        # rounded to the nearest float, a time keeps about a quarter of a microsecond)
        return pa.compute.divide(array.cast(pa.int64()).cast(pa.float64(), safe=False), unit)
    if pa.types.is_decimal(t):
        # A number, as a database's NUMERIC or DECIMAL column comes (DuckDB, ADBC drivers, pandas' Decimal
        # objects): read as the nearest float, as a JSON number is; the range checks follow as for any float.
        return array.cast(pa.float64())
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return array.cast(pa.string())
    return array


def _holds_dictionary(pa, t) -> bool:
    """Whether a (nested) type holds a dictionary-encoded part anywhere."""
    if pa.types.is_dictionary(t):
        return True
    return any(_holds_dictionary(pa, t.field(i).type) for i in range(t.num_fields))


_PLAIN_KINDS = frozenset(("floating", "integer", "boolean", "null"))
_KINDS: dict = {}  # Arrow type -> its kind (types are few and hashable: classified once)


def _kind(pa, t) -> str:
    kind = _KINDS.get(t)
    if kind is None:
        if pa.types.is_floating(t):
            kind = "floating"
        elif pa.types.is_integer(t):
            kind = "integer"
        elif pa.types.is_boolean(t):
            kind = "boolean"
        elif pa.types.is_null(t):
            kind = "null"
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            kind = "string"
        elif pa.types.is_dictionary(t):
            kind = "dictionary"
        elif pa.types.is_decimal(t):
            kind = "decimal"
        else:
            kind = "other"
        if len(_KINDS) < 256:
            _KINDS[t] = kind
    return kind


def numeric_columns(model: ModelConfig) -> frozenset[str]:
    """The columns of ``model`` whose values are numbers (taken as floats by the fast path)."""
    names = {"timestamps", "latency_seconds", "score"}
    names |= {f"features.{f.name}" for f in model.features if f.type == "numeric"}
    names |= {f"attributions.{f.name}" for f in model.features}
    names |= {f"scores.{c}" for c in model.classes}
    if model.task == "regression":
        names |= {"predictions", "labels"}
    return frozenset(names)


def _float_block(arrays: dict, features: list[str]) -> tuple[list[str], np.ndarray] | None | bool:
    """The float64 columns among ``features`` (a model's numeric features' columns, in order) read together:
    their names and an events x columns array (column-major: each feature's values contiguous), NaN where
    null; checked as :func:`_arrow_values` checks each (a NaN sent as a value, or a magnitude past
    MAX_MAGNITUDE: False, the general path decides). None when fewer than two such columns came."""
    import pyarrow as pa

    double = pa.float64()
    names = [name for name in features if name in arrays and arrays[name].type == double]
    if len(names) < 2:
        return None
    chosen = [arrays[name] for name in names]
    block = np.asarray(pa.RecordBatch.from_arrays(chosen, names=names).to_tensor(null_to_nan=True, row_major=False))
    nulls = [a.null_count for a in chosen]
    if not any(nulls):  # (NaN fails both comparisons: a NaN sent as a value is refused with the rest)
        return (names, block) if block.max() <= MAX_MAGNITUDE and block.min() >= -MAX_MAGNITUDE else False
    gone = np.isnan(block)
    if not np.array_equal(gone.sum(axis=0), nulls):
        return False  # more NaN than nulls in a column: a NaN sent as a value
    with np.errstate(invalid="ignore"):
        if not ((np.abs(block) <= MAX_MAGNITUDE) | gone).all():
            return False
    return names, block


def _arrow_values(name: str, array, numeric: frozenset[str], unchecked: list[str] | None = None) -> Any:
    """An Arrow column as the fast path takes it (floats as a float array, NaN where null; text features and
    classes as a Coded; the rest as lists), or None when the general path must decide (a value the fast path
    does not take). ``numeric``: the model's :func:`numeric_columns`. A numeric feature without nulls is
    returned unchecked and its name added to ``unchecked`` when that is given: the caller checks the range of
    all such columns in one step."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = _kind(pa, array.type)
    head = name.partition(".")[0]
    if name in numeric:
        if kind == "null":
            return np.full(len(array), np.nan)
        if kind != "floating" and kind != "integer":
            return None
        if array.null_count == 0 and head != "labels":  # the common column: one pass, no copy of a float64 one
            values = array.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
            if unchecked is not None and head == "features":
                unchecked.append(name)
                return values
            with np.errstate(invalid="ignore"):
                inside = np.abs(values) <= MAX_MAGNITUDE  # False for NaN too: no number JSON can send
            return values if inside.all() else None
        values = (
            array.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
            if array.null_count == 0
            # (unsafe as astype is: an integer past 2**53 becomes the nearest float, which the range check below
            # refuses; a safe cast raised instead, a 500)
            else (array.cast(pa.float64(), safe=False).fill_null(np.nan).to_numpy())
        )
        present = values[~np.isnan(values)] if array.null_count else values
        if array.null_count == 0 and np.isnan(values).any():
            return None  # NaN is no number JSON can send: the general path refuses it
        if present.size and not (np.abs(present) <= MAX_MAGNITUDE).all():
            return None
        if array.null_count and kind == "floating" and pc.sum(pc.is_nan(array)).as_py():
            return None
        if head == "labels":
            return values.tolist() if array.null_count == 0 else [None if v != v else v for v in values.tolist()]
        return values
    if head == "timestamps" or kind not in ("string", "integer", "floating", "boolean"):
        return None  # (nulls only, lists, bytes...): the general path words what each row holds
    if head in ("ids", "predictions", "labels") and kind != "string" and kind != "integer":
        return None  # ids and classes are strings or integers (null: no id, no label)
    if kind == "floating" and array.null_count < len(array) and pc.sum(pc.is_nan(array)).as_py():
        return None
    if kind == "string" and array.null_count < len(array):
        if not _text_within(pa, pc, array, MAX_ID_LENGTH if head == "ids" else MAX_STRING_LENGTH, head == "ids"):
            return None
    if kind == "string" and (head == "features" or head == "predictions"):
        # categories and classes: few distinct values, each mapped once (exporter/stats/coded.py)
        encoded = array.dictionary_encode(null_encoding="encode")
        return Coded(encoded.dictionary.to_pylist(), encoded.indices.to_numpy())
    return array.to_pylist()


def _text_within(pa, pc, array, limit: int, nonempty: bool) -> bool:
    """Whether every value of a string array (nulls aside) has at most ``limit`` characters (and at least one,
    if ``nonempty``). Without nulls, the offsets settle it when every value has 1 to ``limit`` bytes (a
    value has no more characters than bytes, and a character or more when it has a byte); pyarrow counts the
    characters otherwise (tests/ingest/test_columnar.py holds the two to the same answers)."""
    if array.null_count == 0:
        width = np.dtype(np.int64 if pa.types.is_large_string(array.type) else np.int32)
        offsets = np.frombuffer(
            array.buffers()[1], dtype=width, count=len(array) + 1, offset=array.offset * width.itemsize
        )
        nbytes = np.diff(offsets)
        if nbytes.max() <= limit and (not nonempty or nbytes.min() >= 1):
            return True
    lengths = pc.min_max(pc.utf8_length(array)).as_py()
    return lengths["max"] <= limit and not (nonempty and lengths["min"] < 1)
