"""The durable store in process: journal, snapshot, replay, Idempotency-Key and backpressure (429).

A "restart" here builds a second app on the same data directory without closing the first: what the
second one sees is exactly what a `kill -9` leaves on disk (every acknowledged request was committed
before it was answered). tests/e2e/test_crash_and_load.py does the same with a real process and a real SIGKILL.
"""

from __future__ import annotations

import json
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from exporter.config import parse_config
from exporter.serve.app import create_app
from tests.conftest import Clock, Metrics, scrape

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
windows: ["5m", "1h"]
storage: {{path: "{data}", checkpoint_interval: 1h}}
limits: {{ingest_queue_timeout: 100ms, max_pending_per_model: 500}}
models:
  - name: churn
    task: binary
    classes: ["stay", "churn"]
    positive_class: "churn"
    features:
      - {{name: tenure, type: numeric}}
      - {{name: plan, type: categorical}}
    segments: {{features: [plan]}}
  - name: price
    task: regression
"""


def build(data, clock: Clock, extra: str = ""):
    text = textwrap.dedent(CONFIG).format(data=data) + extra
    return create_app(parse_config(text), clock=clock)


def mlmon_series(app) -> dict:
    """Every mlmon_ sample of a scrape except the exporter's own request and storage bookkeeping."""
    series = scrape(app.test_client()).series()
    skip = ("mlmon_http_", "mlmon_storage_", "mlmon_collect_duration", "mlmon_idempotent", "mlmon_ingest_throttled")
    return {k: v for k, v in series.items() if not k[0].startswith(skip)}


def traffic(client, clock: Clock, rng: np.random.Generator, start: int, n: int, key_prefix: str | None = None):
    """n predictions in batches of 25 (ids start..start+n), and labels for about two thirds of earlier ids."""
    for b in range(start, start + n, 25):
        ids = range(b, min(b + 25, start + n))
        body = {
            "predictions": [
                {
                    "model": "churn",
                    "version": "v1" if i % 3 else "v2",
                    "id": f"c{i}",
                    "features": {"tenure": float(rng.normal(10, 3)), "plan": ["a", "b", "c"][i % 3]},
                    "prediction": ["stay", "churn"][i % 2],
                    "scores": {"churn": float(rng.uniform())},
                    "latency_seconds": float(rng.uniform(0, 0.2)),
                }
                for i in ids
            ]
            + [{"model": "price", "id": f"p{i}", "prediction": float(rng.normal(100, 5))} for i in ids]
        }
        headers = {"Idempotency-Key": f"{key_prefix}-p{b}"} if key_prefix else {}
        assert client.post("/api/v1/predictions", json=body, headers=headers).status_code == 202
        labels = [
            {"model": "churn", "id": f"c{i}", "label": ["stay", "churn"][int(rng.integers(2))]}
            for i in rng.choice(b + 25, size=12, replace=False)
        ] + [{"model": "price", "id": f"p{i}", "label": float(rng.normal(100, 5))} for i in ids if i % 3]
        headers = {"Idempotency-Key": f"{key_prefix}-l{b}"} if key_prefix else {}
        assert client.post("/api/v1/labels", json={"labels": labels}, headers=headers).status_code == 202
        clock.advance(7.0)


