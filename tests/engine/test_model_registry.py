"""Registry links of model versions (exporter/engine/model_registry.py): from the config, from the predictions, and
looked up in MLflow off the ingest path, published as labels of mlmon_model_info with the run's URL.

The look-ups run by hand here (``links.run_once()``) with the test's clock, except where the thread itself is the
point; one test looks up a real MLflow file store (no server) written by the MLflow client.
"""

from __future__ import annotations

import socket
import textwrap
import threading

import orjson
import pytest

from exporter.config import parse_config
from exporter.engine import model_registry
from exporter.serve.app import create_app
from tests.conftest import Clock, scrape

TEMPLATE = "http://mlflow.example:5000/#/experiments/{experiment_id}/runs/{run_id}"
RUN = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
REGISTRY_LABELS = ("run_id", "model_uri", "registry_name", "registry_version", "run_url")


def config(registry: str = "", model_registry_text: str = "", storage: str = "{backend: memory}") -> str:
    text = f"""
    windows: ["5m"]
    storage: {storage}
    {registry}
    models:
      - name: churn
        task: binary
        classes: [stay, churn]
        {model_registry_text}
      - name: price
        task: regression
    """
    return textwrap.dedent(text)


def build(text: str, clock: Clock | None = None, fetch=None):
    clock = clock or Clock()
    app = create_app(parse_config(text), clock=clock)
    m = app.extensions["mlmon"]
    if fetch is not None:
        m.links.fetch = fetch
    return app, m, clock


def predict(app, version: str = "v1", registry: dict | None = None, model: str = "churn", fast: bool = True):
    item = {"model": model, "version": version, "prediction": "stay" if model == "churn" else 1.0}
    if registry is not None:
        item["registry"] = registry
    app.extensions["mlmon"].fast.enabled = fast
    r = app.test_client().post("/api/v1/predictions", data=orjson.dumps(item), content_type="application/json")
    app.extensions["mlmon"].fast.enabled = True
    return r


def info(app, version: str = "v1", model: str = "churn") -> dict[str, str]:
    (sample,) = scrape(app.test_client()).all("mlmon_model_info", model=model, version=version)
    return {k: sample.labels[k] for k in REGISTRY_LABELS}


# -- where the links come from ---------------------------------------------------------------------------


def test_versions_without_a_registry_entry_have_empty_registry_labels():
    app, _, _ = build(config())
    assert predict(app).status_code == 202
    assert info(app) == dict.fromkeys(REGISTRY_LABELS, "")


