"""The HTTP surface: the Flask app factory and its routes (app), the families of /metrics (collector), the
Prometheus text format (exposition) and the OpenAPI document (openapi).

The top layer below the command line: it may import every other layer.
"""
