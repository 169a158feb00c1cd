"""Per-model state: counters, window rings and the join store, updated by ingest and read by scrapes.

Ingest turns a validated batch into a few vectorised updates of additive statistics; a scrape copies a
consistent snapshot under the model's lock and does all the math outside it. Quality statistics enter
the windows when the label arrives (its arrival time), prediction statistics at the prediction's time.
"""

from __future__ import annotations

import copy
import itertools
import json
import pickle
import threading
from dataclasses import dataclass, field

import numpy as np

from exporter.config import Config, ModelConfig, RegistryInfo
from exporter.engine import joins, storage
from exporter.engine.joins import JoinStore, Pending
from exporter.ingest.columnar import Columns
from exporter.ingest.columns import Batch, score_matrix
from exporter.ingest.validation import Label, Prediction
from exporter.stats import attribution, estimate, quality, reference
from exporter.stats.binning import MULTIVARIATE, REFERENCE_ARRAYS, Binner, add_to_slot, drift_schema, scatter
from exporter.stats.histogram import Histogram
from exporter.stats.reference import Profile, category
from exporter.stats.window import Ring, Schema, Span, spans

# What a span publishes (mlmon_span_*): enough for a test of accuracy or MAE against a threshold.
SPAN_ARRAYS = {"classification": ("labeled", "confusion"), "regression": ("labeled", "abs_err", "sq_err")}
# ...and what the estimate alerts test (classification, by prediction time): scored predictions, the sum of
# their probabilities of being right and of the squares of those; and of those with their label now, how many,
# how many right, and the sums of p and p (1 - p) of being right (the calibration gap).
ESTIMATE_SPAN_ARRAYS = ("est_n", "est_confusion", "est_sq", "est_lab_n", "est_lab_correct", "est_lab_p", "est_lab_var")

# Top-label confidence buckets (upper bounds) of mlmon_prediction_confidence.
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


def ring_schema(model: ModelConfig, estimates: bool = True) -> Schema:
    """The arrays of a window bucket; ``estimates``: with those of the estimated quality and the attributions
    (a version's rings, not a segment's)."""
    schema = _ring_schema(model, estimates)
    if estimates and model.attributions:
        schema.update(attribution.schema(len(model.features)))
    return schema


def _ring_schema(model: ModelConfig, estimates: bool) -> Schema:
    if not model.is_classification:
        schema = {
            name: ((), np.float64) for name in ("predictions", "labeled", "err", "abs_err", "sq_err", "y", "y_sq")
        }
        return {**schema, **drift_schema(model)}
    c, s = len(model.classes), len(model.score_classes)
    return {
        **drift_schema(model),
        "predictions": ((), np.int64),
        "labeled": ((), np.int64),
        "confusion": ((c, c), np.int64),
        "scored": ((), np.int64),
        "hist_pos": ((s, quality.SCORE_BINS), np.int32),
        "hist_all": ((s, quality.SCORE_BINS), np.int32),
        "log_loss": ((), np.float64),
        "brier": ((), np.float64),
        "ece_count": ((quality.ECE_BINS,), np.int64),
        "ece_correct": ((quality.ECE_BINS,), np.int64),
        "ece_confidence": ((quality.ECE_BINS,), np.float64),
        **(estimate.schema(c, model.task == "binary") if estimates else {}),
    }


# What a fairness group's windows keep of the estimate (binary models; docs/fairness.md): its scored predictions
# and their expected confusion matrix, for the group's estimated true and false positive rates and accuracy.
FAIRNESS_ESTIMATE = ("est_n", "est_confusion")


def segment_schema(model: ModelConfig, feature: str) -> Schema:
    """The arrays of a segment's window bucket: a version's without the estimate for a feature listed under
    segments; only the counts of its groups for a fairness feature that is not; and for a fairness feature
    what its groups need of the estimate."""
    if feature in model.listed_segments:
        schema = ring_schema(model, estimates=False)
    else:
        c = len(model.classes)
        schema = {
            "predictions": ((), np.int64),
            "labeled": ((), np.int64),
            "confusion": ((c, c), np.int64),
            "pred_bins": ((c,), np.int32),
        }
    if feature in model.fairness_features:
        full = estimate.schema(len(model.classes), binary=True)
        schema.update({name: full[name] for name in FAIRNESS_ESTIMATE})
    return schema


def _estimate_part(scatter: dict, idx: np.ndarray, n: int) -> dict:
    """The estimate's entries of the events ``idx`` of a batch of ``n`` (``scatter`` as estimate.scatter gives
    them for the batch), renumbered as the events of the subset."""
    local = np.full(n, -1, dtype=np.int64)
    local[idx] = np.arange(len(idx))
    out = {}
    for name in FAIRNESS_ESTIMATE:
        events, cells, values = scatter[name]
        keep = local[events] >= 0
        out[name] = (local[events[keep]], cells[keep], None if values is None else values[keep])
    return out


def _predictions_into(rings: list[Ring], ts: np.ndarray, binned, now: float) -> None:
    """Count predictions, and their binned features, into the bucket of each one's time."""
    _scatter_at(rings, ts, binned.scatter, now, count="predictions")


