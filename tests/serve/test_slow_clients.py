"""Slow clients cannot stall ingest for others (a real `mlmon serve`, raw sockets on loopback).

waitress reads every request on its I/O thread and hands a request to a worker thread only once it is
complete, so connections that trickle their headers or body hold no worker: ingest from well-behaved
clients goes on at full speed meanwhile.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.serve.test_server import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]


def test_trickling_clients_do_not_stall_ingest(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "serve", "--config", "examples/config.yml", "--port", str(port)]
        + ["--storage.path", str(tmp_path / "data"), "--threads", "4"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    slow: list[socket.socket] = []
    try:
        wait_ready(url, proc)
        # Twice as many slow connections as worker threads: half send headers only, half a partial body.
        for i in range(8):
            s = socket.create_connection(("127.0.0.1", port))
            head = (
                "POST /api/v1/predictions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: 100000\r\n"
            )
            s.sendall(head.encode() if i % 2 else (head + "\r\n" + '{"predictions": [').encode())
            slow.append(s)
        body = {"predictions": [{"model": "diabetes", "prediction": float(i)} for i in range(100)]}
        session = requests.Session()
        times = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for s in slow:  # keep trickling: one byte per connection per round
                s.sendall(b" ")
            started = time.perf_counter()
            r = session.post(f"{url}/api/v1/predictions", json=body, timeout=5)
            times.append(time.perf_counter() - started)
            assert r.status_code == 202
        assert len(times) > 20
        times.sort()
        assert times[len(times) // 2] < 0.1, times  # the median request is not slowed down
        assert times[-1] < 1.0, times
    finally:
        for s in slow:
            s.close()
        proc.terminate()
        proc.wait(30)
