"""The HTTP stack alone: Flask and waitress with the settings `mlmon serve` uses (exporter/cli.py
``_create_server``), and one route that reads the request body and answers as mlmon's ingest answers. What
every served batch pays before mlmon's own work (decoding, journal, windows), measured by
bench/bench_ingest.py ``http_floor``.

    python bench/http_floor.py PORT
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask import Flask, request  # noqa: E402

from exporter.cli import _create_server  # noqa: E402

ANSWER = b'{"accepted":1000,"duplicates":0}'


def main(port: int) -> None:
    app = Flask("http_floor")

    @app.post("/api/v1/predictions")
    def predictions():
        request.get_data(cache=False)
        return app.response_class(ANSWER, status=202, mimetype="application/json")

    @app.get("/readyz")
    def ready():
        return "ready"

    _create_server(app, "127.0.0.1", port, False, 8, 1 << 20).run()


if __name__ == "__main__":
    main(int(sys.argv[1]))