def _scatter_at(rings: list[Ring], ts: np.ndarray, entries: dict, now: float, count: str | None = None) -> None:
    """Add ``entries`` (name -> events, flat indices, weights) into the bucket of each event's time, and with
    ``count`` one per event into that array."""
    totals: dict[str, np.ndarray] = {}  # an entry's sums over the batch, the same for every ring
    for ring in rings:
        slots = ring.slots(ts, now)
        first = int(slots[0]) if slots.size else -1
        if first >= 0 and (slots == first).all():  # the common case: the batch within one bucket
            if count is not None:
                ring.arrays[count][first] += slots.size
            for name, (_, idx, weights) in entries.items():
                sums = totals.get(name)
                if sums is None:  # summed once for every ring
                    sums = totals[name] = np.bincount(idx, weights=weights)
                add_to_slot(ring.arrays[name], first, sums)
            continue
        kept = slots[slots >= 0]
        if kept.size:
            if count is not None:
                ring.arrays[count] += np.bincount(kept, minlength=ring.k)
            for name, (ev, idx, weights) in entries.items():
                scatter(ring.arrays[name], slots, ev, idx, weights)


def _add_now(rings: list[Ring], stats: dict, now: float) -> None:
    """Add labelled-outcome statistics to the bucket holding ``now`` (the join time)."""
    for ring in rings:
        slot = ring.slot_now(now)
        if slot >= 0:
            for name, value in stats.items():
                ring.arrays[name][slot] += value


def _segment_groups(features: tuple[str, ...], keys: list | None):
    """((segment feature, value), indices of the events in it) for every segment present in ``keys``."""
    if not features or not keys:
        return
    for f, feature in enumerate(features):
        groups: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            if key is not None:
                groups.setdefault(key[f], []).append(i)
        for value, idx in groups.items():
            yield (feature, value), np.asarray(idx)


class Segments:
    """Which segment an event falls in: per segment feature, up to ``segment_top`` values (the reference's
    most frequent categories, or without a reference the first ones seen); the rest are "other". A fairness
    reference group always has a segment of its own, beside those. A segment feature may be a prediction
    attribute (models[].attributes), which no reference describes: its values are always the first seen."""

    OTHER = "other"

    def __init__(self, model: ModelConfig):
        self.features = model.segment_features
        self.top = model.segment_top
        self.attributes = frozenset(model.attributes)
        # per segment feature: its name, and whether it is read from the prediction's attributes (else features)
        self._sources = tuple((f, f in self.attributes) for f in self.features)
        self.pinned = {f: {v} for f, v in model.fairness_reference}
        self.values: dict[str, set[str]] = {f: set(self.pinned.get(f, ())) for f in self.features}
        self.from_reference = False

    def use_reference(self, profile: Profile) -> None:
        self.values = {
            f: set(self.values[f]) if f in self.attributes else set(profile.features[f].categories[: self.top])
            for f in self.features
        }
        self.from_reference = True
        self.pin()

    def pin(self) -> None:
        """Give each reference group its segment (also in values restored from a snapshot)."""
        for f, values in self.pinned.items():
            self.values[f] |= values

    def keys(self, events: list[Prediction]) -> list[tuple[str, ...]] | None:
        if not self.features:
            return None
        return [
            tuple(self._value(f, ((e.attributes if attr else e.features) or {}).get(f)) for f, attr in self._sources)
            for e in events
        ]

    def column_keys(self, cols: Columns) -> list[tuple[str, ...]] | None:
        """``keys`` of a columnar batch's rows."""
        if not self.features:
            return None
        values = [
            map(self._value, itertools.repeat(f), (cols.attributes.get(f) or itertools.repeat(None, cols.n)))
            if attr
            else map(self._value, itertools.repeat(f), cols.categorical[f])
            for f, attr in self._sources
        ]
        return list(zip(*values))

    def _value(self, feature: str, raw) -> str:
        if raw is None or raw == "":
            return self.OTHER
        value = category(raw)
        known = self.values[feature]
        if value in known:
            return value
        learning = not self.from_reference or feature in self.attributes
        if learning and len(known) < self.top + len(self.pinned.get(feature, ())):
            known.add(value)
            return value
        return self.OTHER


@dataclass
class VersionSnapshot:
    """A consistent copy of one version's counters and window totals, for the collector."""

    version: str
    predictions: int
    labels: int
    last_prediction: float
    last_label: float
    latency: Histogram
    label_delay: Histogram
    missing: np.ndarray
    outcomes: np.ndarray | None = None
    predicted_class: np.ndarray | None = None
    confidence: Histogram | None = None
    value: Histogram | None = None
    abs_error: float = 0.0
    sq_error: float = 0.0
    windows: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # span name -> the labelled-outcome sums of the span (SPAN_ARRAYS), shortest span first
    spans: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    segments: dict[tuple[str, str], dict[str, dict[str, np.ndarray]]] = field(default_factory=dict)
    first_seen: float | None = 0.0  # VersionState.first_seen
    registry: RegistryInfo | None = None  # what the version's predictions said of it in the model registry


@dataclass
class ModelSnapshot:
    config: ModelConfig
    versions: list[VersionSnapshot]
    pending_predictions: int
    pending_labels: int
    dropped: dict[tuple[str, str], int]
    duplicates: dict[str, int]
    retired_versions: int
    profile: Profile | None = None
    feature_errors: dict[tuple[str, str], int] = field(default_factory=dict)


def config_spans(config: Config) -> tuple[Span, ...]:
    """The windows and their recent parts, on which the alert rules test quality (window.spans)."""
    return spans(config.windows, config.window_seconds, config.buckets_per_window)


