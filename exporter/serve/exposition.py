"""/metrics: the Prometheus text format (0.0.4) written fast, and the WSGI app that serves it.

The one place that writes the exposition format, as client_python's ``exposition`` module is for
client_python: the families of exporter/serve/collector.py keep their samples as label values and values
(:class:`GaugeFamily`, :class:`CounterFamily`, :class:`HistogramFamily`), and :func:`text_exposition` writes
them, byte for byte what ``prometheus_client.generate_latest`` would, with the heads of the lines kept from
one scrape to the next and the series that only change with the config or a reference
(:class:`SeriesBlock`) kept as text.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable
from http import HTTPStatus
from urllib.parse import parse_qs

import orjson
from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.openmetrics.exposition import escape_label_name, escape_metric_name
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString


class _Rows:
    """A family whose samples are kept as label values and values, not as client_python's Samples (a dict of
    labels each), which are made only when something other than :func:`text_exposition` reads ``samples``
    (the OpenMetrics format, a ``name[]`` selection). Building those dicts was about a sixth of a scrape.

    Samples come three ways, written in this order: blocks (:meth:`add_block`, series that seldom change,
    kept with their text between scrapes), groups (:meth:`add_group`) and rows (:meth:`add_metric`)."""

    _suffix = ""

    def add_metric(self, labels, value, timestamp=None) -> None:
        if timestamp is not None:
            raise ValueError("mlmon's families take no timestamps")
        self._rows.append((tuple(labels), value))

    def add_group(self, prefix: tuple[str, ...], values: dict[str, float]) -> None:
        """The samples labelled ``prefix + (key,)`` of each key and value of ``values``: a window's figures by
        feature, a feature's by method... taken as the dict they were computed in. Thousands of samples a
        scrape come this way: no tuple per sample, and their line heads found by one string."""
        self._groups.append((prefix, values))

    def add_block(self, block: SeriesBlock) -> None:
        self._blocks.append(block)

    @property
    def samples(self) -> list[Sample]:
        name, names = self.name + self._suffix, self._labelnames
        rows = [
            *(row for block in self._blocks for row in block.rows),
            *((prefix + (key,), value) for prefix, values in self._groups for key, value in values.items()),
            *self._rows,
        ]
        return [Sample(name, dict(zip(names, values)), value, None) for values, value in rows]

    @samples.setter
    def samples(self, samples: list) -> None:  # Metric.__init__ sets an empty list
        if samples:
            raise ValueError("add samples with add_metric")
        self._rows: list[tuple[tuple[str, ...], float]] = []
        self._groups: list[tuple[tuple[str, ...], dict[str, float]]] = []
        self._blocks: list[SeriesBlock] = []


class SeriesBlock:
    """Rows of a family that change only with the config or a reference (thresholds, the reference's own
    figures): the collector builds a block once per model and reference and adds the same block at every
    scrape; :func:`text_exposition` writes its lines once and keeps them on the block."""

    __slots__ = ("rows", "_text")

    def __init__(self, rows: list[tuple[tuple[str, ...], float]]):
        self.rows = tuple(rows)
        self._text: tuple[str, tuple[str, ...], str] | None = None  # sample name, label names, lines

    def text(self, name: str, label_names: tuple[str, ...]) -> str:
        kept = self._text
        if kept is None or kept[0] != name or kept[1] != label_names:  # a block is one family's: written once
            lines = _lines(_Written(_head_writer(name, label_names)), self.rows)
            kept = self._text = (name, label_names, "".join(lines))
        return kept[2]


class GaugeFamily(_Rows, GaugeMetricFamily):
    """A gauge family with the samples of :class:`_Rows`."""


class CounterFamily(_Rows, CounterMetricFamily):
    """A counter family (samples named ``<name>_total``) with the samples of :class:`_Rows`."""

    _suffix = "_total"


class HistogramFamily(HistogramMetricFamily):
    """A histogram family that keeps each histogram as (label values, cumulative (le, count) pairs, sum), for
    :func:`text_exposition` to write as it writes :class:`_Rows`; client_python's Samples (one per bucket,
    a dict of labels each) are made only when something else reads ``samples``."""

    def add_metric(self, labels, buckets, sum_value, timestamp=None) -> None:
        if timestamp is not None or any(len(b) != 2 for b in buckets):
            raise ValueError("mlmon's histograms take no timestamps and no exemplars")
        self._histograms.append((tuple(labels), buckets, sum_value))

    @property
    def samples(self) -> list[Sample]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self._labelnames)
        for labels, buckets, sum_value in self._histograms:
            family.add_metric(labels, buckets, sum_value)
        return family.samples

    @samples.setter
    def samples(self, samples: list) -> None:  # Metric.__init__ sets an empty list
        if samples:
            raise ValueError("add samples with add_metric")
        self._histograms: list[tuple[tuple[str, ...], list[tuple[str, float]], float | None]] = []


# The type each metric type is exposed as in the text format, and the suffix its name takes (as client_python).
_TEXT_TYPES = {
    "counter": ("counter", "_total"),
    "info": ("gauge", "_info"),
    "stateset": ("gauge", ""),
    "gaugehistogram": ("histogram", ""),
    "unknown": ("untyped", ""),
}
_OPENMETRICS_SUFFIXES = ("_created", "_gsum", "_gcount")


def text_exposition(registry) -> bytes:
    """What ``prometheus_client.generate_latest(registry)`` writes, byte for byte, in a fraction of its time.

    client_python escapes and validates every label name of every sample (about a third of a scrape of
    thousands of series); here each family's label names are escaped once, in their sorted order, and only
    label values that need it are escaped. tests/serve/test_api.py compares the two on a full scrape.
    """
    output: list[str] = []
    metric_names: dict[str, str] = {}
    label_specs: dict[tuple[str, ...], list[tuple[str, str]]] = {}

    def metric_name(name: str) -> str:
        escaped = metric_names.get(name)
        if escaped is None:
            escaped = metric_names[name] = escape_metric_name(name)
        return escaped

    def sample_line(sample) -> str:
        labels = sample.labels
        if labels:
            keys = tuple(labels)
            spec = label_specs.get(keys)
            if spec is None:  # (label, 'name="') in sorted order, as generate_latest sorts them
                spec = label_specs[keys] = [(k, f'{escape_label_name(k)}="') for k in sorted(keys)]
            text = ",".join([f'{prefix}{labels[k]}"' for k, prefix in spec])
            if "\\" in text or "\n" in text or text.count('"') != 2 * len(spec):  # a value to escape (rare)
                text = ",".join([f'{prefix}{_label_value(labels[k])}"' for k, prefix in spec])
            head = f"{metric_name(sample.name)}{{{text}}}"
        else:
            head = metric_name(sample.name)
        value = _number(sample.value)
        if sample.timestamp is not None:
            return f"{head} {value} {int(float(sample.timestamp) * 1000):d}\n"
        return f"{head} {value}\n"

    for metric in registry.collect():
        try:
            mtype, suffix = _TEXT_TYPES.get(metric.type, (metric.type, ""))
            mname = metric_name(metric.name + suffix)
            documentation = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
            output.append(f"# HELP {mname} {documentation}\n# TYPE {mname} {mtype}\n")
            if isinstance(metric, _Rows):
                name, label_names = metric.name + metric._suffix, metric._labelnames
                output.extend([block.text(name, label_names) for block in metric._blocks])
                _Heads.of(name, label_names).write(output, metric._groups, metric._rows)
                continue
            if isinstance(metric, HistogramFamily):
                _write_histograms(output, metric)
                continue
            om_samples: dict[str, list[str]] = {}
            special = {metric.name + x: x for x in _OPENMETRICS_SUFFIXES}
            for sample in metric.samples:
                x = special.get(sample.name)
                if x is None:
                    output.append(sample_line(sample))
                else:  # OpenMetrics-only samples go in a gauge of their own, at the end
                    om_samples.setdefault(x, []).append(sample_line(sample))
        except Exception as exception:
            exception.args = (exception.args or ("",)) + (metric,)
            raise
        for x, lines in sorted(om_samples.items()):
            name = metric_name(metric.name + x)
            output.append(f"# HELP {name} {documentation}\n# TYPE {name} gauge\n")
            output.extend(lines)
    return "".join(output).encode("utf-8")


# The heads of the sample lines of each sample name and label names, kept from one scrape to the next.
_HEADS: dict[tuple[str, tuple[str, ...]], _Heads] = {}


class _Heads:
    """The heads of one sample name's lines ('name{a="x",b="y"}'): the series of a scrape are nearly all those
    of the last one, so most heads are looked up, not written again. Those of series that went away (a
    retired version, a new reference) are forgotten once there are many more than a scrape writes."""

    def __init__(self, name: str, label_names: tuple[str, ...]):
        self.head = _head_writer(name, label_names)
        self.rows = _Written(self.head)  # by label values
        self.groups: dict[tuple[str, ...], _Written] = {}  # by a group's prefix, then its last label value

    @staticmethod
    def of(name: str, label_names: tuple[str, ...]) -> _Heads:
        heads = _HEADS.get((name, label_names))
        if heads is None:
            heads = _HEADS[(name, label_names)] = _Heads(name, label_names)
        return heads

    def group(self, prefix: tuple[str, ...], size: int) -> _Written:
        """The heads of a group's lines by its last label value (``size``: how many the group has now)."""
        heads = self.groups.get(prefix)
        if heads is None:
            heads = self.groups[prefix] = _Written(lambda last: self.head(prefix + (last,)))
        elif len(heads) > 2 * size + 64:
            heads.clear()
        return heads

    def forget(self, rows: int, groups: int) -> None:
        """Forget the heads of series gone away, once there are many more than the ``rows`` and ``groups`` of
        the scrape."""
        if len(self.rows) > 2 * rows + 1024:
            self.rows.clear()
        if len(self.groups) > 2 * groups + 1024:
            self.groups.clear()

    def write(self, output: list[str], groups: list, rows: list) -> None:
        """The lines of a :class:`_Rows` family's groups and rows."""
        for prefix, values in groups:
            output.extend(_lines(self.group(prefix, len(values)), values.items()))
        output.extend(_lines(self.rows, rows))
        self.forget(len(rows), len(groups))


