"""Resident memory of one model's state as the events in its window grow (one fresh process fills the
window and measures it at each size on the way).

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


def measure(sizes: list[int], with_ids: bool) -> list[dict]:
    """One model's state as its window fills, measured when it holds each of ``sizes`` events."""
    import gc
    import tempfile
    import tracemalloc

    from exporter.config import parse_config
    from exporter.engine.state import ModelState
    from exporter.ingest.validation import Validator
    from exporter.stats import reference

    # As mlmon is normally run: a reference with the model's scores and labels, so that drift and the
    # estimated quality are on (their arrays are in every window bucket either way).
    config = parse_config(config_text(models=1, features=30, reference_dir=tempfile.mkdtemp(), scored_reference=True))
    now = [1_800_000_000.0]
    validator = Validator(config, lambda: now[0])
    batch = validator.predictions({"predictions": events(BATCH, labelled=not with_ids, ids=with_ids)})
    profiles = list(reference.load_all(config).values())  # read and fitted once, as at the exporter's start
    gc.collect()
    before = rss()
    tracemalloc.start()
    state = ModelState(config.models[0], config)
    for profile in profiles:
        state.set_reference(profile)
    step = 3000.0 / max(1, max(sizes) // BATCH)  # spread the events over 50 minutes: inside the 1h and 1d windows
    rows, fed, r = [], 0, 0
    for n in sorted(sizes):
        while fed < n:
            now[0] += step
            for i, e in enumerate(batch):
                e.timestamp = now[0]
                if with_ids:
                    e.id = f"{r}-{i}"
            state.add_predictions(batch, now[0])
            fed += BATCH
            r += 1
        gc.collect()
        after = rss()
        traced = tracemalloc.get_traced_memory()[0]
        snap = state.snapshot(now[0])
        rows.append(
            {
                "events": fed,
                "rss_growth_bytes": after - before,
                "traced_bytes": traced,
                "ring_bytes": sum(r.nbytes() for v in state.versions.values() for r in v.rings),
                "labeled_in_1h": int(snap.versions[0].windows["1h"]["labeled"]),
                "pending": snap.pending_predictions,
                "evicted": snap.dropped["prediction", "evicted"],
            }
        )
    tracemalloc.stop()
    return rows


def run(sizes=(10_000, 100_000, 1_000_000), with_ids: bool = False) -> list[dict]:
    """One fresh process fills the window and measures it at each size on the way."""
    cmd = [sys.executable, os.path.abspath(__file__), "--sizes", ",".join(map(str, sizes))]
    cmd += ["--ids"] if with_ids else []
    return json.loads(subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout)


if __name__ == "__main__":
    if "--sizes" in sys.argv:
        sizes = [int(n) for n in sys.argv[sys.argv.index("--sizes") + 1].split(",")]
        print(json.dumps(measure(sizes, "--ids" in sys.argv)))
    else:
        for row in run():
            print(row)
        for row in run((50_000, 100_000, 500_000), with_ids=True):
            print(row)
