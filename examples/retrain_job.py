"""A stand-in retraining job for `mlmon retrain-hook` (docs/retraining.md): it only says what it was asked.

The hook runs a command without a shell and passes the alert in its environment: MLMON_MODEL, MLMON_VERSION,
MLMON_ALERTNAME, MLMON_SEVERITY, MLMON_REQUEST_ID and MLMON_ALERT_JSON (the whole alert). A real job starts
the training pipeline (submits a batch job, triggers a DAG) and exits: the hook waits for it, within its timeout.
Exit 0 means the request was made; any other exit code is audited as failed.

Run: mlmon retrain-hook -- python examples/retrain_job.py
"""

from __future__ import annotations

import json
import os
import sys


def main() -> int:
    model, version = os.environ.get("MLMON_MODEL"), os.environ.get("MLMON_VERSION", "")
    if not model:
        print("retrain_job.py: MLMON_MODEL is not set; mlmon retrain-hook runs this script", file=sys.stderr)
        return 2
    alert = json.loads(os.environ.get("MLMON_ALERT_JSON", "{}"))
    summary = alert.get("annotations", {}).get("summary", "")
    print(
        f"retraining requested: model {model} version {version or '(none)'}, alert "
        f"{os.environ.get('MLMON_ALERTNAME', '')} ({summary}), request {os.environ.get('MLMON_REQUEST_ID', '')}; "
        "this stand-in starts nothing: put your pipeline's trigger in the hook's config"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
