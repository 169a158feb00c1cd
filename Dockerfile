# mlmon: the exporter, plus the example model server and traffic generator of the demo (docs/deploy.md).
#
#   docker build -t mlmon:local .
#   docker run --rm -p 127.0.0.1:8490:8490 mlmon:local            # serves examples/config.yml
#   docker run --rm -p 127.0.0.1:8490:8490 -v "$PWD/my.yml:/etc/mlmon/mlmon.yml:ro" mlmon:local
#   docker run -d -p 127.0.0.1:8490:8490 -v mlmon-data:/var/lib/mlmon mlmon:local   # state kept in a volume
#
# The exporter keeps its state (journal and snapshots, docs/durability.md) in /var/lib/mlmon
# (MLMON_STORAGE_PATH, which overrides storage.path of the config). Mount a named volume there: Docker
# initialises a new one with the directory's owner (uid 10001) and mode. A bind mount must be writable by
# uid 10001 (chown 10001:10001 DIR).
#
# The same image runs `python examples/model_server.py` and `python examples/traffic.py` (override the
# entrypoint with `python`); docker-compose.yml does that.

# Both stages use the same base, pinned by exact tag: Python 3.11 on Debian bookworm, the Debian release
# the tests run on. Bump both lines together (tests/bundle/test_compose.py checks that they agree).

# --- build: install the package and its extras into a virtualenv: `demo` (scikit-learn), `redis` (the shared
# join store, joins.backend: redis), `report` (matplotlib, for `mlmon report`), `mlflow` (mlflow-skinny, for
# registry.tracking_uri look-ups) and `arrow` (pyarrow, for Arrow ingest) ---------------------------------------
FROM python:3.11.15-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# pyproject.toml names README.md as the long description, so the build needs it.
COPY pyproject.toml README.md ./
COPY exporter ./exporter
COPY clients/python/mlmon_client ./clients/python/mlmon_client
# No lock file: the version ranges of pyproject.toml apply, as for `pip install mlmon`.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir '.[demo,redis,report,mlflow,arrow]' \
    && mlmon --version \
    && python -c 'import redis, matplotlib, mlflow, pyarrow'

# --- runtime: the virtualenv and the examples, run as an unprivileged user ---------------------------------
FROM python:3.11.15-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="mlmon" \
      org.opencontainers.image.description="Prometheus exporter for machine-learning models, with the demo model server" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/app \
    MLMON_STORAGE_PATH=/var/lib/mlmon
# The data directory belongs to the exporter's user alone (the snapshot is a pickle mlmon trusts). No VOLUME
# instruction: it would leave an anonymous volume behind every `docker run`; mount a named one instead.
RUN groupadd --system --gid 10001 mlmon \
    && useradd --system --uid 10001 --gid mlmon --home-dir /app --no-create-home --shell /usr/sbin/nologin mlmon \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/mlmon
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY examples ./examples
# A default config, so that the image serves something without a mount; the compose stack mounts
# examples/demo/mlmon.yml over it.
COPY examples/config.yml /etc/mlmon/mlmon.yml
# Numeric, so that a runtime that checks for non-root (Kubernetes runAsNonRoot) can verify it.
USER 10001:10001
EXPOSE 8490
# No curl in the image: Python's urllib asks /readyz (503 while shutting down, which urlopen raises on).
# MLMON_PORT is honoured because `mlmon serve` reads it too.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('MLMON_PORT', '8490'), timeout=4)"]
ENTRYPOINT ["mlmon"]
CMD ["serve", "--config", "/etc/mlmon/mlmon.yml", "--host", "0.0.0.0"]
