"""docs/metrics.md's count of series per model version, against a real scrape of examples/config.yml with every
window, class pair, histogram bucket and reachable reliability bin filled."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

from tests.conftest import make_app, scrape

ROOT = Path(__file__).resolve().parents[2]


def documented() -> dict[str, int]:
    text = (ROOT / "docs/metrics.md").read_text()
    found = re.search(
        r"`churn` \(C = 2\) (\d+) series per version, `iris`\s+\(C = 3\) (\d+), `diabetes` \(B = 9\) (\d+)", text
    )
    assert found, "the example counts moved in docs/metrics.md"
    return dict(zip(("churn", "iris", "diabetes"), map(int, found.groups())))


def test_series_per_version_match_the_documented_bound():
    app, clock = make_app((ROOT / "examples/config.yml").read_text())
    client = app.test_client()
    rng = random.Random(0)
    classes = {"churn": ["stay", "churn"], "iris": ["setosa", "versicolor", "virginica"]}
    predictions, labels = [], []
    for i in range(3000):
        for model in ("churn", "iris", "diabetes"):
            item = {"model": model, "id": f"{model}{i}", "latency_seconds": rng.random() * 3}
            if model == "diabetes":
                item["prediction"] = rng.uniform(0, 400)
                label = rng.uniform(0, 400)
            else:
                weights = [rng.random() ** 3 for _ in classes[model]]
                scores = {c: w / sum(weights) for c, w in zip(classes[model], weights)}
                item["prediction"] = max(scores, key=scores.get)
                if model == "churn":
                    item["score"] = scores["churn"]
                else:
                    item["scores"] = scores
                label = rng.choice(classes[model])
            predictions.append(item)
            labels.append({"model": model, "id": item["id"], "label": label})
    for start in range(0, len(predictions), 500):
        batch = {"predictions": predictions[start : start + 500]}
        assert client.post("/api/v1/predictions", json=batch).status_code == 202
    for start in range(0, len(labels), 500):
        clock.now += 60  # label delays across the histogram's buckets
        assert client.post("/api/v1/labels", json={"labels": labels[start : start + 500]}).status_code == 202
    counts = Counter(
        s.labels["model"]
        for s in scrape(client).samples
        if s.name.startswith("mlmon_") and "version" in s.labels and "model" in s.labels and "feature" not in s.labels
    )
    # The bound counts 10 reliability bins per window; a top-label confidence is at least 1/C, so a binary
    # model fills bins 0.6 to 1.0 only (5 of 10; bin 0.5 at exactly 0.5) and a 3-class one 0.4 to 1.0 (7):
    # 2 families x 3 windows.
    unreachable = {"churn": 2 * 3 * 5, "iris": 2 * 3 * 3, "diabetes": 0}
    assert {m: counts[m] + unreachable[m] for m in unreachable} == documented()
