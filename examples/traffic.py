"""Simulated users and ground truth for the example model server: the demo's story, phase by phase.

Users call POST /predict/<model> at a steady rate; the truth comes back later through
POST /feedback/<model>, after a random delay, and a share of it never comes. Phases (see scenario.py):
healthy, covariate drift, concept drift, recovery (a version trained on recent data is deployed).

Run: python examples/traffic.py --model-server http://127.0.0.1:5000 --duration 600
     (--duration 0 cycles through the phases forever; --speed N compresses time N-fold)
"""

from __future__ import annotations

import argparse
import heapq
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import scenario  # noqa: E402

log = logging.getLogger("traffic")
MAX_RATE = 200.0  # predictions per second per model, whatever the speed


class Traffic:
    """Drives the model server through the phases; call :meth:`run`, or :meth:`stop` from another thread."""

    def __init__(
        self,
        model_server: str,
        *,
        duration: float = 600.0,
        speed: float = 1.0,
        rate: float = 5.0,
        label_delay: float = 30.0,
        label_loss: float = 0.1,
        seed: int = 0,
        on_phase: Callable[[str, int], None] | None = None,
        linger: bool = False,
    ):
        self.url = model_server.rstrip("/")
        self.duration = duration
        self.linger = linger  # with a duration: the last phase's traffic goes on until stop()
        self.phase_seconds = (duration / len(scenario.PHASES)) if duration > 0 else 240.0 / speed
        self.rate = min(rate * speed, MAX_RATE)
        self.label_delay = label_delay / speed
        self.label_loss = label_loss
        self.rng = np.random.default_rng(seed)
        self.worlds = {name: scenario.load(name, seed) for name in scenario.MODELS}
        self.on_phase = on_phase or (lambda phase, cycle: None)
        self.phase = scenario.PHASES[0]
        self.stopped = threading.Event()
        self.sent = 0
        self.errors = 0
        # Labels waiting for their time, per model: (due, seq, id, label). Each model has its own sender: one
        # for all three fell behind the traffic on a busy 2-core machine (labels arriving a phase late).
        self._labels: dict[str, list[tuple[float, int, str, object]]] = {name: [] for name in self.worlds}
        self._labels_lock = threading.Lock()
        self._seq = 0

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        workers = [threading.Thread(target=self._users, args=(name,), daemon=True) for name in self.worlds]
        workers += [threading.Thread(target=self._truth, args=(name,), daemon=True) for name in self.worlds]
        for w in workers:
            w.start()
        cycle = 0
        try:
            while not self.stopped.is_set():
                for phase in scenario.PHASES:
                    # A phase that deploys a version starts once it serves (retraining three models takes
                    # seconds on a busy machine): its announcement and its traffic wait for the deploy.
                    if phase == "recovery":
                        self._deploy(f"v{2 * cycle + 2}", recent=True)
                    elif phase == "healthy" and cycle > 0:
                        self._deploy(f"v{2 * cycle + 1}", recent=False)
                    self.on_phase(phase, cycle)
                    self.phase = phase
                    if self.stopped.wait(self.phase_seconds):
                        return
                cycle += 1
                if self.duration > 0:
                    if self.linger:
                        self.stopped.wait()
                    return
        finally:
            self.stopped.set()
            for w in workers:
                w.join(5)

    def _users(self, name: str) -> None:
        world = self.worlds[name]
        session = requests.Session()
        rng = np.random.default_rng(self.rng.integers(1 << 31))
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self.stopped.is_set():
            X, y = scenario.sample(world, self.phase, 1, rng)
            body: dict = {"features": {f: round(float(v), 5) for f, v in zip(world.features, X[0])}}
            if world.task == "binary":  # who the patient is: not an input of the model, watched for fairness
                body["attributes"] = {"age_group": str(scenario.age_groups(world, self.phase, X, rng)[0])}
            try:
                r = session.post(f"{self.url}/predict/{name}", json=body, timeout=5)
                r.raise_for_status()
                self.sent += 1
                if rng.uniform() >= self.label_loss:
                    truth = float(y[0]) if world.task == "regression" else str(y[0])
                    self._later(name, r.json()["id"], truth, rng.exponential(self.label_delay))
            except requests.RequestException:
                self.errors += 1
            next_at += interval
            self.stopped.wait(max(0.0, next_at - time.monotonic()))

    def _later(self, name: str, request_id: str, label, delay: float) -> None:
        with self._labels_lock:
            self._seq += 1
            heapq.heappush(self._labels[name], (time.monotonic() + delay, self._seq, request_id, label))

    def _truth(self, name: str) -> None:
        """Send the labels of model ``name`` when they are due."""
        session = requests.Session()
        waiting = self._labels[name]
        while not self.stopped.wait(0.05):
            now = time.monotonic()
            due = []
            with self._labels_lock:
                while waiting and waiting[0][0] <= now:
                    due.append(heapq.heappop(waiting))
            for _, _, request_id, label in due:
                try:
                    session.post(f"{self.url}/feedback/{name}", json={"id": request_id, "label": label}, timeout=5)
                except requests.RequestException:
                    self.errors += 1

    def _deploy(self, version: str, recent: bool) -> None:
        """Retrain every model on recent data (after the concept drift) or on the original data."""
        for name, world in self.worlds.items():
            if recent:
                X, y = scenario.retraining_set(world, self.rng)
            else:
                X, y = world.X_train, world.y_train
            body = {"version": version, "X": X.tolist(), "y": y.tolist()}
            try:
                requests.post(f"{self.url}/deploy/{name}", json=body, timeout=60).raise_for_status()
            except requests.RequestException as exc:
                log.warning("deploying %s %s failed: %s", name, version, exc)


def wait_for(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout:.0f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Simulated users and ground truth for the example model server.")
    parser.add_argument("--model-server", default=os.environ.get("MODEL_SERVER_URL", "http://127.0.0.1:5000"))
    parser.add_argument("--duration", type=float, default=600, help="seconds for the four phases; 0: forever")
    parser.add_argument("--speed", type=float, default=1.0, help="time compression: rate x speed, delays / speed")
    parser.add_argument("--rate", type=float, default=5.0, help="predictions per second per model (at speed 1)")
    parser.add_argument("--label-delay", type=float, default=30.0, help="mean seconds before a label arrives")
    parser.add_argument("--label-loss", type=float, default=0.1, help="share of labels that never arrive")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    wait_for(f"{args.model_server.rstrip('/')}/healthz")
    traffic = Traffic(
        args.model_server,
        duration=args.duration,
        speed=args.speed,
        rate=args.rate,
        label_delay=args.label_delay,
        label_loss=args.label_loss,
        seed=args.seed,
        on_phase=lambda phase, cycle: log.info("phase %s (cycle %d)", phase, cycle),
    )
    try:
        traffic.run()
    except KeyboardInterrupt:
        traffic.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
