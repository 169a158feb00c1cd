"""The package's layers, and that imports only point down (a module may import its own layer and those below).

cli, demo, retrain, report, client  the command line (retrain: the retraining hook; report: `mlmon report`)
                           and the light client's re-export
serve                      app factory and routes, /metrics families, exposition, OpenAPI
engine                     per-model state, joins, durability
ingest                     validation, the fast decoder, columns for the statistics
stats                      windows, histograms, quality, drift, reference, binning
config                     the config file's schema
security                   tokens, audit, web config, TLS
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "exporter"
LAYERS = ["security", "config", "stats", "ingest", "engine", "serve", "top"]
TOP_MODULES = {"cli", "demo", "retrain", "report", "client", "logs", "__main__"}


def layer(module: str) -> str | None:
    """The layer of a module of the package (``exporter.stats.drift`` -> stats); None for the package itself."""
    parts = module.split(".")
    if parts[0] != "exporter":
        return None
    if len(parts) == 1:
        return None  # `from exporter import __version__`: the package's own name, below everything
    if parts[1] in LAYERS:
        return parts[1]
    if parts[1] in TOP_MODULES:
        return "top"
    raise AssertionError(f"{module}: a module outside the layers; add it to one (tests/test_layout.py)")


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(p for p in rel.parts if p != "__init__")
        out[name] = path
    return out


def imports(path: Path, module: str) -> set[str]:
    """Every exporter module that ``path`` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("exporter"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("exporter"):
            found.add(node.module)
            # `from exporter.stats import drift` imports the module exporter.stats.drift
            for a in node.names:
                if f"{node.module}.{a.name}" in MODULES:
                    found.add(f"{node.module}.{a.name}")
    return found


MODULES = modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_only_down(module):
    mine = layer(module)
    if mine is None:
        return
    for target in sorted(imports(MODULES[module], module)):
        theirs = layer(target)
        if theirs is None:
            continue
        assert LAYERS.index(theirs) <= LAYERS.index(mine), f"{module} ({mine}) imports {target} ({theirs})"


def test_the_statistics_never_import_ingest_serve_or_the_engine():
    stats = [m for m in MODULES if layer(m) == "stats"]
    assert {"exporter.stats.window", "exporter.stats.drift", "exporter.stats.binning"} <= set(stats)
    for module in stats:
        for target in imports(MODULES[module], module):
            assert layer(target) not in ("ingest", "engine", "serve", "top"), f"{module} imports {target}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The test above can fail: a stats module that imports the fast decoder is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from exporter.ingest import fastpath\n    return fastpath\n")
    found = imports(bad, "exporter.stats.bad")
    assert "exporter.ingest.fastpath" in found and layer("exporter.ingest.fastpath") == "ingest"


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer(module)  # raises for a module outside the layers


def test_every_package_ships_in_the_wheel():
    """pyproject.toml lists the packages by name: a new sub-package left out would be missing from the wheel
    (and the Docker image) while an editable install still works."""
    import tomllib

    listed = set(tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {".".join(p.parent.relative_to(ROOT.parent).parts) for p in ROOT.rglob("__init__.py")}
    assert packages <= listed, f"add to [tool.setuptools] packages: {sorted(packages - listed)}"
