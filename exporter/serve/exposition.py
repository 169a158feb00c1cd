"""/metrics: the Prometheus text format (0.0.4) written fast, and the WSGI app that serves it.

The one place that writes the exposition format, as client_python's ``exposition`` module is for
client_python: the families of exporter/serve/collector.py keep their samples as rows (:class:`GaugeFamily`,
:class:`CounterFamily`), and :func:`text_exposition` writes them, byte for byte what
``prometheus_client.generate_latest`` would.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import parse_qs

import orjson
from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.openmetrics.exposition import escape_label_name, escape_metric_name
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString


class _Rows:
    """A family whose samples are kept as (label values, value) rows; client_python's Samples (a dict of
    labels each) are made only when something other than :func:`text_exposition` reads ``samples`` (the
    OpenMetrics format, a ``name[]`` selection). Building those dicts was about a sixth of a scrape."""

    _suffix = ""

    def add_metric(self, labels, value, timestamp=None) -> None:
        if timestamp is not None:
            raise ValueError("mlmon's families take no timestamps")
        self._rows.append((tuple(labels), value))

    @property
    def samples(self) -> list[Sample]:
        name, names = self.name + self._suffix, self._labelnames
        return [Sample(name, dict(zip(names, values)), value, None) for values, value in self._rows]

    @samples.setter
    def samples(self, samples: list) -> None:  # Metric.__init__ sets an empty list
        if samples:
            raise ValueError("add samples with add_metric")
        self._rows: list[tuple[tuple[str, ...], float]] = []


class GaugeFamily(_Rows, GaugeMetricFamily):
    """A gauge family with the samples of :class:`_Rows`."""


class CounterFamily(_Rows, CounterMetricFamily):
    """A counter family (samples named ``<name>_total``) with the samples of :class:`_Rows`."""

    _suffix = "_total"


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
                _write_rows(output, metric.name + metric._suffix, metric._labelnames, metric._rows)
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


# The head of each sample line ('name{a="x",b="y"}'), by sample name and label names, then by label values:
# the series of one scrape are nearly all those of the last one, so most heads are looked up, not written.
_HEADS: dict[tuple[str, tuple[str, ...]], dict[tuple[str, ...], str]] = {}


def _write_rows(output: list[str], name: str, label_names: tuple[str, ...], rows: list) -> None:
    """The sample lines of a :class:`_Rows` family, as ``text_exposition`` writes any sample."""
    heads = _HEADS.get((name, label_names))
    if heads is None:
        heads = _HEADS[(name, label_names)] = {}
    order = sorted(range(len(label_names)), key=label_names.__getitem__)  # generate_latest sorts the labels
    prefixes = [f'{escape_label_name(label_names[i])}="' for i in order]
    escaped_name = escape_metric_name(name)
    append = output.append
    for values, value in rows:
        head = heads.get(values)
        if head is None:
            if values:
                text = ",".join([f'{p}{_label_value(values[i])}"' for p, i in zip(prefixes, order)])
                head = f"{escaped_name}{{{text}}}"
            else:
                head = escaped_name
            heads[values] = head
        append(f"{head} {_number(value)}\n")
    if len(heads) > 2 * len(rows) + 1024:  # series that went away (a retired version, a new reference): forget
        heads.clear()


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