def test_the_config_entry_of_a_version_becomes_its_labels():
    app, _, _ = build(
        config(
            registry=f'registry: {{run_url_template: "{TEMPLATE.replace("{experiment_id}", "0")}"}}',
            model_registry_text="registry: {name: churn-clf, versions: {v1: {version: 3}, v2: {run_id: " + RUN + "}}}",
        )
    )
    predict(app, "v1")
    predict(app, "v2")
    predict(app, "v3")
    # v1: the model's registered name and the version give the model URI; its run is unknown (no look-up).
    assert info(app, "v1") == {
        "run_id": "",
        "model_uri": "models:/churn-clf/3",
        "registry_name": "churn-clf",
        "registry_version": "3",
        "run_url": "",
    }
    assert info(app, "v2") == {
        "run_id": RUN,
        "model_uri": "",
        "registry_name": "churn-clf",
        "registry_version": "",
        "run_url": f"http://mlflow.example:5000/#/experiments/0/runs/{RUN}",
    }
    # A version the config does not list still carries the model's registered name.
    assert info(app, "v3")["registry_name"] == "churn-clf"


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "general"])
def test_a_prediction_registry_entry_replaces_the_config_entry_and_the_latest_wins(fast):
    app, _, _ = build(config(model_registry_text="registry: {versions: {v1: {name: churn-clf, version: 3}}}"))
    sent = {"run_id": RUN, "model_uri": "runs:/" + RUN + "/model", "name": "churn clf", "version": "7"}
    assert predict(app, registry=sent, fast=fast).status_code == 202
    assert info(app) == {
        "run_id": RUN,
        "model_uri": f"runs:/{RUN}/model",
        "registry_name": "churn clf",
        "registry_version": "7",
        "run_url": "",
    }
    assert predict(app, registry={"version": 8}, fast=fast).status_code == 202
    assert info(app)["registry_version"] == "8" and info(app)["run_id"] == ""
    # A prediction without an entry says nothing: the version keeps the last one sent.
    assert predict(app, fast=fast).status_code == 202
    assert info(app)["registry_version"] == "8"
    assert len(scrape(app.test_client()).all("mlmon_model_info", model="churn")) == 1


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "general"])
@pytest.mark.parametrize(
    ("registry", "field", "reason"),
    [
        ({"run_id": "not a run id"}, "registry.run_id", "invalid_value"),
        ({"run_id": "x" * 65}, "registry.run_id", "invalid_value"),
        ({"model_uri": "no-scheme"}, "registry.model_uri", "invalid_value"),
        ({"model_uri": "models:/a b/1"}, "registry.model_uri", "invalid_value"),
        ({"name": ""}, "registry.name", "invalid_value"),
        ({"name": "a\nb"}, "registry.name", "invalid_value"),
        ({"version": 0}, "registry.version", "invalid_value"),
        ({"version": "03"}, "registry.version", "invalid_value"),
        ({"version": 1.0}, "registry.version", "invalid_value"),
        ({"version": True}, "registry.version", "invalid_value"),
        ({"version": None}, "registry.version", "invalid_value"),
        ({"experiment": "1"}, "registry.experiment", "unknown_field"),
        ({}, "registry", "invalid_value"),
        ("models:/churn/3", "registry", "invalid_value"),
    ],
)
def test_a_bad_registry_entry_is_a_400_naming_the_field(fast, registry, field, reason):
    app, m, _ = build(config())
    r = predict(app, registry=registry, fast=fast)
    assert r.status_code == 400
    (detail,) = r.get_json()["error"]["details"]
    assert (detail["field"], detail["reason"]) == (field, reason)
    assert m.models["churn"].versions == {}  # nothing was accepted


def test_a_registry_entry_sent_with_predictions_survives_a_restart(tmp_path):
    text = config(storage=f'{{path: "{tmp_path / "data"}"}}')
    app, _, clock = build(text)
    assert predict(app, registry={"name": "churn-clf", "version": 3}).status_code == 202  # in the journal
    before = info(app)
    restarted, _, _ = build(text, clock)
    assert info(restarted) == before
    app.extensions["mlmon"].checkpoint()  # and in a snapshot
    assert info(build(text, clock)[0]) == before


# -- look-ups --------------------------------------------------------------------------------------------

LOOKUP = f'registry: {{tracking_uri: "http://mlflow.invalid:5000", run_url_template: "{TEMPLATE}"}}'


class FakeRegistry:
    """Answers look-ups from a dict; a query it does not know fails as MLflow's client does for a missing model."""

    def __init__(self, answers: dict):
        self.answers = answers
        self.calls: list[tuple] = []

    def __call__(self, query):
        self.calls.append(query)
        if query not in self.answers:
            raise RuntimeError(f"RESOURCE_DOES_NOT_EXIST: {query}")
        return self.answers[query]