@pytest.mark.parametrize("checkpoint_at", [None, 200, 400])
def test_a_restart_restores_exactly_what_was_acknowledged(tmp_path, checkpoint_at):
    """Same traffic into one app that never restarts and one that restarts (snapshot + journal replay)."""
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    clock_a, clock_b = Clock(), Clock()
    reference = build(tmp_path / "a", clock_a, "")
    restarted = build(tmp_path / "b", clock_b)
    traffic(reference.test_client(), clock_a, rng_a, 0, 400)
    traffic(restarted.test_client(), clock_b, rng_b, 0, checkpoint_at or 400)
    if checkpoint_at:
        restarted.extensions["mlmon"].checkpoint()
        traffic(restarted.test_client(), clock_b, rng_b, checkpoint_at, 400 - checkpoint_at)
    before = mlmon_series(restarted)
    assert before == mlmon_series(reference)

    again = build(tmp_path / "b", clock_b)  # the first app was never closed: as after kill -9
    m = again.extensions["mlmon"]
    assert m.restored["snapshot_seq"] == (0 if checkpoint_at is None else 2 * checkpoint_at // 25)
    assert m.restored["replayed"] == 2 * (400 - (checkpoint_at or 0)) // 25
    assert m.restored["skipped"] == 0
    assert mlmon_series(again) == before

    # Labels that arrive after the restart still find the predictions sent before it.
    for app, clock in ((reference, clock_a), (again, clock_b)):
        labels = [{"model": "churn", "id": f"c{i}", "label": "churn"} for i in range(380, 400)]
        assert app.test_client().post("/api/v1/labels", json={"labels": labels}).status_code == 202
        clock.advance(30)
    assert mlmon_series(again) == mlmon_series(reference)


def test_close_checkpoints_so_the_next_start_replays_nothing(tmp_path):
    clock = Clock()
    app = build(tmp_path, clock)
    traffic(app.test_client(), clock, np.random.default_rng(1), 0, 100)
    before = mlmon_series(app)
    app.extensions["mlmon"].close()
    again = build(tmp_path, clock)
    assert again.extensions["mlmon"].restored["replayed"] == 0
    assert mlmon_series(again) == before


def test_the_journal_is_folded_into_the_snapshot_by_maintenance(tmp_path):
    clock = Clock()
    app = build(tmp_path, clock)
    m = app.extensions["mlmon"]
    traffic(app.test_client(), clock, np.random.default_rng(1), 0, 50)
    assert m.store.journal_bytes > 0
    m.maintain()  # the interval (1h) has not passed
    assert m.store.journal_bytes > 0
    clock.advance(3600)
    m.maintain()
    assert m.store.journal_bytes == 0
    assert scrape(app.test_client()).get("mlmon_storage_checkpoints_total") == 1


def test_idempotency_key_applies_a_body_once(tmp_path):
    clock = Clock()
    app = build(tmp_path, clock)
    client = app.test_client()
    body = {"predictions": [{"model": "price", "id": "x1", "prediction": 3.0}, {"model": "price", "prediction": 4}]}
    first = client.post("/api/v1/predictions", json=body, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    # Without an id the second prediction could not be recognised as a repeat: the key is what protects it.
    again = client.post("/api/v1/predictions", json=body, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json() == {"accepted": 2, "duplicates": 0}
    assert again.data == first.data and again.mimetype == first.mimetype == "application/json"  # byte for byte
    metrics = scrape(client)
    assert metrics.get("mlmon_predictions_total", model="price", version="default") == 2
    assert metrics.get("mlmon_idempotent_replays_total") == 1

    other = client.post(
        "/api/v1/predictions", json={"predictions": [body["predictions"][0]]}, headers={"Idempotency-Key": "k-1"}
    )
    assert other.status_code == 422
    assert other.get_json()["error"]["details"][0]["field"] == "Idempotency-Key"
    bad = client.post("/api/v1/predictions", json=body, headers={"Idempotency-Key": "a key with spaces"})
    assert bad.status_code == 400
    assert bad.get_json()["error"]["details"][0]["reason"] == "invalid_idempotency_key"
    metrics = scrape(client)
    assert metrics.get("mlmon_predictions_total", model="price", version="default") == 2
    assert metrics.get("mlmon_ingest_errors_total", model="", reason="invalid_idempotency_key") == 1

    # The key outlives a restart, and is forgotten after storage.idempotency_ttl (1d by default).
    restarted = build(tmp_path, clock).test_client()
    assert restarted.post("/api/v1/predictions", json=body, headers={"Idempotency-Key": "k-1"}).status_code == 202
    assert scrape(restarted).get("mlmon_predictions_total", model="price", version="default") == 2
    clock.advance(86401)
    restarted.application.extensions["mlmon"].maintain()
    restarted.post("/api/v1/predictions", json=body, headers={"Idempotency-Key": "k-1"})
    assert scrape(restarted).get("mlmon_predictions_total", model="price", version="default") == 3  # x1 is a dup


def test_a_rejected_body_keeps_no_key_and_no_journal(tmp_path):
    app = build(tmp_path, Clock())
    client = app.test_client()
    bad = {"predictions": [{"model": "price", "prediction": "high"}]}
    assert client.post("/api/v1/predictions", json=bad, headers={"Idempotency-Key": "k"}).status_code == 400
    assert app.extensions["mlmon"].store.journal_bytes == 0
    good = {"predictions": [{"model": "price", "prediction": 1.0}]}
    assert client.post("/api/v1/predictions", json=good, headers={"Idempotency-Key": "k"}).status_code == 202


def test_busy_ingest_answers_429_with_retry_after_and_keeps_nothing(tmp_path):
    app = build(tmp_path, Clock())
    m = app.extensions["mlmon"]
    client = app.test_client()
    body = {"predictions": [{"model": "price", "prediction": 1.0}]}
    held, done = threading.Event(), threading.Event()

    def other_request():  # holds the turn for longer than limits.ingest_queue_timeout
        with m.ingest_lock:
            held.set()
            done.wait(10)

    holder = threading.Thread(target=other_request)
    holder.start()
    held.wait(10)
    response = client.post("/api/v1/predictions", json=body, headers={"Idempotency-Key": "busy-1"})
    done.set()
    holder.join()
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert "limits.ingest_queue_timeout" in response.get_json()["error"]["message"]
    metrics = scrape(client)
    assert metrics.get("mlmon_ingest_throttled_total", reason="queue_timeout") == 1
    assert metrics.get("mlmon_predictions_total", model="price", version="default") is None
    assert m.store.journal_bytes == 0
    # The key was not kept: the retry is applied.
    assert client.post("/api/v1/predictions", json=body, headers={"Idempotency-Key": "busy-1"}).status_code == 202
    assert scrape(client).get("mlmon_predictions_total", model="price", version="default") == 1


def test_a_full_journal_throttles_until_a_checkpoint(tmp_path):
    clock = Clock()
    app = build(tmp_path, clock, "")
    m = app.extensions["mlmon"]
    client = app.test_client()
    m.store.journal.bytes = m.config.storage.max_journal_bytes + 1  # as if checkpoints had fallen behind
    body = {"predictions": [{"model": "price", "prediction": 1.0}]}
    response = client.post("/api/v1/predictions", json=body)
    assert response.status_code == 429 and response.headers["Retry-After"] == "1"
    assert m.checkpoint_due.is_set()
    m.maintain()
    assert client.post("/api/v1/predictions", json=body).status_code == 202
    assert scrape(client).get("mlmon_ingest_throttled_total", reason="journal_full") == 1


def test_concurrent_ingest_is_applied_in_journal_order(tmp_path):
    """Threads racing: the restarted state equals the live one (replay order = apply order)."""
    clock = Clock()
    app = build(tmp_path, clock, "")
    errors = []

    def worker(w: int) -> None:
        client = app.test_client()
        for b in range(20):
            preds = [{"model": "price", "id": f"w{w}-{b}-{i}", "prediction": float(i)} for i in range(10)]
            labels = [{"model": "price", "id": f"w{(w + 1) % 4}-{b}-{i}", "label": float(i + 1)} for i in range(10)]
            for path, body in (("predictions", {"predictions": preds}), ("labels", {"labels": labels})):
                r = client.post(f"/api/v1/{path}", json=body)
                if r.status_code != 202:
                    errors.append(r.status_code)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    before = mlmon_series(app)
    assert before[("mlmon_predictions_total", (("model", "price"), ("version", "default")))] == 800
    assert mlmon_series(build(tmp_path, clock)) == before


def test_a_reference_upload_survives_a_restart(tmp_path):
    clock = Clock()
    app = build(tmp_path, clock)
    rows = "tenure,plan\n" + "\n".join(f"{i % 17},{'abc'[i % 3]}" for i in range(300))
    r = app.test_client().put("/api/v1/models/churn/reference", data=rows, content_type="text/csv")
    assert r.status_code == 200
    traffic(app.test_client(), clock, np.random.default_rng(3), 0, 100)
    before = mlmon_series(app)
    assert before[("mlmon_reference_rows", (("model", "churn"),))] == 300
    assert mlmon_series(build(tmp_path, clock)) == before  # replayed from the journal
    app.extensions["mlmon"].checkpoint()
    assert mlmon_series(build(tmp_path, clock)) == before  # restored from the snapshot


def test_a_model_whose_shape_changed_starts_afresh_and_thresholds_do_not_matter(tmp_path):
    clock = Clock()
    app = build(tmp_path, clock)
    traffic(app.test_client(), clock, np.random.default_rng(3), 0, 50)
    app.extensions["mlmon"].checkpoint()
    thresholds = build(tmp_path, clock, "thresholds: {accuracy_min: 0.5}\n")
    m = thresholds.extensions["mlmon"]
    assert m.restored["models_restored"] == 2 and m.restored["models_reset"] == []
    text = (
        textwrap.dedent(CONFIG)
        .format(data=tmp_path)
        .replace("{name: plan, type: categorical}", "{name: plan2, type: categorical}")
    )
    reshaped = create_app(parse_config(text.replace("segments: {features: [plan]}", "")), clock=clock)
    m = reshaped.extensions["mlmon"]
    assert m.restored["models_reset"] == ["churn"]
    metrics = Metrics(reshaped.test_client().get("/metrics").get_data(as_text=True))
    assert metrics.get("mlmon_predictions_total", model="churn", version="v1") is None
    assert metrics.get("mlmon_predictions_total", model="price", version="default") == 50


def test_the_first_seen_time_of_a_version_survives_a_restart(tmp_path):
    clock = Clock()
    app = build(tmp_path, clock)
    client = app.test_client()
    body = {"model": "price", "version": "v1", "prediction": 1.0}
    assert client.post("/api/v1/predictions", json=body).status_code == 202
    first = clock()
    app.extensions["mlmon"].checkpoint()
    clock.advance(120)
    body["version"] = "v2"
    assert client.post("/api/v1/predictions", json=body).status_code == 202  # in the journal only
    clock.advance(600)
    restarted = build(tmp_path, clock)
    assert restarted.test_client().post("/api/v1/predictions", json=body).status_code == 202  # v2 again
    m = scrape(restarted.test_client())
    assert m.get("mlmon_model_version_first_seen_timestamp_seconds", model="price", version="v1") == first
    assert m.get("mlmon_model_version_first_seen_timestamp_seconds", model="price", version="v2") == first + 120


def test_a_version_restored_from_an_older_snapshot_has_no_first_seen_time(tmp_path):
    clock = Clock()
    app = build(tmp_path, clock)
    client = app.test_client()
    assert client.post("/api/v1/predictions", json={"model": "price", "prediction": 1.0}).status_code == 202
    m = app.extensions["mlmon"]
    for version in m.models["price"].versions.values():  # as a release that did not keep them wrote it
        del version.__dict__["first_seen"], version.__dict__["registry"]
    m.checkpoint()
    clock.advance(60)
    restarted = build(tmp_path, clock)
    restarted.test_client().post("/api/v1/predictions", json={"model": "price", "prediction": 1.0})
    # Unknown, and not stamped with a later prediction's time either.
    assert scrape(restarted.test_client()).all("mlmon_model_version_first_seen_timestamp_seconds") == []


def test_memory_backend_keeps_nothing_but_still_honours_keys(tmp_path):
    clock = Clock()
    text = textwrap.dedent(CONFIG).format(data=tmp_path).replace(f'path: "{tmp_path}"', "backend: memory")
    app = create_app(parse_config(text), clock=clock)
    client = app.test_client()
    body = {"predictions": [{"model": "price", "prediction": 1.0}]}
    for _ in range(2):
        assert client.post("/api/v1/predictions", json=body, headers={"Idempotency-Key": "m"}).status_code == 202
    assert scrape(client).get("mlmon_predictions_total", model="price", version="default") == 1
    assert not list(tmp_path.iterdir())


def test_the_same_key_twice_at_once_is_applied_once(tmp_path):
    """Two concurrent sends of one body with one key: one is applied, the other answered (202 or 409)."""
    app = build(tmp_path, Clock())
    m = app.extensions["mlmon"]
    body = {"predictions": [{"model": "price", "prediction": float(i)} for i in range(50)]}
    codes = []
    barrier = threading.Barrier(8)

    def send() -> None:
        barrier.wait()
        r = app.test_client().post("/api/v1/predictions", json=body, headers={"Idempotency-Key": "race"})
        codes.append(r.status_code)

    with m.ingest_lock:  # hold every request at the lock so that they all pass the first key lookup
        threads = [threading.Thread(target=send) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert set(codes) <= {202, 409} and codes.count(202) >= 1, codes
    assert scrape(app.test_client()).get("mlmon_predictions_total", model="price", version="default") == 50


def test_a_second_process_on_the_same_data_directory_is_refused(tmp_path):
    """Two exporters on one data directory would replay each other's journal: the second must not start."""
    import subprocess
    import sys

    from exporter.config import Storage
    from exporter.engine.storage import StorageError, Store

    data = tmp_path / "data"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from exporter.config import Storage; from exporter.engine.storage import Store; "
            f"s = Store(Storage(backend='sqlite', path={str(data)!r})); print('open', flush=True); "
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StorageError, match=rf"in use by another mlmon process \(pid {holder.pid}\)"):
            Store(Storage(backend="sqlite", path=str(data)))
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # The holder has exited: the kernel released its lock, and the directory opens (and reopens in-process).
    first = Store(Storage(backend="sqlite", path=str(data)))
    second = Store(Storage(backend="sqlite", path=str(data)))
    second.close()
    first.close()
    Store(Storage(backend="sqlite", path=str(data))).close()


def test_a_file_system_without_locks_still_opens_with_a_warning(tmp_path, monkeypatch, caplog):
    import errno

    from exporter.config import Storage
    from exporter.engine import storage

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(storage.fcntl, "flock", no_locks)
    with caplog.at_level("WARNING", logger="mlmon.storage"):
        store = storage.Store(Storage(backend="sqlite", path=str(tmp_path / "data")))
    store.close()
    assert "cannot lock the data directory" in caplog.text


def test_fairness_groups_and_the_reference_group_survive_a_restart(tmp_path):
    extra = """\
  - name: loan
    task: binary
    classes: [deny, grant]
    features: [{name: sex, type: categorical}]
    segments: {features: [sex], top: 1}
    fairness: {features: [sex], reference_group: {sex: male}}
"""
    clock = Clock()
    app = build(tmp_path, clock, extra)
    items = [
        {"model": "loan", "id": f"l{i}", "prediction": p, "features": {"sex": s}}
        for i, (s, p) in enumerate([("female", "grant"), ("x", "deny"), ("female", "deny")])
    ]
    assert app.test_client().post("/api/v1/predictions", json={"predictions": items}).status_code == 202
    app.extensions["mlmon"].checkpoint()
    w = {"model": "loan", "version": "default", "window": "5m", "feature": "sex"}
    assert scrape(app.test_client()).get("mlmon_fairness_selection_rate", group="female", **w) == 0.5
    before = mlmon_series(app)
    again = build(tmp_path, clock, extra)
    assert mlmon_series(again) == before
    # The reference group kept its own segment over the restore: it is not folded into "other".
    male = [{"model": "loan", "id": "l9", "prediction": "grant", "label": "grant", "features": {"sex": "male"}}]
    assert again.test_client().post("/api/v1/predictions", json={"predictions": male}).status_code == 202
    m = scrape(again.test_client())
    assert m.get("mlmon_fairness_selection_rate", group="male", **w) == 1
    assert m.get("mlmon_fairness_demographic_parity_difference", **w) == 0.5


def test_predictions_waiting_in_a_snapshot_join_their_labels_after_a_restart(tmp_path):
    """Large batches of new ids without labels, as rows and as columns, are decided by the join store at once;
    what they leave waiting goes into the snapshot and, after a restart from it, joins the labels as in an app
    that never restarted; a clean stop's snapshot (the form an earlier release reads) as well."""
    rows = {
        "predictions": [
            {"model": "churn", "id": f"r{i}", "prediction": "churn", "scores": {"churn": 0.75}} for i in range(100)
        ]
    }
    columns = {"model": "churn", "ids": [f"k{i}" for i in range(100)], "predictions": ["stay"] * 100}
    labels = {"labels": [{"model": "churn", "id": f"{p}{i}", "label": "churn"} for p in "rk" for i in range(100)]}
    apps = []
    for name in ("kept", "restarted", "stopped"):
        clock = Clock()
        app = build(tmp_path / name, clock)
        client = app.test_client()
        assert client.post("/api/v1/predictions", json=rows).status_code == 202
        body = json.dumps(columns)
        r = client.post("/api/v1/predictions", data=body, content_type="application/vnd.mlmon.columns+json")
        assert r.status_code == 202
        clock.advance(5)
        if name != "kept":
            if name == "restarted":
                app.extensions["mlmon"].checkpoint()
            else:
                app.extensions["mlmon"].close()
            app = build(tmp_path / name, clock)
            assert app.extensions["mlmon"].restored["replayed"] == 0
        assert app.test_client().post("/api/v1/labels", json=labels).status_code == 202
        apps.append(mlmon_series(app))
    kept, restarted, stopped = apps
    assert restarted == kept and stopped == kept
    assert kept[("mlmon_labels_total", (("model", "churn"), ("version", "default")))] == 200