class VersionState:
    def __init__(self, model: ModelConfig, config: Config, version: str):
        self.model = model
        self.version = version
        schema = ring_schema(model)
        self.rings = [Ring(sec, config.buckets_per_window, schema) for sec in config.window_seconds]
        self.window_names = config.windows
        self.spans = config_spans(config)
        self.predictions = 0
        self.labels = 0
        self.last_prediction = 0.0
        self.last_label = 0.0
        self.last_seen = 0.0
        # Arrival time of the first prediction (0: none yet; None: unknown, a version restored from a data
        # directory written before this was kept).
        self.first_seen: float | None = 0.0
        self.registry: RegistryInfo | None = None  # the latest registry entry the version's predictions sent
        self.latency = Histogram(config.latency_buckets)
        self.label_delay = Histogram(config.label_delay_buckets)
        self.missing = np.zeros(len(model.features), dtype=np.int64)  # missing values per feature, cumulative
        # (segment feature, value) -> rings like self.rings, for the events of that segment only
        self.segments: dict[tuple[str, str], list[Ring]] = {}
        if model.is_classification:
            c = len(model.classes)
            self.outcomes = np.zeros((c, c), dtype=np.int64)
            self.predicted_class = np.zeros(c, dtype=np.int64)
            self.confidence = Histogram(CONFIDENCE_BUCKETS)
            self.positive = model.classes.index(model.positive_class) if model.task == "binary" else None
            # Class index of each score column (binary: the positive class only).
            self.score_class = np.array([model.classes.index(x) for x in model.score_classes], dtype=np.int64)
        else:
            self.value = Histogram(model.prediction_buckets)
            self.abs_error = 0.0
            self.sq_error = 0.0
            self.y_shift: float | None = None  # labels are summed relative to the first one, for precision

    # -- predictions --------------------------------------------------------------------------------

    def add_predictions(
        self, events: list[Prediction], now: float, binner: Binner, segments: list[tuple[str, ...]] | None = None
    ) -> None:
        """Count a batch of validated predictions (rows) into the windows and counters."""
        self.add_batch(Batch.of_events(events, self.model, binner), now, binner, segments)

    def add_batch(self, b: Batch, now: float, binner: Binner, segments: list[tuple[str, ...]] | None = None) -> None:
        """Count a batch given as columns (exporter/ingest/columns.py ``Batch``) into the windows and counters:
        what rows and columnar batches both come to."""
        n, ts = b.n, b.timestamps
        self.predictions += n
        if self.first_seen == 0.0:
            self.first_seen = now
        self.last_prediction = now  # arrival time: a lagging client clock or a backfill is not "traffic"
        self.last_seen = now
        if b.latency is not None:
            self.latency.observe(b.latency)
        binned = binner.bin(b.numeric, b.categorical, b.predictions, b.errors)
        estimated = None  # the estimate's scatter of the batch's scored predictions, with a calibration
        if binned.missing is not None:
            self.missing += binned.missing
        if self.model.is_classification:
            preds = b.predictions
            have, scores = b.scored, b.scores
            calibration = binner.profile.calibration if binner.profile is not None else None
            if calibration is not None and have.size:
                estimated = estimate.scatter(calibration, have, preds[have], scores, self.positive)
                binned.scatter.update(estimated)
        if self.model.attributions and b.attributed is not None and b.attributed.size:
            # predictions without attributions cost nothing
            binned.scatter.update(attribution.scatter(b.attributions, b.attributed))
        _predictions_into(self.rings, ts, binned, now)
        fairness, listed = self.model.fairness_features, self.model.listed_segments
        for (feature, value), idx in _segment_groups(self.model.segment_features, segments):
            if feature in listed:
                sub = b.take(idx)
                entries = binner.bin(sub.numeric, sub.categorical, sub.predictions, sub.errors).scatter
            else:  # a fairness feature only: its groups' predicted classes (binary models: preds is set)
                entries = {"pred_bins": (np.arange(len(idx)), preds[idx], None)}
            if estimated is not None and feature in fairness:
                entries.update(_estimate_part(estimated, idx, n))
            _scatter_at(self._segment_rings(feature, value), ts[idx], entries, now, count="predictions")
        if self.model.is_classification:
            self.predicted_class += np.bincount(preds, minlength=len(self.predicted_class))
            if have.size:
                self.confidence.observe(self._probabilities(scores).max(axis=1))
        else:
            self.value.observe(b.predictions)

    def _probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Full class-probability rows from the score columns (binary: [1 - p, p] in class order)."""
        if self.positive is None:
            return scores
        probs = np.empty((len(scores), 2))
        probs[:, self.positive] = scores[:, 0]
        probs[:, 1 - self.positive] = 1.0 - scores[:, 0]
        return probs

    # -- labelled outcomes --------------------------------------------------------------------------

    def add_outcomes(
        self,
        predicted: list,
        actual: list,
        scores: list,
        predicted_at: list,
        labelled_at: list,
        segments: list,
        now: float,
        calibration: estimate.Calibration | None = None,
    ) -> None:
        """Labels joined to predictions: counters, label delay, and the window buckets holding ``now``; with a
        ``calibration``, the estimate's labelled sums in the buckets of the predictions' times.

        ``now`` is the time of the join: the label's arrival, or the prediction's when the label came first.
        """
        n = len(actual)
        self.labels += n
        self.last_label = now
        self.last_seen = now
        delay = np.asarray(labelled_at, dtype=np.float64) - np.asarray(predicted_at, dtype=np.float64)
        self.label_delay.observe(np.maximum(delay, 0.0))
        if self.model.is_classification:
            pred, act = np.asarray(predicted, dtype=np.int64), np.asarray(actual, dtype=np.int64)
            have, matrix = score_matrix(scores)
            stats = self._classification_stats(pred, act, have, matrix)
            self.outcomes += stats["confusion"]
        else:
            pred, act = np.asarray(predicted, dtype=np.float64), np.asarray(actual, dtype=np.float64)
            err = pred - act
            self.abs_error += float(np.abs(err).sum())
            self.sq_error += float((err**2).sum())
            if self.y_shift is None:
                self.y_shift = float(act[0])
            stats = self._regression_stats(pred, act)
        _add_now(self.rings, stats, now)
        if calibration is not None and self.model.is_classification and have.size:
            part = estimate.labelled_scatter(calibration, pred[have], act[have], matrix, self.positive)
            _scatter_at(self.rings, np.asarray(predicted_at, dtype=np.float64)[have], part, now)
        listed = self.model.listed_segments
        for (feature, value), idx in _segment_groups(self.model.segment_features, segments):
            if feature not in listed:  # a fairness feature only: its groups' outcomes
                part = {"labeled": len(idx), "confusion": self._confusion(pred[idx], act[idx])}
            elif self.model.is_classification:
                part = self._classification_stats(pred[idx], act[idx], *score_matrix([scores[i] for i in idx]))
            else:
                part = self._regression_stats(pred[idx], act[idx])
            _add_now(self._segment_rings(feature, value), part, now)

    def _segment_rings(self, feature: str, value: str) -> list[Ring]:
        rings = self.segments.get((feature, value))
        if rings is None:
            schema = segment_schema(self.model, feature)
            rings = self.segments[feature, value] = [Ring(r.seconds, r.k, schema) for r in self.rings]
        return rings

    def _confusion(self, pred: np.ndarray, actual: np.ndarray) -> np.ndarray:
        """The (actual x predicted) counts of labelled outcomes."""
        c = len(self.model.classes)
        return np.bincount(actual * c + pred, minlength=c * c).reshape(c, c)

    def _classification_stats(self, pred: np.ndarray, actual: np.ndarray, have: np.ndarray, sc: np.ndarray) -> dict:
        """What labelled outcomes add to a window bucket (confusion, score histograms, log loss...); ``have``
        indexes the outcomes with scores, ``sc`` their scores (:func:`_score_matrix`)."""
        confusion = self._confusion(pred, actual)
        stats = {}
        if have.size:
            act = actual[have]
            probs = self._probabilities(sc)
            rows = np.arange(len(have))
            p_true = np.clip(probs[rows, act], quality.EPS, 1 - quality.EPS)
            onehot = np.zeros_like(probs)
            onehot[rows, act] = 1.0
            sq = (probs - onehot) ** 2
            # scikit-learn's brier_score_loss: (p - y)^2 for binary, the sum over classes for multiclass.
            brier = sq[:, self.positive].sum() if self.positive is not None else sq.sum()
            conf = probs.max(axis=1)
            correct = probs.argmax(axis=1) == act
            eb = quality.ece_bin(conf)
            s, b = sc.shape[1], quality.SCORE_BINS
            bins = quality.score_bin(sc) + np.arange(s) * b  # flat (column, bin) index
            is_pos = act[:, None] == self.score_class[None, :]
            stats = {
                "scored": len(have),
                "log_loss": float(-np.log(p_true).sum()),
                "brier": float(brier),
                "ece_count": np.bincount(eb, minlength=quality.ECE_BINS),
                "ece_correct": np.bincount(eb, weights=correct, minlength=quality.ECE_BINS).astype(np.int64),
                "ece_confidence": np.bincount(eb, weights=conf, minlength=quality.ECE_BINS),
                "hist_all": np.bincount(bins.ravel(), minlength=s * b).reshape(s, b).astype(np.int32),
                "hist_pos": np.bincount(bins[is_pos], minlength=s * b).reshape(s, b).astype(np.int32),
            }
        stats["labeled"] = len(actual)
        stats["confusion"] = confusion
        return stats

    def _regression_stats(self, pred: np.ndarray, actual: np.ndarray) -> dict:
        err = pred - actual
        y = actual - self.y_shift  # labels are summed relative to the first one, for precision
        return {
            "labeled": float(len(actual)),
            "err": float(err.sum()),
            "abs_err": float(np.abs(err).sum()),
            "sq_err": float((err**2).sum()),
            "y": float(y.sum()),
            "y_sq": float((y**2).sum()),
        }

    def snapshot(self, now: float) -> VersionSnapshot:
        snap = VersionSnapshot(
            self.version,
            self.predictions,
            self.labels,
            self.last_prediction,
            self.last_label,
            self.latency.copy(),
            self.label_delay.copy(),
            self.missing.copy(),
            first_seen=self.first_seen,
            registry=self.registry,
        )
        if self.model.is_classification:
            snap.outcomes = self.outcomes.copy()
            snap.predicted_class = self.predicted_class.copy()
            snap.confidence = self.confidence.copy()
        else:
            snap.value = self.value.copy()
            snap.abs_error, snap.sq_error = self.abs_error, self.sq_error
        snap.windows = {name: ring.totals(now) for name, ring in zip(self.window_names, self.rings)}
        arrays = SPAN_ARRAYS["classification" if self.model.is_classification else "regression"]
        if self.model.is_classification:
            arrays = (*arrays, *ESTIMATE_SPAN_ARRAYS)
        sums: dict[str, dict[str, np.ndarray]] = {}
        for i, ring in enumerate(self.rings):
            mine = [s for s in self.spans if s.window == i]
            sums.update(zip((s.name for s in mine), ring.recents(now, [s.buckets for s in mine], arrays)))
        snap.spans = {s.name: sums[s.name] for s in self.spans}
        snap.segments = {
            key: {name: ring.totals(now) for name, ring in zip(self.window_names, rings)}
            for key, rings in self.segments.items()
        }
        return snap


class ModelState:
    """Everything mlmon knows about one configured model; every method takes the model's lock."""

    def __init__(self, model: ModelConfig, config: Config):
        self.model = model
        self.config = config
        self.lock = threading.Lock()
        self.versions: dict[str, VersionState] = {}
        self.joins = JoinStore(config.limits.pending_ttl_seconds, config.limits.max_pending_per_model)
        self.dropped = dict.fromkeys(joins.DROP_REASONS, 0)
        self.duplicates = {"prediction": 0, "label": 0}
        self.retired_versions = 0
        self.profile: Profile | None = None
        self.binner = Binner(model, None)
        self.segments = Segments(model)
        # (feature, reason) -> values left out under invalid_features: count; the feature is "" for unknown names
        self.feature_errors: dict[tuple[str, str], int] = {}
        if model.invalid_features == "count":
            self.feature_errors = {(f.name, "type_error"): 0 for f in model.features}
            self.feature_errors["", "unknown_feature"] = 0

    def set_reference(self, profile: Profile) -> None:
        """Use a new reference: its bins differ, so every window's binned counts start again from zero."""
        with self.lock:
            self.profile = profile
            self.binner = Binner(self.model, profile)
            self.segments.use_reference(profile)
            for version in self.versions.values():
                for ring in [*version.rings, *(r for rings in version.segments.values() for r in rings)]:
                    for name in (*REFERENCE_ARRAYS, *estimate.ARRAYS):  # the estimate rests on its calibration
                        # Predicted classes are not binned against the reference: their counts stay (the
                        # selection rates of docs/fairness.md rest on them).
                        if name in ring.arrays and not (name == "pred_bins" and self.model.is_classification):
                            ring.arrays[name][:] = 0

    def reset(self) -> None:
        """Forget the windows, counters and waiting predictions (an admin action); the reference stays."""
        with self.lock:
            self.versions = {}
            self.joins.clear()
            self.dropped = dict.fromkeys(joins.DROP_REASONS, 0)
            self.duplicates = {"prediction": 0, "label": 0}
            self.retired_versions = 0
            self.feature_errors = dict.fromkeys(self.feature_errors, 0)

    def _version(self, name: str, now: float) -> VersionState:
        state = self.versions.get(name)
        if state is None:
            if len(self.versions) >= self.config.limits.max_versions_per_model:
                oldest = min(self.versions.values(), key=lambda v: v.last_seen)
                del self.versions[oldest.version]
                self.retired_versions += 1
            state = self.versions[name] = VersionState(self.model, self.config, name)
            state.last_seen = now
        return state

    def decide_predictions(self, events: list[Prediction], now: float, token: str = "") -> tuple:
        """Ask the join store what each prediction with an id joins (the only step that can fail: a shared
        store may be unreachable); ``add_predictions`` then applies the plan. ``token`` names the request."""
        with self.lock:
            keys = self.segments.keys(events)
            with_id = [
                (e.id, _pending(e, now, keys[i] if keys else None), e.label)
                for i, e in enumerate(events)
                if e.id is not None
            ]
            decisions = self.joins.join_predictions(with_id, now, token) if with_id else []
            self._collect_dropped()
            return keys, decisions

    def add_predictions(self, events: list[Prediction], now: float, token: str = "", plan=None) -> tuple[int, int]:
        """Ingest validated predictions of this model; return (accepted, duplicates).

        A prediction that repeats a known id is a duplicate; if it carries a label and its first copy
        still waits, the label is joined to that first copy (a retry that now knows the truth).
        """
        if plan is None:
            plan = self.decide_predictions(events, now, token)
        with self.lock:
            keys, decided = plan
            for e in events:
                for error in e.feature_errors:
                    self.feature_errors[error] += 1
            outcomes = _Outcomes()
            kept, dups, dup_labels = _sort_rows(
                decided,
                [e.id for e in events],
                [e.label for e in events],
                keys,
                outcomes,
                now,
                lambda i, seg: _pending(events[i], now, seg),
                lambda i, seg, label: outcomes.add_labelled(events[i], seg, label, now),
            )
            fresh: dict[str, tuple[list[Prediction], list]] = {}
            registry: dict[str, RegistryInfo] = {}  # version -> the last registry entry the batch sent for it
            for i in kept:
                e = events[i]
                batch, batch_keys = fresh.setdefault(e.version, ([], []))
                batch.append(e)
                batch_keys.append(keys[i] if keys else None)
                if e.registry is not None:
                    registry[e.version] = e.registry
            for version, (batch, batch_keys) in fresh.items():
                self._version(version, now).add_predictions(batch, now, self.binner, batch_keys)
            for version, entry in registry.items():
                state = self.versions.get(version)  # None: retired at once by a newer version of the batch
                if state is not None:
                    state.registry = entry
            self._add_outcomes(outcomes, now)  # after the loop above has created any new version
            self.duplicates["prediction"] += dups
            self.duplicates["label"] += dup_labels
            return len(events) - dups, dups

    def decide_columns(self, cols: Columns, now: float, token: str = "") -> tuple:
        """``decide_predictions`` for a columnar batch."""
        with self.lock:
            keys = self.segments.column_keys(cols)
            if cols.ids is None:
                return keys, []
            if cols.labels is None and cols.n >= 64 and not self.joins.shared and None not in cols.ids:
                # The common batch (new ids, no labels): the rows wait as one block of columns.
                decisions = self.joins.wait_columns(
                    cols.ids, now, cols.version, cols.timestamps, cols.predictions, cols.scores, keys
                )
                if decisions is not None:
                    self._collect_dropped()
                    return keys, decisions
            # What each row leaves in the join store: a Pending's fields as a plain tuple, made in C.
            pendings = list(
                zip(
                    itertools.repeat(now),
                    itertools.repeat(cols.version),
                    cols.timestamps.tolist(),
                    cols.predictions.tolist(),
                    map(tuple, cols.scores.tolist()) if cols.scores is not None else itertools.repeat(None),
                    keys or itertools.repeat(None),
                )
            )
            if self.joins.shared:
                pendings = list(map(joins.pending_of, pendings))
            labels = cols.labels or itertools.repeat(None)
            if None in cols.ids:
                with_id = [(pid, p, label) for pid, p, label in zip(cols.ids, pendings, labels) if pid is not None]
            else:
                with_id = list(zip(cols.ids, pendings, labels))
            decisions = self.joins.join_predictions(with_id, now, token) if with_id else []
            self._collect_dropped()
            return keys, decisions

    def add_columns(self, cols: Columns, now: float, token: str = "", plan=None) -> tuple[int, int]:
        """``add_predictions`` for a columnar batch (one version): the same decisions, taken on whole columns
        where no row needs one of its own (no id repeated, no label joined)."""
        if plan is None:
            plan = self.decide_columns(cols, now, token)
        with self.lock:
            keys, decided = plan
            outcomes = _Outcomes()
            dups = dup_labels = 0
            fresh: np.ndarray | None = None  # None: every row (no id repeated, no label joined by the store)
            if cols.ids is None:  # every row new; those sent with their label joined now
                if cols.labels is not None:
                    labelled = [i for i, label in enumerate(cols.labels) if label is not None]
                    outcomes.extend_rows(cols, labelled, [cols.labels[i] for i in labelled], keys, now)
            elif cols.labels is not None or decided.count(_WAITING) != len(decided):
                fresh_rows, dups, dup_labels = _sort_rows(
                    decided,
                    cols.ids,
                    cols.labels or [None] * cols.n,
                    keys,
                    outcomes,
                    now,
                    lambda i, seg: _column_pending(cols, i, now, seg),
                    lambda i, seg, label: outcomes.add(_column_pending(cols, i, now, seg), label, now),
                )
                fresh = np.asarray(fresh_rows, dtype=np.int64)
            if fresh is None or fresh.size:
                batch = Batch.of_columns(cols, self.binner, fresh)
                segments = keys if fresh is None or keys is None else [keys[i] for i in fresh]
                state = self._version(cols.version, now)
                state.add_batch(batch, now, self.binner, segments)
                if cols.registry is not None:
                    state.registry = cols.registry
            self._add_outcomes(outcomes, now)
            self.duplicates["prediction"] += dups
            self.duplicates["label"] += dup_labels
            return cols.n - dups, dups

    def decide_labels(self, labels: list[Label], now: float, token: str = "") -> list:
        with self.lock:
            decisions = self.joins.join_labels([(item.id, item.label) for item in labels], now, token)
            self._collect_dropped()
            return decisions

    def add_labels(self, labels: list[Label], now: float, token: str = "", plan=None) -> tuple[int, int]:
        """Ingest validated labels of this model; return (accepted, duplicates)."""
        if plan is None:
            plan = self.decide_labels(labels, now, token)
        with self.lock:
            decisions = plan
            outcomes = _Outcomes()
            dups = 0
            for item, (kind, pending) in zip(labels, decisions):
                if kind == joins.DUP:
                    dups += 1
                elif kind == joins.JOINED:
                    outcomes.add(pending, item.label, now)
            self._add_outcomes(outcomes, now)
            self.duplicates["label"] += dups
            return len(labels) - dups, dups

    def _collect_dropped(self) -> None:
        for key, n in self.joins.take_dropped().items():
            if n:
                self.dropped[key] += n

    def _add_outcomes(self, outcomes: _Outcomes, now: float) -> None:
        for version, columns in outcomes.by_version.items():
            state = self.versions.get(version)
            if state is None and self.joins.shared:
                # Its predictions went to another replica: this one learns of the version from the label.
                state = self._version(version, now)
            if state is None:
                # The version was retired (limits.max_versions_per_model) while its predictions waited.
                self.dropped["prediction", "version_retired"] += len(columns[0])
                continue
            state.add_outcomes(*columns, now, calibration=self.profile.calibration if self.profile else None)

    def expire(self, now: float) -> None:
        with self.lock:
            self.joins.expire(now)
            self._collect_dropped()

    def snapshot(self, now: float) -> ModelSnapshot:
        with self.lock:
            waiting, early = self.joins.counts()
            return ModelSnapshot(
                self.model,
                [v.snapshot(now) for v in self.versions.values()],
                waiting,
                early,
                dict(self.dropped),
                dict(self.duplicates),
                self.retired_versions,
                self.profile,
                dict(self.feature_errors),
            )

    # -- durability (exporter/engine/storage.py) ------------------------------------------------------------

    def capture(self, portable: bool = False) -> dict:
        """A copy of everything this model's windows and counters hold, for a snapshot (``portable``: its join
        store in the form an earlier release reads too, for the last snapshot of a clean stop).

        Cheap on purpose: the caller holds the ingest lock (so that the snapshot and the journal sequence
        agree) and ingest waits meanwhile. Arrays are copied; waiting predictions are shared, since an entry
        is only ever added or removed, never changed. Pickling happens later, outside the locks. A shared
        join store lives in Redis and is not part of it.
        """
        with self.lock:
            keep = {id(self.model): self.model, id(self.config): self.config}
            return {
                "fingerprint": fingerprint(self.model, self.config),
                "versions": copy.deepcopy(self.versions, keep),
                "joins": None if self.joins.shared else self.joins.copy(portable),
                "dropped": dict(self.dropped),
                "duplicates": dict(self.duplicates),
                "retired_versions": self.retired_versions,
                "profile": self.profile,
                "segments": ({f: set(v) for f, v in self.segments.values.items()}, self.segments.from_reference),
                "feature_errors": dict(self.feature_errors),
            }

    @staticmethod
    def dumps(captured: dict) -> bytes:
        """The bytes of a snapshot of ``capture()``'s copy (the profile as its JSON, which restore validates)."""
        profile = captured["profile"]
        return pickle.dumps(
            {**captured, "profile": profile.dumps() if profile is not None else None}, protocol=pickle.HIGHEST_PROTOCOL
        )

    def restore(self, blob: bytes) -> bool:
        """Take back what ``export`` saved; False (and nothing changed) if the model's config changed shape."""
        data = storage.unpickle(blob)
        if data["fingerprint"] != fingerprint(self.model, self.config):
            return False
        with self.lock:
            schema = ring_schema(self.model)
            for version in data["versions"].values():
                # Unknown for the versions of a snapshot written before these were kept (never stamped later).
                version.__dict__.setdefault("first_seen", None)
                version.__dict__.setdefault("registry", None)
                for ring in version.rings:
                    ring.conform(schema)
                for (feature, _), rings in version.segments.items():
                    for ring in rings:
                        ring.conform(segment_schema(self.model, feature))
                version.model = self.model
                version.window_names = self.config.windows
                version.spans = config_spans(self.config)  # derived from the windows, which the fingerprint covers
            self.versions = data["versions"]
            if data["joins"] is not None and not self.joins.shared:
                self.joins = data["joins"]
                self.joins.ttl = self.config.limits.pending_ttl_seconds
                self.joins.cap = self.config.limits.max_pending_per_model
            self.dropped = data["dropped"]
            self.duplicates = data["duplicates"]
            self.retired_versions = data["retired_versions"]
            if data["profile"] is not None:
                self.profile = reference.from_json(json.loads(data["profile"]), self.model)
                self.binner = Binner(self.model, self.profile)
            self.segments.values, self.segments.from_reference = data["segments"]
            self.segments.pin()
            self.feature_errors = data["feature_errors"]
            return True

    def summary(self, now: float) -> dict:
        """The JSON shape of one model in GET /api/v1/models."""
        with self.lock:
            waiting, early = self.joins.counts()
            return {
                "name": self.model.name,
                "task": self.model.task,
                "classes": list(self.model.classes),
                "features": [{"name": f.name, "type": f.type} for f in self.model.features],
                "pending_labels": waiting,
                "early_labels": early,
                "versions": [
                    {
                        "version": v.version,
                        "predictions": v.predictions,
                        "labels": v.labels,
                        "last_prediction_timestamp": v.last_prediction or None,
                        "last_label_timestamp": v.last_label or None,
                        "windows": {
                            name: {"predictions": int(t["predictions"]), "labeled": int(t["labeled"])}
                            for name, t in ((n, r.totals(now)) for n, r in zip(v.window_names, v.rings))
                        },
                    }
                    for v in self.versions.values()
                ],
            }


