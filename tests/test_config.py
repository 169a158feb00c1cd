"""Config validation: the documented form is accepted; every problem names the key, its line and what is wrong."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from exporter.config import ConfigError, load_config, parse_config, parse_duration

ROOT = Path(__file__).resolve().parent.parent

ISSUE_FORM = """
windows: ["5m", "1h", "1d"]          # the default
models:
  - name: churn
    task: binary                     # binary | multiclass | regression
    classes: ["stay", "churn"]
    positive_class: "churn"
    features:
      - {name: tenure, type: numeric}
      - {name: plan, type: categorical}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        parse_config(textwrap.dedent(text), "c.yml")
    return exc.value.problems


def test_documented_form_is_accepted_with_defaults():
    config = parse_config(ISSUE_FORM)
    assert config.windows == ("5m", "1h", "1d")
    assert config.window_seconds == (300, 3600, 86400)
    (model,) = config.models
    assert (model.name, model.task, model.classes, model.positive_class) == (
        "churn",
        "binary",
        ("stay", "churn"),
        "churn",
    )
    assert [(f.name, f.type) for f in model.features] == [("tenure", "numeric"), ("plan", "categorical")]
    assert config.limits.pending_ttl_seconds == 7 * 86400
    assert config.limits.max_body_bytes == 10 * 1024 * 1024


def test_example_config_is_valid():
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", "examples/config.yml"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_unknown_key_is_an_error_naming_path_and_line():
    (problem,) = problems("""
        models:
          - name: churn
            task: binary
            classes: [a, b]
            feautres: []
    """)
    assert problem.startswith("line 6: models[0].feautres: unknown key")
    assert "features" in problem  # the allowed keys are listed


def test_every_problem_is_reported_at_once():
    found = problems("""
        windows: ["5 minutes"]
        limits: {max_batch_size: 0, pending_ttl: 3x}
        models:
          - {name: a, task: ranking}
          - {name: b, task: binary, classes: [x, y, z]}
          - {name: c, task: binary, classes: [x, y], positive_class: q}
          - {name: d, task: regression, features: [{name: f, type: text}]}
    """)
    text = "\n".join(found)
    for expected in (
        "windows[0]",
        "limits.max_batch_size",
        "limits.pending_ttl",
        "models[0].task",
        "models[1].classes",
        "models[2].positive_class",
        "models[3].features[0].type",
    ):
        assert expected in text, (expected, text)
    assert len(found) == 7


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "empty"),
        ("models: []", "models: must be a non-empty list"),
        ("models:\n  - {name: a, task: binary}", "models[0].classes: is required"),
        ("models:\n  - {name: a, task: regression}\n  - {name: a, task: regression}", "duplicate model name"),
        ("models:\n  - {task: regression}", "models[0].name: is required"),
        ("models:\n  - {name: a, task: multiclass, classes: [x, x]}", "duplicate class names"),
        ("models:\n  - {name: a, task: regression, classes: [x, y]}", "only applies to classification"),
        ("models:\n  - {name: 'a b', task: regression}", "models[0].name"),
        ("windows: [5m, 300s]\nmodels:\n  - {name: a, task: regression}", "as long as"),
        ("models:\n  - {name: a, task: regression, prediction_buckets: [3, 1]}", "increasing order"),
        ("models: [\n", "not valid YAML"),
        ("models:\n  - {name: a, task: regression}\nmodels: []", "duplicate key 'models'"),
        (
            "models:\n  - {name: a, task: regression, drift: {multivariate: {variance: 1.5}}}",
            "models[0].drift.multivariate.variance: must be a share of the variance above 0 and below 1",
        ),
        (
            "models:\n  - {name: a, task: regression, drift: {multivariate: {chunk_size: 5}}}",
            "models[0].drift.multivariate.chunk_size",
        ),
        (
            "models:\n  - {name: a, task: regression, drift: {multivariate: {enabled: yes please}}}",
            "models[0].drift.multivariate.enabled: must be true or false",
        ),
        (
            "models:\n  - {name: a, task: regression, drift: {multivariate: {chunks: 10}}}",
            "did you mean 'chunk_size'?",
        ),
    ],
)
def test_invalid_configs_are_explained(text, expected):
    assert expected in "\n".join(problems(text))