def test_a_lookup_fills_the_run_and_its_experiment_once_per_version():
    fake = FakeRegistry({("model_version", "churn-clf", "3"): {"run_id": RUN}, ("run", RUN): {"experiment_id": "42"}})
    app, m, _ = build(config(registry=LOOKUP), fetch=fake)
    predict(app, "v1", registry={"name": "churn-clf", "version": 3})
    predict(app, "v2", registry={"name": "churn-clf", "version": 3})  # the same registered version
    assert info(app)["run_id"] == ""  # nothing looked up on the ingest path
    assert m.links.run_once() == 2
    for version in ("v1", "v2"):
        assert info(app, version) == {
            "run_id": RUN,
            "model_uri": "models:/churn-clf/3",
            "registry_name": "churn-clf",
            "registry_version": "3",
            "run_url": f"http://mlflow.example:5000/#/experiments/42/runs/{RUN}",
        }
    assert m.links.run_once() == 0  # cached
    assert fake.calls == [("model_version", "churn-clf", "3"), ("run", RUN)]
    metrics = scrape(app.test_client())
    assert metrics.get("mlmon_registry_lookups_total") == 2
    assert metrics.get("mlmon_registry_lookup_errors_total") == 0


def test_a_declared_run_id_is_not_looked_up_but_its_experiment_is():
    fake = FakeRegistry({("run", RUN): {"experiment_id": "7"}})
    app, m, _ = build(config(registry=LOOKUP), fetch=fake)
    predict(app, registry={"run_id": RUN})
    m.links.run_once()
    assert fake.calls == [("run", RUN)]
    assert info(app)["run_url"].endswith(f"/experiments/7/runs/{RUN}")


def test_a_failed_lookup_is_counted_retried_later_with_backoff_and_ingest_goes_on(caplog):
    fake = FakeRegistry({})
    app, m, clock = build(config(registry=LOOKUP), fetch=fake)
    assert predict(app, registry={"name": "churn-clf", "version": 3}).status_code == 202
    assert m.links.run_once() == 1
    (record,) = [r for r in caplog.records if r.getMessage() == "registry lookup failed"]
    assert (
        record.fields["lookup"] == "model_version/churn-clf/3" and "RESOURCE_DOES_NOT_EXIST" in record.fields["error"]
    )
    assert record.fields["retry_in"] == model_registry.RETRY_FIRST
    assert predict(app).status_code == 202  # ingest is not held up
    labels = info(app)
    assert (labels["registry_version"], labels["run_id"], labels["run_url"]) == ("3", "", "")
    assert m.links.run_once() == 0  # not yet due
    clock.advance(model_registry.RETRY_FIRST)
    assert m.links.run_once() == 1
    clock.advance(model_registry.RETRY_FIRST)  # the delay doubled: not yet
    assert m.links.run_once() == 0
    clock.advance(model_registry.RETRY_FIRST)
    fake.answers[("model_version", "churn-clf", "3")] = {"run_id": RUN}  # registered meanwhile
    fake.answers[("run", RUN)] = {"experiment_id": "1"}
    assert m.links.run_once() == 2
    assert info(app)["run_url"].endswith(f"/experiments/1/runs/{RUN}")
    metrics = scrape(app.test_client())
    assert metrics.get("mlmon_registry_lookups_total") == 4
    assert metrics.get("mlmon_registry_lookup_errors_total") == 2


def test_the_backoff_is_capped():
    fake = FakeRegistry({})
    app, m, clock = build(config(registry=LOOKUP), fetch=fake)
    predict(app, registry={"name": "churn-clf", "version": 3})
    for _ in range(12):
        m.links.run_once()
        clock.advance(model_registry.RETRY_MAX)
    assert len(fake.calls) == 12


def test_a_retired_version_is_no_longer_looked_up():
    fake = FakeRegistry({})
    text = config(registry=LOOKUP).replace("windows:", "limits: {max_versions_per_model: 1}\nwindows:")
    app, m, clock = build(text, fetch=fake)
    predict(app, "v1", registry={"name": "churn-clf", "version": 3})
    m.links.run_once()
    predict(app, "v2")  # retires v1
    clock.advance(model_registry.RETRY_MAX)
    assert m.links.run_once() == 0
    assert m.links.lookups == {}


