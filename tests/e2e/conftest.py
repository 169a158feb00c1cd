"""One demo run shared by the live tests of the dashboards and of the report: it reaches the state they need
(labels joined, drift, v2 deployed) in about 40 s, then lingers in its last phase. The tests that use it run
one after the other, and it stops as soon as the last of them is done, so that it never competes for the CPU
with the tests that time their own runs."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.demo_run import DEADLINE, Demo, ready

_running: list[Demo] = []


@pytest.fixture(scope="session")
def demo():
    if not Path("/usr/bin/prometheus").exists():
        pytest.skip("Prometheus is not installed (apt-get install prometheus)")
    d = Demo(duration=32, linger=True)
    _running.append(d)
    try:
        start = time.monotonic()
        while not (d.prometheus and ready(d.prometheus)):
            assert d.proc.poll() is None, "the demo exited early:\n" + "\n".join(d.lines)
            assert time.monotonic() - start < DEADLINE, "no data in time:\n" + "\n".join(d.lines)
            time.sleep(1)
        # From here on the demo only has to keep going: the tests' own work (rendering a report, a browser)
        # goes first on the two cores.
        for proc in [psutil.Process(d.proc.pid), *psutil.Process(d.proc.pid).children(recursive=True)]:
            try:
                proc.nice(15)
            except psutil.Error:
                pass
        yield d
    finally:
        d.stop()


def _uses_demo(item) -> bool:
    return "demo" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items):
    # The demo's users together, where the first of them was (a stable sort keeps each module's order).
    users = [i for i, item in enumerate(items) if _uses_demo(item)]
    if users:
        first = users[0]
        items[:] = sorted(items, key=lambda item: 1 if _uses_demo(item) else 0 if items.index(item) < first else 2)


def pytest_runtest_teardown(item, nextitem):
    if _running and _uses_demo(item) and (nextitem is None or not _uses_demo(nextitem)):
        _running.pop().stop()
