"""mlmon: watch machine-learning models in production with Prometheus, Grafana and Alertmanager."""

__version__ = "0.1.0"
