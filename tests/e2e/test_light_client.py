"""The light client, `mlmon-client` (clients/python/): installed alone into a fresh virtualenv (pip, from
PyPI: about 20 s), it brings requests and nothing of the exporter, and it delivers predictions and labels to a
live exporter."""

from __future__ import annotations

import subprocess
import textwrap
import venv

import pytest

from tests.conftest import Metrics
from tests.serve.test_server import ROOT, exporter  # noqa: F401  (the live exporter fixture)


@pytest.fixture(scope="module")
def light_python(tmp_path_factory):
    env = tmp_path_factory.mktemp("light-venv")
    venv.EnvBuilder(with_pip=True, clear=True).create(env)
    python = str(env / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT / "clients/python")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr
    return python


def test_the_light_client_installs_without_the_exporters_dependencies(light_python):
    listing = subprocess.run([light_python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True)
    installed = {line.split("==")[0].lower() for line in listing.stdout.split()}
    assert {"mlmon-client", "requests"} <= installed
    for heavy in ("flask", "numpy", "scipy", "msgspec", "bcrypt", "waitress", "mlmon", "prometheus-client"):
        assert heavy not in installed, f"{heavy} came with the light client"
    probe = "import importlib.util as u; print([m for m in ('exporter', 'flask', 'numpy') if u.find_spec(m)])"
    assert subprocess.run([light_python, "-c", probe], capture_output=True, text=True).stdout.strip() == "[]"


def test_the_light_client_delivers_to_a_live_exporter(light_python, exporter):  # noqa: F811
    url, _ = exporter
    script = textwrap.dedent(
        f"""
        import mlmon_client as mlmon
        mlmon.configure(url={url!r}, server="light-1")
        for i in range(20):
            mlmon.log_prediction("churn", "churn" if i % 2 else "stay", id=f"p{{i}}", score=0.7 if i % 2 else 0.2,
                                 features={{"tenure": i, "plan": "pro"}})
        for i in range(10):
            mlmon.log_label("churn", f"p{{i}}", "stay")
        client = mlmon.get_client()
        assert client.flush(timeout=20), client.stats()
        print("sent", client.stats())
        """
    )
    run = subprocess.run([light_python, "-c", script], capture_output=True, text=True, timeout=120, cwd="/")
    assert run.returncode == 0, run.stderr
    import requests

    metrics = Metrics(requests.get(f"{url}/metrics", timeout=10).text)
    assert metrics.get("mlmon_predictions_total", model="churn", version="default") == 20
    assert metrics.get("mlmon_labels_total", model="churn", version="default") == 10
