"""`mlmon report` against a real Prometheus that scraped the demo (exporter, model server, traffic with drift, late
labels and a v2 deployment), opened in headless Chromium: every image loads, nothing is logged to the console,
nothing is fetched from the network, and the summary names every model. Its figures are checked against the raw
counters Prometheus holds, computed with numpy. And the errors a user meets: Prometheus unreachable, not
Prometheus, asking for a password, or holding no mlmon data."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from pathlib import Path

import bcrypt
import numpy as np
import pytest
import requests
import yaml

from exporter.report.gather import Gatherer, Period
from exporter.report.prom import Connection, Prometheus
from tests.serve.test_server import free_port
from tools import browser

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("cancer", "diabetes", "wine")
PROMETHEUS = "/usr/bin/prometheus"


def mlmon_report(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "report", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def report(demo, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("report") / "report.html"
    done = mlmon_report("--prometheus.url", demo.prometheus, "--period", "5m", "--output", str(out))
    assert done.returncode == 0, done.stderr
    return out, done


def test_the_report_is_one_self_contained_file(report):
    path, done = report
    text = path.read_text()
    # Progress on stderr, one line per step (not a terminal), and the closing line naming the file.
    assert "[1/3] cancer: traffic" in done.stderr and "[3/3] wine: alerts" in done.stderr, done.stderr
    assert f"wrote {path}" in done.stderr
    # No script, and nothing fetched: every image is inline.
    assert "<script" not in text
    sources = re.findall(r'<img src="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"(src|href)=\"(https?:)?//", text)


def test_the_report_in_headless_chromium(report, tmp_path):
    missing = browser.available()
    if missing:
        pytest.fail(f"the report's browser test needs Chromium: {missing} (make system-deps installs it)")
    path, _ = report
    shot = tmp_path / "report.png"
    page = browser.open_page(path, screenshot=shot, full_page=True)
    assert page.console_errors == [], page.console_errors
    assert page.requests == [], page.requests
    # Quality, traffic and drift of three models, distributions of the two with numeric features in bins.
    assert len(page.images) >= 10, page.images
    assert page.broken_images == [], page.broken_images
    assert all(i["width"] >= 600 and i["height"] >= 150 for i in page.images), page.images
    summary = page.text.split("Summary", 1)[1].split("\n\ncancer", 1)[0]
    for model in MODELS:
        assert model in summary, summary
    assert "predictions" in summary and "Accuracy" in summary and "Mean absolute error" in summary
    # The screenshot is the whole page: taller than a screen, and not blank.
    from PIL import Image

    with Image.open(shot) as im:
        assert im.width == 1280 and im.height > 3000, im.size
        grey = np.asarray(im.convert("L"))
    # Text and charts: a few percent of the pixels are dark, most are the white page.
    dark = (grey < 128).mean()
    assert 0.005 < dark < 0.3, dark


def test_the_figures_agree_with_the_raw_counters(demo):
    """The report's counts, accuracy and MAE over the period against the counters read raw at its end and
    computed with numpy: the demo started within the period, so the counters' values are the period's counts,
    exactly (the report reads counters at its bucket edges, without increase()'s extrapolation)."""
    prom = Prometheus(Connection(url=demo.prometheus))
    # The period ends at the last scrape Prometheus has stored: a scrape is stamped when it starts and stored
    # when it ends, so a period ending at "now" could miss one the raw query below, made later, would see.
    r = requests.get(f"{demo.prometheus}/api/v1/query", params={"query": 'max(timestamp(up{job="mlmon"}))'}, timeout=10)
    end = float(r.json()["data"]["result"][0]["value"][1])
    period = Period.plan(end, 900, scrape_interval=2.0)
    rep = Gatherer(prom, period).gather()
    by_name = {m.name: m for m in rep.models}
    assert sorted(by_name) == list(MODELS)

    def last_values(expr: str) -> list[tuple[dict, float]]:
        r = requests.get(f"{demo.prometheus}/api/v1/query", params={"query": expr, "time": end}, timeout=10)
        return [(s["metric"], float(s["value"][1])) for s in r.json()["data"]["result"]]

    for name in MODELS:
        m = by_name[name]
        for metric, figures in (("mlmon_predictions_total", m.predictions), ("mlmon_labels_total", m.labels)):
            raw = {}
            for labels, v in last_values(f'{metric}{{model="{name}"}}'):
                raw[labels["version"]] = raw.get(labels["version"], 0.0) + v
            assert figures == pytest.approx(raw, abs=1e-9), (name, metric)
    for name in ("cancer", "wine"):
        rows = last_values(f'mlmon_outcomes_total{{model="{name}"}}')
        n = np.array([v for _, v in rows])
        hit = np.array([m["actual"] == m["predicted"] for m, _ in rows])
        assert by_name[name].quality.period == pytest.approx(n[hit].sum() / n.sum(), abs=1e-12), name
        # The chart's buckets add up to the period.
        q = by_name[name].quality
        assert sum(x.sum() for x in q.labels.values()) == pytest.approx(n.sum(), abs=1e-9)
    labels = sum(v for _, v in last_values('mlmon_labels_total{model="diabetes"}'))
    errors = sum(v for _, v in last_values('mlmon_absolute_error_total{model="diabetes"}'))
    squares = sum(v for _, v in last_values('mlmon_squared_error_total{model="diabetes"}'))
    assert by_name["diabetes"].quality.period == pytest.approx(errors / labels, rel=1e-12)
    assert by_name["diabetes"].quality.extra["rmse"] == pytest.approx(math.sqrt(squares / labels), rel=1e-12)
    # Every version the demo served, v2 among them, first served within the period.
    for m in rep.models:
        assert "v2" in m.versions, (m.name, m.versions)
        assert period.start < m.first_seen["v2"] <= end
    # Drift: the demo's drift phase moves features beyond their thresholds, and the report ranks them first.
    drifted = [m for m in rep.models if m.drifted]
    assert drifted, [(m.name, [(d.feature, d.worst) for d in m.drift]) for m in rep.models]
    for m in drifted:
        ratios = [d.ratio for d in m.drift]
        assert ratios == sorted(ratios, reverse=True)


def test_an_unknown_model_is_named_with_the_models_there_are(demo):
    done = mlmon_report("--prometheus.url", demo.prometheus, "--period", "5m", "--model", "fraud", "-o", "/dev/null")
    assert done.returncode == 1
    assert "no mlmon data for model fraud" in done.stderr and "cancer, diabetes, wine" in done.stderr


def test_scheduled_reports_land_in_a_directory(demo, tmp_path):
    """--every with --output-dir, as the compose service runs it (a week there; a second here), for one model."""
    out = tmp_path / "reports"
    done = mlmon_report(
        "--prometheus.url", demo.prometheus, "--period", "5m", "--model", "wine", "--every", "1s", "--count", "2",
        "--output-dir", str(out), "--keep", "1", "-q",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("wrote ") == 2, done.stderr
    made = re.findall(r"wrote (\S+)", done.stderr)
    files = sorted(p.name for p in out.iterdir())
    # Two made, the newest kept, latest.html a copy of it.
    assert len(files) == 2 and files[0] == "latest.html" and made[-1].endswith(files[1]), (files, made)
    assert all(re.fullmatch(r"mlmon-report-\d{4}-\d\d-\d\dT\d{6}Z\.html", f) for f in files[1:]), files
    text = (out / "latest.html").read_text()
    assert text == (out / files[-1]).read_text()
    assert 'id="model-wine"' in text and 'id="model-cancer"' not in text


# --- what goes wrong, said plainly ----------------------------------------------------------------------------
def test_unreachable_prometheus():
    port = free_port()
    done = mlmon_report("--prometheus.url", f"http://127.0.0.1:{port}", "-q", "-o", "/dev/null")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"mlmon report: cannot reach Prometheus at http://127.0.0.1:{port} (Connection refused): start it, or "
        "point --prometheus.url (env MLMON_PROMETHEUS_URL) at it"
    ), done.stderr


def test_not_prometheus(demo):
    # The exporter answers HTTP, but it is not Prometheus.
    done = mlmon_report("--prometheus.url", demo.exporter, "-q", "-o", "/dev/null")
    assert done.returncode == 2
    assert "not Prometheus's JSON API" in done.stderr or "did not answer like Prometheus" in done.stderr, done.stderr


def test_bad_flags():
    for args, expected in (
        (["--period", "a week"], "--period: 'a week' is not a duration"),
        (["--end", "yesterday"], "--end: 'yesterday' is neither RFC 3339"),
        (["--count", "2"], "--count needs --every"),
        (["--prometheus.url", "127.0.0.1:9090"], "must start with http:// or https://"),
    ):
        done = mlmon_report(*args, "-q")
        assert done.returncode == 2 and expected in done.stderr, (args, done.stderr)


class EmptyPrometheus:
    """A real Prometheus that scrapes nothing, optionally behind basic auth (its web config)."""

    def __init__(self, tmp: Path, password: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (tmp / "prometheus.yml").write_text(yaml.safe_dump({"global": {"scrape_interval": "15s"}}))
        args = [
            PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]  # fmt: skip
        if password:
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
            (tmp / "web.yml").write_text(yaml.safe_dump({"basic_auth_users": {"ops": hashed}}))
            args.append(f"--web.config.file={tmp / 'web.yml'}")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(f"{self.url}/-/ready", timeout=1, auth=("ops", password or ""))
                return
            except requests.ConnectionError:
                time.sleep(0.2)
        raise AssertionError("Prometheus did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def empty_prometheus(tmp_path):
    if not Path(PROMETHEUS).exists():
        pytest.skip("Prometheus is not installed (apt-get install prometheus)")
    servers = []

    def start(password: str | None = None) -> EmptyPrometheus:
        servers.append(EmptyPrometheus(tmp_path / str(len(servers)), password))
        return servers[-1]

    (tmp_path / "0").mkdir()
    (tmp_path / "1").mkdir()
    yield start
    for s in servers:
        s.stop()


def test_prometheus_without_mlmon_data(empty_prometheus):
    prom = empty_prometheus()
    done = mlmon_report("--prometheus.url", prom.url, "-q", "-o", "/dev/null")
    assert done.returncode == 1
    assert f"Prometheus at {prom.url} holds no mlmon series between" in done.stderr, done.stderr
    assert "is it scraping the exporter" in done.stderr


def test_prometheus_behind_basic_auth(empty_prometheus, tmp_path):
    prom = empty_prometheus(password="s3cret")
    done = mlmon_report("--prometheus.url", prom.url, "-q", "-o", "/dev/null")
    assert done.returncode == 2
    assert "refused the request (401 Unauthorized): give --prometheus.username" in done.stderr, done.stderr
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    done = mlmon_report(
        "--prometheus.url", prom.url, "--prometheus.username", "ops", "--prometheus.password-file", str(secret),
        "-q", "-o", "/dev/null",
    )  # fmt: skip
    # Let in, and told that it holds nothing yet.
    assert done.returncode == 1 and "holds no mlmon series" in done.stderr, done.stderr


def test_period_plan_is_sane():
    # A week: a point per 30 minutes at most 400 a line, quality per 6 hours, the last day for "lately".
    p = Period.plan(1_000_000.0, 7 * 86400, scrape_interval=15)
    assert (p.step, p.bucket, p.recent) == (1800, 21600, 86400)
    assert p.rate >= 4 * 15 and p.seconds == 7 * 86400
    assert math.isclose(p.start, 1_000_000 - 7 * 86400)
