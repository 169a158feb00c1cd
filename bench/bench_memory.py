"""Resident memory of one model's state as the events in its window grow (each size in a fresh process).

Events are validated once and replayed with moving timestamps and clock, so the benchmark's own data
does not weigh on the figure. Run: python bench/bench_memory.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import ROOT, config_text, events  # noqa: E402

BATCH = 10_000


def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(n: int, with_ids: bool) -> dict:
    import gc
    import tracemalloc

    from exporter.config import parse_config
    from exporter.state import ModelState
    from exporter.validation import Validator

    config = parse_config(config_text(models=1, features=30))
    now = [1_800_000_000.0]
    validator = Validator(config, lambda: now[0])
    batch = validator.predictions({"predictions": events(BATCH, labelled=not with_ids, ids=with_ids)})
    gc.collect()
    before = rss()
    tracemalloc.start()
    state = ModelState(config.models[0], config)
    rounds = max(1, n // BATCH)
    step = 3000.0 / rounds  # spread the events over 50 minutes: inside the 1h and 1d windows
    for r in range(rounds):
        now[0] += step
        for i, e in enumerate(batch):
            e.timestamp = now[0]
            if with_ids:
                e.id = f"{r}-{i}"
        state.add_predictions(batch, now[0])
    gc.collect()
    after = rss()
    traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    snap = state.snapshot(now[0])
    ring_bytes = sum(r.nbytes() for v in state.versions.values() for r in v.rings)
    return {
        "events": rounds * BATCH,
        "rss_growth_bytes": after - before,
        "traced_bytes": traced,
        "ring_bytes": ring_bytes,
        "labeled_in_1h": int(snap.versions[0].windows["1h"]["labeled"]),
        "pending": snap.pending_predictions,
        "evicted": snap.dropped["prediction", "evicted"],
    }


def run(sizes=(10_000, 100_000, 1_000_000), with_ids: bool = False) -> list[dict]:
    out = []
    for n in sizes:
        cmd = [sys.executable, os.path.abspath(__file__), "--one", str(n)] + (["--ids"] if with_ids else [])
        out.append(json.loads(subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout))
    return out


if __name__ == "__main__":
    if "--one" in sys.argv:
        print(json.dumps(measure(int(sys.argv[sys.argv.index("--one") + 1]), "--ids" in sys.argv)))
    else:
        for row in run():
            print(row)
        for row in run((50_000, 100_000, 500_000), with_ids=True):
            print(row)
