"""Links from model versions to the model registry: run id, model URI, registered name and version, and the URL
of the run, published as labels of mlmon_model_info (docs/registry.md).

A version's entry comes from its predictions (their ``registry`` object, the latest wins), else from the config
(``models[].registry.versions``); the model's ``registry.name`` fills a missing name, and a name with a version
gives the model URI ``models:/<name>/<version>``. What is still missing (the run id of a registered version, the
experiment of a run when the URL template needs it) is looked up in MLflow (``registry.tracking_uri``) by a
thread of its own: once per registered version and per run, never on the ingest or the scrape path, which only
read the results. A failed look-up is logged, counted, and tried again later with a growing delay.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from urllib.parse import quote

from exporter.config import ModelConfig, Registry, RegistryInfo

log = logging.getLogger("mlmon.registry")

LOOKUP_EVERY = 5.0  # seconds between two looks for versions whose links are incomplete
RETRY_FIRST = 15.0  # seconds before a failed look-up is tried again; doubled at each failure...
RETRY_MAX = 900.0  # ...up to this

EMPTY = ("", "", "", "", "")  # run_id, model_uri, registry_name, registry_version, run_url
_NOTHING = RegistryInfo()

# A look-up: ("model_version", name, version) -> {"run_id"}; ("run", run_id) -> {"experiment_id"}.
Query = tuple[str, ...]


def declared(model: ModelConfig, version: str, sent: RegistryInfo | None) -> RegistryInfo:
    """What is said of a version without asking the registry: the entry its predictions sent, else the config's,
    with the model's registered name where the entry names none, and the model URI of a registered version."""
    info = sent if sent is not None else model.registry.get(version, _NOTHING)
    if not info.name and model.registry_name:
        info = dataclasses.replace(info, name=model.registry_name)
    if not info.model_uri and info.name and info.version:
        info = dataclasses.replace(info, model_uri=f"models:/{info.name}/{info.version}")
    return info


@dataclasses.dataclass
class _Lookup:
    found: dict[str, str] | None = None
    failures: int = 0
    next_try: float = 0.0


class MlflowLookup:
    """Look-ups with the MLflow client (``mlflow-skinny``, the ``mlflow`` extra), imported on first use, in the
    look-up thread."""

    def __init__(self, tracking_uri: str, timeout_seconds: float):
        self.tracking_uri = tracking_uri
        self.timeout = timeout_seconds
        self._client = None

    def client(self):
        if self._client is None:
            # mlmon retries a failed look-up itself, later: one attempt per look-up, within the timeout, rather
            # than the MLflow client's own retries (7, with backoff: minutes). Variables set by the operator win.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(self.timeout))))
            try:
                from mlflow.tracking import MlflowClient
            except ImportError as exc:
                raise RuntimeError("the MLflow client is not installed: pip install 'mlmon[mlflow]'") from exc
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def __call__(self, query: Query) -> dict[str, str]:
        kind, *args = query
        if kind == "model_version":
            name, version = args
            return {"run_id": self.client().get_model_version(name, version).run_id or ""}
        (run_id,) = args
        return {"experiment_id": str(self.client().get_run(run_id).info.experiment_id)}


