"""Two exporter replicas sharing a real Redis: joins across replicas, exact sums, a replica killed mid-way.

A tiny load balancer in the test sends every request to a random replica and retries a failed one on
any replica with the same Idempotency-Key, as a client behind a real load balancer would.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

import pytest
import requests

from tests.e2e.test_crash_and_load import Exporter, total
from tests.engine.test_redis_joins import redis_url  # noqa: F401 - the fixture that starts redis-server

pytest.importorskip("redis")


class Balancer:
    def __init__(self, replicas: list[Exporter], seed: int):
        self.replicas = replicas
        self.rng = random.Random(seed)
        self.session = requests.Session()
        self.codes: Counter = Counter()

    def post(self, path: str, body: dict, key: str) -> dict:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            replica = self.rng.choice(self.replicas)
            try:
                r = self.session.post(
                    f"{replica.url}/api/v1/{path}", json=body, headers={"Idempotency-Key": key}, timeout=10
                )
            except requests.ConnectionError:
                self.codes["connection_error"] += 1
                time.sleep(0.02)
                continue
            self.codes[r.status_code] += 1
            if r.status_code == 202:
                return r.json()
            assert r.status_code in (409, 429, 503), (r.status_code, r.text)
            time.sleep(0.05)
        raise AssertionError(f"{path} {key} not accepted within 60 s")


def replicas(tmp_path, url: str, n: int = 2) -> list[Exporter]:
    out = []
    for i in range(n):
        d = tmp_path / f"replica{i}"
        d.mkdir()
        ex = Exporter(d, queue_timeout="100ms")
        ex.config.write_text(ex.config.read_text() + f"joins: {{backend: redis, redis_url: '{url}'}}\n")
        ex.start()
        out.append(ex)
    return out


def expected_sums(batches):
    """What the replicas must add up to: predictions, labels and churn outcomes of the whole traffic."""
    predicted = {
        p["id"]: p["prediction"] for kind, body in batches if kind == "predictions" for p in body["predictions"]
    }
    outcomes: Counter = Counter()
    labels = 0
    for kind, body in batches:
        if kind == "labels":
            for item in body["labels"]:
                labels += 1
                if item["model"] == "churn":
                    outcomes[item["label"], predicted[item["id"]]] += 1
    return len(predicted), labels, outcomes


def traffic(seed: int, n: int = 3000):
    """Batches of predictions and of labels for two thirds of them; a tenth of the labels come first."""
    rng = random.Random(seed)
    batches = []
    for b in range(0, n, 50):
        ids = range(b, b + 50)
        preds = []
        for i in ids:
            if i % 2:
                preds.append(
                    {
                        "model": "churn",
                        "id": f"c{i}",
                        "prediction": rng.choice(["stay", "churn"]),
                        "scores": {"churn": rng.random()},
                        "features": {"tenure": rng.gauss(10, 3), "plan": "a"},
                    }
                )
            else:
                preds.append({"model": "price", "id": f"p{i}", "prediction": rng.gauss(100, 5)})
        labelled = [p for p in preds if rng.random() < 2 / 3]
        labels = [
            {
                "model": p["model"],
                "id": p["id"],
                "label": rng.choice(["stay", "churn"]) if p["model"] == "churn" else rng.gauss(100, 5),
            }
            for p in labelled
        ]
        early = [x for x in labels if rng.random() < 0.1]
        late = [x for x in labels if x not in early]
        if early:
            batches.append(("labels", {"labels": early}))
        batches.append(("predictions", {"predictions": preds}))
        batches.append(("labels", {"labels": late}))
    return batches


def check_sums(reps: list[Exporter], batches) -> None:
    n_pred, n_labels, outcomes = expected_sums(batches)
    scrapes = [r.metrics() for r in reps]
    assert sum(total(m, "mlmon_predictions_total") for m in scrapes) == n_pred
    assert sum(total(m, "mlmon_labels_total") for m in scrapes) == n_labels
    assert sum(total(m, "mlmon_duplicates_total") for m in scrapes) == 0
    for (actual, predicted), n in outcomes.items():
        got = sum(total(m, "mlmon_outcomes_total", model="churn", actual=actual, predicted=predicted) for m in scrapes)
        assert got == n, (actual, predicted)
    # The join store is shared: every replica reports the same waiting counts.
    waiting = [total(m, "mlmon_pending_labels") for m in scrapes]
    assert waiting == [n_pred - n_labels] * len(reps)
    assert [total(m, "mlmon_early_labels") for m in scrapes] == [0] * len(reps)
    # Both replicas took part in the joins (the label of a prediction often landed on the other one).
    for m in scrapes:
        assert total(m, "mlmon_labels_total") > 0


def test_two_replicas_join_across_and_sum_exactly(tmp_path, redis_url):  # noqa: F811
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    reps = replicas(tmp_path, redis_url)
    try:
        batches = traffic(1)
        lb = Balancer(reps, 1)
        for i, (kind, body) in enumerate(batches):
            lb.post(kind, body, f"t1-{i}")
        check_sums(reps, batches)
        # A retry landing on the other replica is answered, not applied again.
        kind, body = batches[1]
        for r in reps:
            resp = requests.post(f"{r.url}/api/v1/{kind}", json=body, headers={"Idempotency-Key": "t1-1"}, timeout=10)
            assert resp.status_code == 202 and resp.headers["Idempotent-Replayed"] == "true"
        check_sums(reps, batches)
    finally:
        for r in reps:
            r.stop()


def test_a_replica_killed_mid_traffic_loses_and_doubles_nothing(tmp_path, redis_url):  # noqa: F811
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    reps = replicas(tmp_path, redis_url)
    try:
        batches = traffic(2, n=4000)
        lbs = [Balancer(reps, s) for s in range(4)]
        chunks = [batches[w::4] for w in range(4)]  # four concurrent senders, each in its own order

        def send(w: int) -> None:
            for i, (kind, body) in enumerate(chunks[w]):
                lbs[w].post(kind, body, f"t2-{w}-{i}")

        threads = [threading.Thread(target=send, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while total(reps[0].metrics(), "mlmon_predictions_total") < 600:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        reps[0].kill()
        time.sleep(0.3)
        reps[0].start()  # replays its journal; requests another replica took over meanwhile are skipped
        for t in threads:
            t.join(120)
        codes = sum((lb.codes for lb in lbs), Counter())
        assert codes["connection_error"] > 0 or codes[503] > 0, codes  # the kill did cut requests
        # Concurrent senders may deliver a label before its prediction: early labels are expected then, but
        # the sums of predictions, labels and outcomes are still exact.
        n_pred, n_labels, outcomes = expected_sums(batches)
        scrapes = [r.metrics() for r in reps]
        assert sum(total(m, "mlmon_predictions_total") for m in scrapes) == n_pred
        assert sum(total(m, "mlmon_duplicates_total") for m in scrapes) == 0
        joined = sum(total(m, "mlmon_labels_total") for m in scrapes)
        early = total(scrapes[0], "mlmon_early_labels")
        assert joined + early == n_labels
        assert total(scrapes[0], "mlmon_pending_labels") == n_pred - joined
    finally:
        for r in reps:
            r.stop()
