"""`make docs-images`: the pictures of the README, made from a real run.

It runs `mlmon demo` (the exporter, the example model server, traffic through the four phases, Prometheus and
Alertmanager), keeps a status block of the concept-drift phase with its alerts and draws it as a terminal
(docs/img/demo.png), then, once version v2 has served for a while, writes `mlmon report` over the whole run and
photographs its top in headless Chromium (docs/img/report.png). About four minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools import browser  # noqa: E402

IMG = ROOT / "docs" / "img"


def run_demo(duration: float, speed: float) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "exporter", "demo", "--plain", "--linger", "--duration", str(duration),
            "--speed", str(speed), "--status-every", "3",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return proc, lines


def blocks(lines: list[str]) -> list[list[str]]:
    """The status blocks the demo printed (each starts with "mlmon demo"), with the event lines before each."""
    out, events, current = [], [], None
    for line in lines:
        if line.startswith("mlmon demo"):
            current = [*events[-3:], line]
            out.append(current)
            events = []
        elif line.startswith("[demo]"):
            current = None
            events.append(line)
        elif current is not None:
            current.append(line)
    return out


def pick(found: list[list[str]]) -> list[str]:
    """A block of the concept-drift phase where a page fired, else the last block of that phase."""
    drift = [b for b in found if any("phase: concept_drift" in line for line in b)]
    paged = [b for b in drift if any("MlmonModelAccuracyLow" in line and "alerts firing" in line for line in b)]
    chosen = (paged or drift or found)[0 if paged else -1]
    while chosen and not chosen[-1].strip():
        chosen = chosen[:-1]
    return chosen


def draw_terminal(text_lines: list[str], path: Path, columns: int = 118) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wrapped = []
    for line in text_lines:
        while len(line) > columns:
            cut = line.rfind(", ", 0, columns)
            cut = cut + 1 if cut > 0 else columns
            wrapped.append(line[:cut])
            line = "    " + line[cut:].lstrip()
        wrapped.append(line)
    height = 0.2 * (len(wrapped) + 3)
    fig = plt.figure(figsize=(11, height), facecolor="#1e1e1e")
    fig.text(0.012, 1 - 0.1 / height, "$ make demo", family="DejaVu Sans Mono", size=9.5, color="#8ae234", va="top")
    for i, line in enumerate(wrapped):
        colour = "#fce94f" if "notification" in line else "#e6e6e6"
        if "alerts firing" in line or line.startswith("    Mlmon"):
            colour = "#ef2929"
        y = 1 - (0.1 + 0.2 * (i + 1.5)) / height
        fig.text(0.012, y, line, family="DejaVu Sans Mono", size=9.5, color=colour, va="top")
    fig.savefig(path, dpi=110, facecolor=fig.get_facecolor(), metadata={"Software": None})
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=160, help="the demo's four phases, seconds")
    parser.add_argument("--speed", type=float, default=8)
    parser.add_argument("--after", type=float, default=30, help="seconds of v2 before the report")
    parser.add_argument("--keep-html", metavar="FILE", help="keep the whole report there, to look at")
    args = parser.parse_args()
    missing = browser.available()
    if missing:
        print(f"docs-images: {missing}", file=sys.stderr)
        return 1
    IMG.mkdir(parents=True, exist_ok=True)
    started = time.time()
    proc, lines = run_demo(args.duration, args.speed)
    try:
        deadline = time.monotonic() + args.duration + args.after + 90
        prometheus = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                print("\n".join(lines), file=sys.stderr)
                print("docs-images: the demo stopped early", file=sys.stderr)
                return 1
            text = "\n".join(lines)
            if not prometheus:
                m = re.search(r"Prometheus +(http://127\.0\.0\.1:\d+)/targets", text)
                prometheus = m.group(1) if m else None
            recovery = [i for i, line in enumerate(lines) if "phase=recovery" in line]
            if recovery and time.time() - started > args.duration + args.after:
                break
            time.sleep(2)
        else:
            print("docs-images: the demo did not reach its last phase in time", file=sys.stderr)
            return 1
        chosen = pick(blocks(lines))
        draw_terminal(chosen, IMG / "demo.png")
        print(f"docs-images: wrote {IMG / 'demo.png'} ({len(chosen)} lines)")

        with tempfile.TemporaryDirectory() as tmp:
            html = Path(tmp) / "report.html"
            period = f"{int(time.time() - started) + 10}s"
            done = subprocess.run(
                [sys.executable, "-m", "exporter", "report", "--prometheus.url", prometheus, "--period", period,
                 "-o", str(html), "-q"],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )  # fmt: skip
            if done.returncode:
                print(done.stderr, file=sys.stderr)
                return 1
            page = browser.open_page(html, screenshot=IMG / "report.png", width=1280, height=1500)
            if args.keep_html:
                shutil.copyfile(html, args.keep_html)
            if page.console_errors or page.broken_images:
                print(f"docs-images: the report shows errors: {page.console_errors} {page.broken_images}")
                return 1
        print(f"docs-images: wrote {IMG / 'report.png'}")
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