def test_binary_positive_class_defaults_to_the_second_class():
    config = parse_config("models:\n  - {name: a, task: binary, classes: [0, 1]}")
    assert config.models[0].classes == ("0", "1")
    assert config.models[0].positive_class == "1"


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("5m", 300), ("1h30m", 5400), ("7d", 604800), ("1w", 604800)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "m", "1.5h", "-5m", "5M"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_check_config_exits_1_and_names_the_problem(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("models:\n  - {name: a, task: regression, colour: red}\n")
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert f"{bad}: line 2: models[0].colour: unknown key" in result.stderr


@pytest.mark.parametrize("form", [["FILE"], ["--config", "FILE"], ["--config.file", "FILE"]])
def test_check_config_takes_the_file_as_serve_does(tmp_path, form):
    bad = tmp_path / "bad.yml"
    bad.write_text("models:\n  - {name: a, task: regression, colour: red}\n")
    argv = [str(bad) if a == "FILE" else a for a in form]
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", *argv], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 1
    assert f"{bad}: line 2: models[0].colour: unknown key" in result.stderr
    good = [a if a != "FILE" else "examples/config.yml" for a in form]
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", *good], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr


def test_check_config_wants_one_file():
    for argv in ([], ["examples/config.yml", "--config", "examples/config.yml"]):
        result = subprocess.run(
            [sys.executable, "-m", "exporter", "check-config", *argv], capture_output=True, text=True, cwd=ROOT
        )
        assert result.returncode == 2 and "check-config takes one config file" in result.stderr


def test_a_token_without_actions_is_a_config_error_not_a_crash():
    text = "models:\n  - {name: m, task: regression}\nauth:\n  tokens:\n    - {name: a, sha256: %s}\n" % ("0" * 64)
    with pytest.raises(ConfigError) as err:
        parse_config(text, "x.yml")
    assert "line 5: auth.tokens[0].actions: is required" in str(err.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("model:\n  - {name: m, task: regression}\n", "model: unknown key (did you mean 'models'?"),
        (
            "models:\n  - {name: m, task: regression, thresholds: {acuracy_min: 0.8}}\n",
            "thresholds.acuracy_min: unknown key (did you mean 'accuracy_min'?",
        ),
    ],
)
def test_a_misspelt_key_gets_a_suggestion(text, message):
    with pytest.raises(ConfigError) as err:
        parse_config(text, "x.yml")
    assert message in str(err.value)


def test_no_suggestion_for_a_key_like_none():
    with pytest.raises(ConfigError) as err:
        parse_config("models:\n  - {name: m, task: regression, colour: red}\n", "x.yml")
    assert "did you mean" not in str(err.value)


