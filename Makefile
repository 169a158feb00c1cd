# One entry point: `make demo` runs mlmon, `make test` proves it. Both work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# chromium and chromium-driver: the report's test opens it in a real (headless) browser.
DEBIAN_PACKAGES := prometheus prometheus-alertmanager redis-server chromium chromium-driver

.PHONY: demo test test-fast lint fmt bench bench-full bench-alerts bench-estimate bench-multivariate docs-images venv system-deps clean

# `make demo DEMO_ARGS="--duration 60 --speed 10"` for a quick run.
DEMO_ARGS ?=

# The virtualenv is refreshed whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,demo]'
	@touch $(STAMP)

venv: $(STAMP)

# Prometheus and Alertmanager (with promtool and amtool) from Debian, installed when missing.
# The tests need them; the demo runs without them (and says how to get them).
system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing; install them with: sudo apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi

demo: venv
	@$(MAKE) --no-print-directory system-deps || echo "make demo: going on without Prometheus and Alertmanager"
	$(VENV)/bin/mlmon demo $(DEMO_ARGS)

test: venv system-deps
	$(PY) -m pytest -q

# The tests without the end-to-end runs of real processes (tests/e2e, marked slow): a quick loop while coding.
test-fast: venv system-deps
	$(PY) -m pytest -q -m "not slow"

lint: venv
	$(VENV)/bin/ruff check exporter clients tests bench examples grafana tools
	$(VENV)/bin/ruff format --check exporter clients tests bench examples grafana tools

fmt: venv
	$(VENV)/bin/ruff format exporter clients tests bench examples grafana tools
	$(VENV)/bin/ruff check --fix exporter clients tests bench examples grafana tools

# The benchmarks run in their own virtualenv: the exporter plus the peers they are compared with
# (Evidently, pandas, matplotlib; bench/requirements.txt), which mlmon itself never depends on.
BENCH_VENV := .venv-bench
BENCH_PY := $(BENCH_VENV)/bin/python
BENCH_STAMP := $(BENCH_VENV)/.installed

$(BENCH_STAMP): pyproject.toml bench/requirements.txt
	@test -x $(BENCH_PY) || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PY) -m pip install --quiet --upgrade pip
	$(BENCH_PY) -m pip install --quiet -e '.[redis,arrow]' -r bench/requirements.txt
	@touch $(BENCH_STAMP)

# `make bench`: every benchmark in 7 to 10 minutes on 2 cores (Evidently's and the exact computation's slow
# runs stopped at a cap and shown as lower bounds); `make bench-full`: every run to its end (25 to 35
# minutes). Both rewrite docs/benchmarks.md and docs/img/bench-*.png, with the mode and each part's time.
bench: $(BENCH_STAMP)
	$(BENCH_PY) bench/run.py

bench-full: $(BENCH_STAMP)
	$(BENCH_PY) bench/run.py --full

# `make bench-alerts`: replays scenarios (a collapse at three label rates, healthy weeks, a slow decay, late
# labels, two replicas, drift, the estimate, fairness, multivariate drift) through the exporter's code and the
# bundled rules under promtool, and writes when each alert fires, and how often without cause, into
# docs/alerts.md. About 50 minutes on 2 cores; `.venv/bin/python bench/bench_alerts.py --only fairness:` the
# fairness table alone (`--only multivariate:` the multivariate drift table).
bench-alerts: venv system-deps
	$(PY) bench/bench_alerts.py

# `make bench-estimate`: the estimated quality beside NannyML's CBPE (in .venv-bench with the other peers), chunk
# by chunk, with the realized quality, on NannyML's synthetic binary data and on scikit-learn data sets with a
# covariate shift; writes the tables into docs/estimation.md. About 20 seconds.
bench-estimate: $(BENCH_STAMP)
	$(BENCH_PY) bench/bench_estimate.py

# `make bench-multivariate`: the multivariate drift (PCA reconstruction error) beside NannyML's
# DataReconstructionDriftCalculator (in .venv-bench), chunk by chunk on the same chunks, with what PSI sees per
# feature, on correlated Gaussian features, scikit-learn's breast cancer data and categorical features with missing
# values; fails when a value or threshold differs beyond 1e-9 (relative) or an alert differs; writes the tables into
# docs/drift.md. About 15 seconds.
bench-multivariate: $(BENCH_STAMP)
	$(BENCH_PY) bench/bench_multivariate.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .ruff_cache *.egg-info

# `make docs-images`: the README's pictures from a real run (about four minutes): a status block of `make demo`
# drawn as a terminal (docs/img/demo.png) and the top of an `mlmon report` of that run, photographed in headless
# Chromium (docs/img/report.png).
docs-images: venv system-deps
	$(PY) tools/docs_images.py