class RegistryLinks:
    """The registry labels of every model version, and the thread that looks up what they lack.

    ``fetch`` does one look-up (a :data:`Query`) and raises on failure; by default the MLflow client's, when
    ``registry.tracking_uri`` is set. Tests call :meth:`run_once` with their own clock instead of the thread.
    """

    def __init__(
        self,
        settings: Registry,
        models: Iterable,
        clock: Callable[[], float] = time.time,
        fetch: Callable[[Query], dict[str, str]] | None = None,
    ):
        self.settings = settings
        self.models = list(models)  # exporter.engine.state.ModelState
        self.clock = clock
        if fetch is None and settings.tracking_uri:
            fetch = MlflowLookup(settings.tracking_uri, settings.lookup_timeout_seconds)
        self.fetch = fetch
        self.fields = settings.run_url_fields
        self.lock = threading.Lock()
        self.lookups: dict[Query, _Lookup] = {}
        self.attempts = 0  # look-ups made
        self.failures = 0  # look-ups that failed
        self.thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        """Whether look-ups are made (and counted)."""
        return self.fetch is not None

    # -- read by the scrape ----------------------------------------------------------------------------

    def labels(self, model: ModelConfig, version: str, sent: RegistryInfo | None) -> tuple[str, str, str, str, str]:
        """run_id, model_uri, registry_name, registry_version and run_url of a version ("" where unknown)."""
        info = declared(model, version, sent)
        if info == _NOTHING:
            return EMPTY
        with self.lock:
            run_id, experiment_id = self._resolve(info)
        values = {
            "model": model.name,
            "version": version,
            "run_id": run_id,
            "experiment_id": experiment_id,
            "model_uri": info.model_uri,
            "registry_name": info.name,
            "registry_version": info.version,
        }
        run_url = ""
        if self.fields and all(values[f] for f in self.fields):
            run_url = self.settings.run_url_template.format(**{f: quote(values[f], safe="") for f in self.fields})
        return run_id, info.model_uri, info.name, info.version, run_url

    def _resolve(self, info: RegistryInfo) -> tuple[str, str]:
        """The run id (as declared, else as looked up) and its experiment (looked up), under the lock."""
        run_id = info.run_id
        if not run_id and info.name and info.version:
            found = self.lookups.get(("model_version", info.name, info.version))
            run_id = found.found["run_id"] if found is not None and found.found else ""
        experiment = self.lookups.get(("run", run_id)) if run_id else None
        return run_id, (experiment.found["experiment_id"] if experiment is not None and experiment.found else "")

    # -- the look-ups ------------------------------------------------------------------------------------

    def _wanted(self) -> set[Query]:
        """The look-ups the versions kept now need."""
        wanted: set[Query] = set()
        if not self.enabled:
            return wanted
        for state in self.models:
            with state.lock:
                versions = [(v.version, v.registry) for v in state.versions.values()]
            for version, sent in versions:
                info = declared(state.model, version, sent)
                if not info.run_id and info.name and info.version:
                    wanted.add(("model_version", info.name, info.version))
                if "experiment_id" in self.fields:
                    with self.lock:
                        run_id, _ = self._resolve(info)
                    if run_id:
                        wanted.add(("run", run_id))
        return wanted

    def run_once(self) -> int:
        """Make the look-ups that are due (new ones, and failed ones whose delay has passed); return how many."""
        made = 0
        for _ in range(2):  # a run id found by the first pass may need its run's experiment
            wanted = self._wanted()
            now = self.clock()
            with self.lock:
                for query in set(self.lookups) - wanted:  # versions retired, or entries that changed
                    del self.lookups[query]
                due = [q for q in wanted if _due(self.lookups.get(q), now)]
            for query in sorted(due):
                self._lookup(query)
            made += len(due)
            if not due:
                break
        return made

    def _lookup(self, query: Query) -> None:
        try:
            found = self.fetch(query)  # type: ignore[misc]
        except Exception as exc:  # unreachable, unknown to the registry, refused...: try again later
            with self.lock:
                entry = self.lookups.setdefault(query, _Lookup())
                entry.failures += 1
                delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (entry.failures - 1))
                entry.next_try = self.clock() + delay
                self.attempts += 1
                self.failures += 1
            log.warning(
                "registry lookup failed",
                extra={"fields": {"lookup": "/".join(query), "error": _first_line(exc), "retry_in": delay}},
            )
            return
        with self.lock:
            self.lookups[query] = _Lookup(found)
            self.attempts += 1
        log.info("registry lookup", extra={"fields": {"lookup": "/".join(query), **found}})

    def start(self, stop: threading.Event, every: float = LOOKUP_EVERY) -> None:
        """Look up in a daemon thread until ``stop`` is set (a look-up under way is not waited for)."""
        if not self.enabled:
            return

        def loop() -> None:
            while not stop.is_set():
                try:
                    self.run_once()
                except Exception:  # a bug in a pass must not end the look-ups
                    log.exception("registry lookup pass failed")
                stop.wait(every)

        self.thread = threading.Thread(target=loop, name="mlmon-registry", daemon=True)
        self.thread.start()


def _due(lookup: _Lookup | None, now: float) -> bool:
    return lookup is None or (lookup.found is None and lookup.next_try <= now)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"