class _Written(dict):
    """Heads by a key of their label values, each written (by ``write(key)``) the first time it is asked for."""

    def __init__(self, write: Callable[..., str]):
        super().__init__()
        self.write = write

    def __missing__(self, key) -> str:
        head = self[key] = self.write(key)
        return head


def _write_histograms(output: list[str], family: HistogramFamily) -> None:
    """The lines of a :class:`HistogramFamily`, as client_python writes them: each histogram's buckets (their
    heads kept as a group's, by le), then its _count and _sum (none with a negative bucket)."""
    names = family._labelnames
    buckets = _Heads.of(family.name + "_bucket", (*names, "le"))
    count, total = _Heads.of(family.name + "_count", names), _Heads.of(family.name + "_sum", names)
    for labels, cumulative, sum_value in family._histograms:
        output.extend(_lines(buckets.group(labels, len(cumulative)), cumulative))
        if float(cumulative[0][0]) >= 0 and sum_value is not None:
            output.extend(_lines(count.rows, [(labels, cumulative[-1][1])]))
            output.extend(_lines(total.rows, [(labels, sum_value)]))
    histograms = len(family._histograms)
    buckets.forget(0, histograms)
    count.forget(histograms, 0)
    total.forget(histograms, 0)


def _head_writer(name: str, label_names: tuple[str, ...]) -> Callable[[tuple[str, ...]], str]:
    """The function that writes the head of a line of ``name`` from its label values, the label names escaped
    once and sorted as generate_latest sorts them."""
    order = sorted(range(len(label_names)), key=label_names.__getitem__)
    prefixes = [f'{escape_label_name(label_names[i])}="' for i in order]
    escaped_name = escape_metric_name(name)

    def head(values: tuple[str, ...]) -> str:
        if not values:
            return escaped_name
        text = ",".join([f'{p}{_label_value(values[i])}"' for p, i in zip(prefixes, order)])
        return f"{escaped_name}{{{text}}}"

    return head