def fingerprint(model: ModelConfig, config: Config) -> str:
    """What the shape of a model's state depends on: a snapshot taken under another shape is not restored.

    Thresholds, drift methods and limits are not in it: changing them keeps the windows.
    """
    # Without the estimate's and the attributions' arrays (ring_schema leaves them out without ``estimates``)
    # and the multivariate drift's: a snapshot written before them (or before attributions were turned on) gets
    # them empty on restore (Ring.conform) instead of losing its windows.
    schema = {
        name: (shape, np.dtype(dtype).str)
        for name, (shape, dtype) in ring_schema(model, False).items()
        if name not in MULTIVARIATE
    }
    return repr(
        (
            model.task,
            model.classes,
            model.positive_class,
            [(f.name, f.type) for f in model.features],
            model.prediction_buckets,
            model.segment_features,
            model.segment_top,
            sorted(schema.items()),
            config.window_seconds,
            config.buckets_per_window,
            config.latency_buckets,
            config.label_delay_buckets,
        )
    )


def _pending(e: Prediction, now: float, segments: tuple[str, ...] | None) -> Pending:
    return Pending(now, e.version, e.timestamp, e.prediction, e.scores, segments)


_WAITING = (joins.WAITING, None)


def _sort_rows(decided: list, ids: list, labels: list, keys, outcomes: _Outcomes, now: float, pending, labelled):
    """What each prediction of a batch comes to, given the join store's decisions (one per prediction with an
    id, in order): (the rows that count as new predictions, duplicates, labels dropped as duplicates).

    A repeated id is a duplicate; if it carries a label and its first copy still waits, the label joins that
    first copy. A new prediction that meets its early label is joined at the label's arrival; one sent with its
    label is joined now (``labelled(row, segments, label)``). ``pending(row, segments)``: what a row leaves
    behind in the join store."""
    decisions = iter(decided)
    fresh: list[int] = []
    dups = dup_labels = 0
    for i, (pid, label) in enumerate(zip(ids, labels)):
        seg = keys[i] if keys else None
        if pid is not None:
            kind, detail = next(decisions)
            if kind == joins.DUP:
                dups += 1
                continue
            if kind == joins.DUP_JOIN:
                dups += 1
                outcomes.add(detail, label, now)
                continue
            if kind == joins.INLINE:
                dup_labels += detail  # the label sent with the prediction wins over an early one
            elif kind == joins.EARLY:
                outcomes.add(pending(i, seg), detail.label, detail.arrival)
                label = None  # added already, with the early label's arrival time
        if label is not None:
            labelled(i, seg, label)
        fresh.append(i)
    return fresh, dups, dup_labels