def test_a_slow_registry_holds_up_neither_ingest_nor_scrapes():
    entered, release = threading.Event(), threading.Event()

    def slow(query):
        entered.set()
        release.wait(30)
        return {"run_id": RUN} if query[0] == "model_version" else {"experiment_id": "3"}

    app, m, _ = build(config(registry=LOOKUP), fetch=slow)
    predict(app, registry={"name": "churn-clf", "version": 3})
    stop = threading.Event()
    m.links.start(stop, every=0.01)
    try:
        assert entered.wait(10)  # the look-up thread is inside the registry call
        assert predict(app, "v2").status_code == 202
        assert info(app)["run_id"] == ""
    finally:
        release.set()
        stop.set()
        m.links.thread.join(10)
    assert not m.links.thread.is_alive()


def test_no_lookup_counters_without_a_tracking_uri():
    app, m, _ = build(config())
    assert not m.links.enabled and m.links.run_once() == 0
    assert scrape(app.test_client()).get("mlmon_registry_lookups_total") is None


# -- a real MLflow -----------------------------------------------------------------------------------------


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A file store (no server) with an experiment, a run and version 1 of the registered model churn-clf."""
    mlflow = pytest.importorskip("mlflow")
    # MLflow 3 refuses its file store unless this is set (it steers new users to a database); a file store is
    # what lets this test run without a server. The exporter's look-ups in this process see it too.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    client = mlflow.tracking.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("churn")
    run = client.create_run(experiment)
    client.set_terminated(run.info.run_id)
    client.create_registered_model("churn-clf")
    version = client.create_model_version("churn-clf", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    return {"uri": uri, "experiment": experiment, "run": run.info.run_id, "version": str(version.version)}


def test_a_version_is_looked_up_in_a_real_mlflow_file_store(mlflow_store):
    store = mlflow_store
    registry = f'registry: {{tracking_uri: "{store["uri"]}", run_url_template: "{TEMPLATE}"}}'
    app, m, _ = build(config(registry=registry, model_registry_text="registry: {name: churn-clf}"))
    assert isinstance(m.links.fetch, model_registry.MlflowLookup)
    assert predict(app, "v1", registry={"version": int(store["version"])}).status_code == 202
    assert m.links.run_once() == 2
    assert info(app) == {
        "run_id": store["run"],
        "model_uri": f"models:/churn-clf/{store['version']}",
        "registry_name": "churn-clf",
        "registry_version": store["version"],
        "run_url": f"http://mlflow.example:5000/#/experiments/{store['experiment']}/runs/{store['run']}",
    }
    metrics = scrape(app.test_client())
    assert (metrics.get("mlmon_registry_lookups_total"), metrics.get("mlmon_registry_lookup_errors_total")) == (2, 0)


def test_a_model_unknown_to_mlflow_is_a_counted_failure(mlflow_store):
    registry = f'registry: {{tracking_uri: "{mlflow_store["uri"]}", run_url_template: "{TEMPLATE}"}}'
    app, m, _ = build(config(registry=registry))
    assert predict(app, registry={"name": "no-such-model", "version": 1}).status_code == 202
    assert m.links.run_once() == 1
    labels = info(app)
    assert (labels["registry_name"], labels["run_id"], labels["run_url"]) == ("no-such-model", "", "")
    assert scrape(app.test_client()).get("mlmon_registry_lookup_errors_total") == 1


def test_an_unreachable_tracking_server_is_a_counted_failure():
    pytest.importorskip("mlflow")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    registry = f'registry: {{tracking_uri: "http://127.0.0.1:{port}", lookup_timeout: 2s}}'
    app, m, _ = build(config(registry=registry))
    assert predict(app, registry={"name": "churn-clf", "version": 1}).status_code == 202
    assert m.links.run_once() == 1
    assert scrape(app.test_client()).get("mlmon_registry_lookup_errors_total") == 1
    assert predict(app).status_code == 202