def _lines(heads: dict, samples: Iterable) -> list[str]:
    """The lines of (key of the head in ``heads``, value) pairs. Nearly every value is a float within
    +-1e6, which :func:`_number` writes with repr: written here without a call per sample."""
    return [
        f"{heads[key]} {value!r}\n"
        if value.__class__ is float and -1e6 < value < 1e6
        else f"{heads[key]} {_number(value)}\n"
        for key, value in samples
    ]


def _number(value) -> str:
    """A sample value as generate_latest writes it (repr below 1e6; floatToGoString from 1e6 up, NaN, Inf)."""
    d = float(value)
    return repr(d) if -1e6 < d < 1e6 else floatToGoString(d)


def _label_value(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


# gzip level of /metrics: level 1 compresses a scrape of 10,000 series (1 MiB) in 2 ms where client_python's
# level 9 takes 25 ms, for a body 30% larger (78 KB instead of 60 KB; docs/performance.md).
METRICS_GZIP_LEVEL = 1


def metrics_app(registry: CollectorRegistry) -> Callable:
    """client_python's /metrics app (make_wsgi_app), with the plain text format written by
    :func:`text_exposition` (the same bytes, faster) and gzip at :data:`METRICS_GZIP_LEVEL`.

    Anything else (OpenMetrics, other escapings, methods other than GET) is client_python's own answer.
    """
    fallback = make_wsgi_app(registry)

    def app(environ, start_response):
        # Mounted at /metrics: only /metrics itself exists, for GET; the rest answers as the API does.
        if environ.get("PATH_INFO") not in ("", "/"):
            return _wsgi_error(start_response, 404, "no such path; the metrics are at /metrics")
        if environ["REQUEST_METHOD"] != "GET":
            return _wsgi_error(start_response, 405, "/metrics answers GET only", [("Allow", "GET")])
        encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT"))
        if encoder is not generate_latest:
            return fallback(environ, start_response)
        params = parse_qs(environ.get("QUERY_STRING", ""))
        target = registry.restricted_registry(params["name[]"]) if "name[]" in params else registry
        output = text_exposition(target)
        headers = [("Content-Type", content_type)]
        if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING")):
            output = gzip.compress(output, compresslevel=METRICS_GZIP_LEVEL)
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [output]

    return app


def _wsgi_error(start_response, status: int, message: str, headers: list | None = None) -> list[bytes]:
    """The JSON error of :func:`error_body`, outside Flask (the /metrics app is mounted beside it)."""
    name = status_name(status)
    body = orjson.dumps({"error": {"code": status, "name": name, "message": message}})
    start_response(f"{status} {name}", [("Content-Type", "application/json"), *(headers or [])])
    return [body]


def status_name(status: int) -> str:
    # Fixed names: Python's own phrases change between versions (413 became "Content Too Large").
    return {413: "Payload Too Large"}.get(status) or HTTPStatus(status).phrase
