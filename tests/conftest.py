"""Shared fixtures: a controllable clock, an app built from a config text, and a /metrics reader.

The tests mirror the package's layers (tests/security, tests/stats, tests/ingest, tests/engine, tests/serve),
with the bundle's checks in tests/bundle and the end-to-end runs of real processes in tests/e2e, which are
marked ``slow``: ``make test`` runs everything, ``make test-fast`` (``-m "not slow"``) leaves them out.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.config import parse_config
from exporter.serve.app import create_app

E2E = Path(__file__).resolve().parent / "e2e"


def pytest_collection_modifyitems(items):
    for item in items:
        if E2E in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.slow)


T0 = 1_800_000_000.0  # a fixed start time, so window buckets are reproducible

BASIC_CONFIG = """
windows: ["5m", "1h"]
models:
  - name: churn
    task: binary
    classes: ["stay", "churn"]
    positive_class: "churn"
    features:
      - {name: tenure, type: numeric}
      - {name: plan, type: categorical}
  - name: iris
    task: multiclass
    classes: [setosa, versicolor, virginica]
  - name: price
    task: regression
"""


class Clock:
    """Time that moves only when a test says so."""

    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Metrics:
    """Samples of one scrape, looked up by name and labels."""

    def __init__(self, text: str):
        self.text = text
        self.samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]

    def get(self, name: str, **labels) -> float | None:
        found = [
            s.value for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        if len(found) > 1:
            raise AssertionError(f"{name}{labels} matches {len(found)} samples; name more labels")
        return found[0] if found else None

    def all(self, name: str, **labels) -> list:
        return [s for s in self.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def series(self, prefix: str = "mlmon_") -> dict:
        return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in self.samples if s.name.startswith(prefix)}


def make_app(config_text: str = BASIC_CONFIG, clock: Clock | None = None):
    clock = clock or Clock()
    app = create_app(parse_config(textwrap.dedent(config_text)), clock=clock)
    return app, clock


@pytest.fixture(autouse=True)
def _private_workdir(tmp_path, monkeypatch):
    """Run every test in its own directory: the default storage.path ("data") lands there, not in the repo."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(clock):
    return make_app(BASIC_CONFIG, clock)[0]


@pytest.fixture
def client(app):
    return app.test_client()


def scrape(client) -> Metrics:
    response = client.get("/metrics")
    assert response.status_code == 200
    return Metrics(response.get_data(as_text=True))
