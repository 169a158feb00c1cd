"""An example model server instrumented with mlmon: the integration guide, as code (docs/integration.md).

Three scikit-learn models trained at start on bundled data sets, served over HTTP with Flask:

    POST /predict/<model>    {"features": {...}, "attributes": {...}}   -> {"id", "prediction", "scores", "version"}
    POST /feedback/<model>   {"id": ..., "label": ...}      -> 202   (the ground truth, later)
    POST /deploy/<model>     {"version", "X", "y"}          -> 200   (retrain and swap in a new version)
    GET  /healthz

Everything mlmon needs is in `predict` and `feedback`: one `log_prediction` call after the model answers,
one `log_label` call when the truth arrives. Neither blocks nor raises; the client batches in the
background and flushes at exit.

Run: python examples/model_server.py --port 5000 --mlmon-url http://127.0.0.1:8490
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import uuid

import numpy as np
from flask import Flask, jsonify, request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mlmon_client as mlmon  # noqa: E402  (the light client: pip install ./clients/python)
import scenario  # noqa: E402  (the demo's data sets and models)

log = logging.getLogger("model_server")


try:  # SHAP values of each prediction, sent as its attributions (the demo extra installs shap)
    import shap
except ImportError:  # pragma: no cover - the demo runs without attributions then
    shap = None


class Deployed:
    """One model as served: its version, the fitted estimator and what its inputs look like; for the binary
    model, a SHAP explainer whose values for the positive class (the config's) go with each prediction."""

    def __init__(self, world: scenario.World, version: str, estimator):
        self.world = world
        self.version = version
        self.estimator = estimator
        self.explainer, self.output = None, None
        if world.task == "binary" and shap is not None:
            self.explainer = shap.TreeExplainer(estimator)
            self.output = [str(c) for c in estimator.classes_].index(world.classes[0])  # malignant: positive

    def explain(self, X: np.ndarray):
        """The SHAP explanation of the rows ``X`` (None without an explainer)."""
        if self.explainer is None:
            return None
        explanation = self.explainer(X)
        explanation.feature_names = self.world.features  # fitted on arrays: name the columns
        return explanation


def upload_reference(name: str, deployed: Deployed) -> None:
    """Tell mlmon what normal looks like: the validation data (here: the held-out rows the users' requests
    resemble), with the model's predictions, the true labels, and what drove each prediction (SHAP)."""
    world, estimator = deployed.world, deployed.estimator
    X, y = scenario.validation_set(world)
    columns = {f: X[:, j].tolist() for j, f in enumerate(world.features)}
    explanation = deployed.explain(X)
    if explanation is not None:  # the drivers at training time, against which mlmon compares today's
        for j, f in enumerate(world.features):
            columns[f"attributions.{f}"] = explanation.values[:, j, deployed.output].round(6).tolist()
    columns["prediction"] = estimator.predict(X).tolist()
    columns["label"] = y.tolist()
    if world.task != "regression":  # the scores calibrate mlmon's estimated quality (docs/estimation.md)
        for c, column in zip(estimator.classes_, estimator.predict_proba(X).T):
            columns[f"scores.{c}"] = column.round(6).tolist()
    # --- the mlmon part: one call after training (or point the exporter's config at a reference file) ----
    try:
        mlmon.get_client().upload_reference(name, columns)
    except Exception as exc:  # monitoring must never stop the model server from serving
        log.warning("could not upload the reference of %s to mlmon: %s", name, exc)
    # -------------------------------------------------------------------------------------------------------


def create_app(seed: int = 0) -> Flask:
    app = Flask("model_server")
    models: dict[str, Deployed] = {}
    lock = threading.Lock()
    for name in scenario.MODELS:
        world = scenario.load(name, seed)
        estimator = scenario.estimator(world, seed).fit(world.X_train, world.y_train)
        models[name] = Deployed(world, "v1", estimator)
        log.info("trained %s v1 on %d rows", name, len(world.X_train))
        upload_reference(name, models[name])

    @app.post("/predict/<name>")
    def predict(name: str):
        deployed = models.get(name)
        if deployed is None:
            return jsonify({"error": f"unknown model {name!r}"}), 404
        body = request.get_json(silent=True) or {}
        features = body.get("features") or {}
        attributes = body.get("attributes")  # facts about the case the model does not use (an age group)
        world = deployed.world
        started = time.perf_counter()
        row = np.array([[features.get(f, np.nan) for f in world.features]], dtype=float)
        request_id = uuid.uuid4().hex
        if world.task == "regression":
            prediction = float(deployed.estimator.predict(row)[0])
            scores = None
        else:
            proba = deployed.estimator.predict_proba(row)[0]
            classes = [str(c) for c in deployed.estimator.classes_]
            scores = dict(zip(classes, proba.round(6).tolist()))
            prediction = classes[int(np.argmax(proba))]
        latency = time.perf_counter() - started
        explanation = deployed.explain(row)  # what drove this prediction, for the binary model
        attributions = None if explanation is None else mlmon.shap_attributions(explanation[0], output=deployed.output)

        # --- the mlmon part: one call, after the model has answered ---------------------------------
        mlmon.log_prediction(
            name,
            prediction,
            id=request_id,  # the key the label will be joined on
            version=deployed.version,
            features=features,
            attributes=attributes,  # watched for fairness, kept out of drift
            attributions=attributions,  # SHAP values: what drives the model now against at training time
            scores=scores,
            latency_seconds=latency,
        )
        # -------------------------------------------------------------------------------------------------
        return jsonify({"id": request_id, "prediction": prediction, "scores": scores, "version": deployed.version})

    @app.post("/feedback/<name>")
    def feedback(name: str):
        body = request.get_json(silent=True) or {}
        if name not in models or "id" not in body or "label" not in body:
            return jsonify({"error": "needs a known model, 'id' and 'label'"}), 400
        # --- the mlmon part: the ground truth, whenever it arrives --------------------------------------
        mlmon.log_label(name, body["id"], body["label"])
        # -------------------------------------------------------------------------------------------------
        return jsonify({"accepted": True}), 202

    @app.post("/deploy/<name>")
    def deploy(name: str):
        body = request.get_json(silent=True) or {}
        if name not in models:
            return jsonify({"error": f"unknown model {name!r}"}), 404
        world = models[name].world
        X, y = np.asarray(body["X"], dtype=float), np.asarray(body["y"])
        estimator = scenario.estimator(world, seed=len(body["version"])).fit(X, y)
        with lock:
            models[name] = Deployed(world, str(body["version"]), estimator)
        log.info("deployed %s %s, trained on %d recent rows", name, body["version"], len(X))
        return jsonify({"model": name, "version": body["version"]})

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok", "models": {n: d.version for n, d in models.items()}})

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An example model server instrumented with mlmon.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--mlmon-url", default=os.environ.get("MLMON_URL", "http://127.0.0.1:8490"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    # --- the mlmon part: configure the client once, at start -------------------------------------------
    mlmon.configure(url=args.mlmon_url, server=f"model-server:{args.port}")
    # ---------------------------------------------------------------------------------------------------

    import waitress

    app = create_app(args.seed)
    server = waitress.create_server(app, host=args.host, port=args.port, threads=8)

    def stop(signum, frame):
        raise SystemExit(0)  # waitress finishes in-flight requests; atexit flushes the mlmon client

    signal.signal(signal.SIGTERM, stop)
    log.info("serving on http://%s:%s, sending to mlmon at %s", args.host, server.effective_port, args.mlmon_url)
    server.run()
    mlmon.get_client().close(timeout=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