def _column_pending(cols: Columns, i: int, now: float, segments: tuple[str, ...] | None) -> Pending:
    scores = tuple(cols.scores[i].tolist()) if cols.scores is not None else None
    return Pending(now, cols.version, float(cols.timestamps[i]), cols.predictions[i].item(), scores, segments)


class _Outcomes:
    """Joined (prediction, label) pairs of one ingest call, gathered per version as columns."""

    __slots__ = ("by_version",)

    def __init__(self) -> None:
        self.by_version: dict[str, tuple[list, list, list, list, list, list]] = {}

    def add(self, p: Pending, actual, labelled_at: float) -> None:
        cols = self.by_version.get(p.version)
        if cols is None:
            cols = self.by_version[p.version] = ([], [], [], [], [], [])
        cols[0].append(p.prediction)
        cols[1].append(actual)
        cols[2].append(p.scores)
        cols[3].append(p.timestamp)
        cols[4].append(labelled_at)
        cols[5].append(p.segments)

    def extend_rows(self, cols: Columns, rows: list[int], actual: list, keys, now: float) -> None:
        """Rows of a columnar batch that came with their labels (as ``add_labelled`` for each, in order)."""
        if not rows:
            return
        columns = self.by_version.get(cols.version)
        if columns is None:
            columns = self.by_version[cols.version] = ([], [], [], [], [], [])
        idx = np.asarray(rows, dtype=np.int64)
        columns[0].extend(cols.predictions[idx].tolist())
        columns[1].extend(actual)
        columns[2].extend(map(tuple, cols.scores[idx].tolist()) if cols.scores is not None else [None] * len(rows))
        columns[3].extend(cols.timestamps[idx].tolist())
        columns[4].extend([now] * len(rows))
        columns[5].extend([keys[i] for i in rows] if keys else [None] * len(rows))

    def add_labelled(self, e: Prediction, segments: tuple[str, ...] | None, actual, now: float) -> None:
        """A prediction that came with its label: as ``add(_pending(e, now, segments), actual, now)``."""
        cols = self.by_version.get(e.version)
        if cols is None:
            cols = self.by_version[e.version] = ([], [], [], [], [], [])
        cols[0].append(e.prediction)
        cols[1].append(actual)
        cols[2].append(e.scores)
        cols[3].append(e.timestamp)
        cols[4].append(now)
        cols[5].append(segments)


class ServerReports:
    """Resource usage reported by model servers through the client, bounded in count and age."""

    def __init__(self, cap: int, stale_seconds: float):
        self.cap = cap
        self.stale = stale_seconds
        self.lock = threading.Lock()
        self.reports: dict[str, tuple[tuple[str, ...], float, float, float]] = {}

    def report(self, server: str, models: tuple[str, ...], cpu: float, rss: float, now: float) -> bool:
        with self.lock:
            if server not in self.reports and len(self.reports) >= self.cap:
                self._expire(now)
                if len(self.reports) >= self.cap:
                    return False
            self.reports[server] = (models, cpu, rss, now)
            return True

    def _expire(self, now: float) -> None:
        for server in [s for s, r in self.reports.items() if r[3] < now - self.stale]:
            del self.reports[server]

    def expire(self, now: float) -> None:
        with self.lock:
            self._expire(now)

    def snapshot(self, now: float) -> dict:
        """Reports heard from within the staleness limit (a scrape reads, never deletes)."""
        with self.lock:
            return {s: r for s, r in self.reports.items() if r[3] >= now - self.stale}