def test_a_yaml_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text("models:\n  - {name: m, task: regression\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert f'in "{path}", line 2' in str(err.value)
    assert "<unicode string>" not in str(err.value)


def test_serve_with_a_bad_config_is_a_usage_error(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("models: 3\n")
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "serve", "--config", str(bad), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "models: must be a non-empty list" in result.stderr


def test_missing_config_file_is_reported(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", str(tmp_path / "nope.yml")], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "cannot read the config file" in result.stderr


def test_class_names_are_taken_as_written():
    config = parse_config("models:\n  - {name: a, task: binary, classes: [no, yes], positive_class: yes}")
    assert config.models[0].classes == ("no", "yes") and config.models[0].positive_class == "yes"


def test_numbers_yaml_reads_as_strings_are_still_numbers():
    config = parse_config("models:\n  - {name: a, task: regression, prediction_buckets: [1e2, 1e3, 1e4]}")
    assert config.models[0].prediction_buckets == (100.0, 1000.0, 10000.0)


@pytest.mark.parametrize("ttl", ["0s", "30s", "400d"])
def test_pending_ttl_is_bounded(ttl):
    assert "limits.pending_ttl" in "\n".join(
        problems(f"limits: {{pending_ttl: {ttl}}}\nmodels:\n  - {{name: a, task: regression}}")
    )


def test_a_top_level_list_is_explained():
    assert problems("- a\n- b\n") == ["line 1: (top level): must be a mapping, got a list"]


def test_thresholds_default_then_file_wide_then_per_model():
    config = parse_config(
        textwrap.dedent("""
        thresholds: {accuracy_min: 0.9, min_labeled_samples: 50}
        models:
          - {name: a, task: regression}
          - {name: b, task: regression, thresholds: {accuracy_min: 0.5}}
    """)
    )
    a, b = (dict(m.thresholds) for m in config.models)
    assert a["accuracy_min"] == 0.9 and b["accuracy_min"] == 0.5
    assert a["min_labeled_samples"] == b["min_labeled_samples"] == 50
    assert a["latency_p99_seconds"] == 0.5  # the built-in default


@pytest.mark.parametrize(
    "text", ["thresholds: {accuracy_min: 2}", "thresholds: {acuracy_min: 0.5}", "thresholds: {accuracy_min: high}"]
)
def test_bad_thresholds_are_explained(text):
    found = "\n".join(problems(f"{text}\nmodels:\n  - {{name: a, task: regression}}"))
    assert "line 1: thresholds.ac" in found


def test_serve_on_a_busy_port_says_so_in_one_line(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "mlmon.yml"
        config.write_text("models:\n  - {name: m, task: regression}\n")
        result = subprocess.run(
            [sys.executable, "-m", "exporter", "serve", "--config", str(config), "--host", "127.0.0.1"]
            + ["--port", str(port), "--log.level", "error"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    assert result.returncode == 1
    assert result.stderr.strip() == f"mlmon serve: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "windows, message",
    [
        ('["5m", "300s"]', "windows[1]: '300s' is as long as '5m', an earlier window"),
        ('["5s", "1h"]', "windows[0]: '5s': a window must be from 10s to 90d long"),
        ('["1h", "91d"]', "windows[1]: '91d': a window must be from 10s to 90d long"),
    ],
)
def test_a_window_error_names_the_window(windows, message):
    with pytest.raises(ConfigError) as err:
        parse_config(f"windows: {windows}\nmodels:\n  - {{name: m, task: regression}}\n", "x.yml")
    assert f"x.yml: line 1: {message}" in str(err.value)


@pytest.mark.parametrize(
    "name", ["mean radius", "petal length (cm)", "od280/od315_of_diluted_wines", 'a"b\\c', "âge µ", "x" * 128]
)
def test_feature_names_as_data_sets_have_them(name):
    import json

    text = "models:\n  - name: m\n    task: regression\n    features:\n"
    text += f"      - {{name: {json.dumps(name)}, type: numeric}}\n"
    assert parse_config(text).models[0].features[0].name == name


@pytest.mark.parametrize("name", ["", "x" * 129, "tab\there", "new\nline"])
def test_feature_names_that_cannot_be_label_values_are_refused(name):
    import json

    text = "models:\n  - name: m\n    task: regression\n    features:\n"
    text += f"      - {{name: {json.dumps(name)}, type: numeric}}\n"
    with pytest.raises(ConfigError, match=r"features\[0\]\.name: must be 1 to 128 printable characters"):
        parse_config(text)


# The model registry (docs/registry.md).

REGISTRY_MODEL = "models:\n  - name: m\n    task: regression\n"


def test_registry_settings_and_version_entries_are_read():
    config = parse_config(
        "registry:\n"
        '  tracking_uri: "http://mlflow:5000"\n'
        '  run_url_template: "http://mlflow:5000/#/experiments/{experiment_id}/runs/{run_id}"\n'
        "  lookup_timeout: 2s\n"
        + REGISTRY_MODEL
        + '    registry: {name: churn-clf, versions: {v1: {version: 3}, "2.0": {run_id: ab12, model_uri: "s3://b/m"}}}\n'
    )
    assert config.registry.tracking_uri == "http://mlflow:5000"
    assert config.registry.run_url_fields == ("experiment_id", "run_id")
    assert config.registry.lookup_timeout_seconds == 2
    model = config.models[0]
    assert model.registry_name == "churn-clf"
    assert model.registry["v1"].version == "3" and model.registry["2.0"].model_uri == "s3://b/m"


@pytest.mark.parametrize(
    ("registry", "message"),
    [
        (
            '{run_url_template: "http://m/#/runs/{run}"}',
            "registry.run_url_template: unknown placeholder {run} (allowed: model, version, run_id, experiment_id, "
            "model_uri, registry_name, registry_version)",
        ),
        ('{run_url_template: "http://m/{run_id!r}"}', "registry.run_url_template: placeholder {run_id} takes no"),
        ('{run_url_template: "http://m/{run_id"}', "registry.run_url_template: "),
        ('{run_url_template: "mlflow/{run_id}"}', "registry.run_url_template: must be an http:// or https:// URL"),
        ("{tracking_uri: mlflow}", "registry.tracking_uri: must be an MLflow tracking URI"),
        (
            '{run_url_template: "http://m/#/experiments/{experiment_id}/runs/{run_id}"}',
            "registry.run_url_template: {experiment_id} is only known to the registry: set registry.tracking_uri",
        ),
        ("{lookup_timeout: 1h}", "registry.lookup_timeout: must be from 1s to 300s"),
        ("{tracking: http://m}", "registry.tracking: unknown key (did you mean 'tracking_uri'?"),
    ],
)
def test_a_registry_setting_error_names_the_key(registry, message):
    with pytest.raises(ConfigError) as err:
        parse_config(f"registry: {registry}\n" + REGISTRY_MODEL, "x.yml")
    assert f"x.yml: line 1: {message}" in str(err.value)


def test_a_tracking_uri_without_the_mlflow_client_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"registry\.tracking_uri: .*pip install 'mlmon\[mlflow\]'"):
        parse_config('registry: {tracking_uri: "http://mlflow:5000"}\n' + REGISTRY_MODEL)


@pytest.mark.parametrize(
    ("registry", "message"),
    [
        ("{versions: {v1: {run_id: 'a b'}}}", "models[0].registry.versions.v1.run_id: must be the run that trained"),
        ("{versions: {v1: {version: 0}}}", "models[0].registry.versions.v1.version: must be the registered model's"),
        ("{versions: {v1: {version: 1, stage: prod}}}", "models[0].registry.versions.v1.stage: unknown key"),
        ("{versions: {v1: {}}}", "models[0].registry.versions.v1: must give at least one of run_id, model_uri"),
        ("{versions: {'v 1': {version: 1}}}", "models[0].registry.versions.v 1: a model version is 1-64 characters"),
        ("{versions: []}", "models[0].registry.versions: must map model versions"),
        ("{name: ''}", "models[0].registry.name: must be the registered model's name"),
    ],
)
def test_a_registry_entry_error_names_the_key(registry, message):
    with pytest.raises(ConfigError) as err:
        parse_config(REGISTRY_MODEL + f"    registry: {registry}\n", "x.yml")
    assert message in str(err.value)


def test_registry_version_keys_follow_the_api_version_rule():
    from exporter import config
    from exporter.ingest import schema

    assert config._MODEL_VERSION_RE.pattern == schema.VERSION_PATTERN


def test_multivariate_drift_is_on_by_default_and_configurable():
    base = "models:\n  - {name: a, task: regression%s}"
    default = parse_config(base % "").models[0]
    assert (default.multivariate, default.multivariate_variance, default.multivariate_chunk) == (True, 0.65, 0)
    tuned = parse_config(base % ", drift: {multivariate: {variance: 0.8, chunk_size: 250}}").models[0]
    assert (tuned.multivariate, tuned.multivariate_variance, tuned.multivariate_chunk) == (True, 0.8, 250)
    assert parse_config(base % ", drift: {multivariate: false}").models[0].multivariate is False
    assert parse_config(base % ", drift: {multivariate: {enabled: false}}").models[0].multivariate is False
