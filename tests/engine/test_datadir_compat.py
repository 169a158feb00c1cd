"""A data directory written by an earlier release restarts with its windows, counters and waiting predictions.

Each tests/fixtures/datadir-<version>/ holds the database a release left behind after ``kill -9`` (a snapshot and
a journal after it) and every series that release published at that moment (tests/fixtures/make_datadir.py).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.conftest import Clock
from tests.engine.test_durability import build, mlmon_series

DATA = Path(__file__).resolve().parents[1] / "fixtures"
RELEASES = sorted(p.name for p in DATA.glob("datadir-*"))


@pytest.mark.parametrize("release", RELEASES)
def test_a_data_directory_of_an_earlier_release_restarts_with_its_windows(tmp_path, release):
    here = DATA / release
    (tmp_path / "mlmon.db").write_bytes(gzip.decompress((here / "mlmon.db.gz").read_bytes()))
    expected = json.loads((here / "expected.json").read_text())
    clock = Clock(expected["now"])
    app = build(tmp_path, clock)
    restored = app.extensions["mlmon"].restored
    assert restored["models_restored"] == 2 and restored["models_reset"] == []
    assert restored["replayed"] > 0 and restored["skipped"] == 0
    series = {(name, tuple(sorted(labels.items()))): value for name, labels, value in expected["series"]}
    got = without_new_empty_labels(mlmon_series(app), series)
    # Every series of the release is back with its value; families, alert thresholds and reason codes added
    # since may stand beside them (a new threshold is a new series of mlmon_alert_threshold, with its default
    # value; a new reason code a new series of mlmon_ingest_errors_total, at 0).
    known = {name for name, _ in series}
    thresholds = {dict(labels)["threshold"] for name, labels in series if name == "mlmon_alert_threshold"}
    reasons = {dict(labels)["reason"] for name, labels in series if name == "mlmon_ingest_errors_total"}
    added = {k for k in got if k[0] == "mlmon_alert_threshold" and dict(k[1])["threshold"] not in thresholds}
    added |= {k for k in got if k[0] == "mlmon_ingest_errors_total" and dict(k[1])["reason"] not in reasons}
    assert {k for k in got if k[0] in known} - added == series.keys()
    assert {k: got[k] for k in series} == pytest.approx(series, rel=1e-12, abs=1e-12)

    # A label for a prediction that waited across the restart still joins.
    client = app.test_client()
    before = got[("mlmon_labels_total", (("model", "churn"), ("version", "v1")))]
    label = {"model": "churn", "id": "c299", "label": "churn"}
    assert client.post("/api/v1/labels", json={"labels": [label]}).status_code == 202
    after = mlmon_series(app)[("mlmon_labels_total", (("model", "churn"), ("version", "v1")))]
    assert after == before + 1


def without_new_empty_labels(got: dict, released: dict) -> dict:
    """The series with the labels added since the release left out where they are empty (as the release's data
    says nothing of them: the registry labels of mlmon_model_info)."""
    names: dict[str, set[str]] = {}
    for name, labels in released:
        names.setdefault(name, set()).update(k for k, _ in labels)
    out = {}
    for (name, labels), value in got.items():
        if name in names:
            labels = tuple((k, v) for k, v in labels if k in names[name] or v != "")
        out[name, labels] = value
    return out


def test_there_is_a_data_directory_of_the_current_release():
    from exporter import __version__

    assert f"datadir-{__version__}" in RELEASES, "run python -m tests.fixtures.make_datadir for this release"
