"""The dashboards load plotly's partial cartesian bundle (static/vendor/plotly/): it must carry every trace
type the figure builders draw, be the file recorded in bundle.json, and match the python plotly package's
plotly.js version. A figure with a new trace type (say "violin" is fine, "scattergl" is not) fails here,
naming the type, before a dashboard shows an empty chart."""

import ast
import importlib.util
import json
import shutil
from pathlib import Path

import plotly.offline
import pytest

REPO = Path(__file__).resolve().parents[2]
# benchmarks/ is a folder of scripts, not a package: load the bundle tool by path.
_spec = importlib.util.spec_from_file_location("plotly_bundle", REPO / "benchmarks" / "plotly_bundle.py")
plotly_bundle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plotly_bundle)

RECORD = json.loads((REPO / "static" / "vendor" / "plotly" / "bundle.json").read_text())
BUNDLE = (REPO / "static" / "vendor" / "plotly" / RECORD["file"]).read_bytes()
FULL = plotly.offline.get_plotlyjs().encode()


def bundle_trace_types() -> set[str]:
    return plotly_bundle.trace_types(BUNDLE)


def trace_types_in_source() -> dict[str, list[str]]:
    """Every trace type a dict literal in evalsite's code names ({"type": "box", ...}), with where. Layout
    and shape dicts have "type" too ("log", "rect", "line", "data"): only names that are trace types in
    the full plotly.js count."""
    every_trace = plotly_bundle.trace_types(FULL)
    found: dict[str, list[str]] = {}
    for path in sorted((REPO / "evalsite").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Dict):
                continue
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and key.value == "type"
                    and isinstance(value, ast.Constant)
                    and value.value in every_trace
                ):
                    found.setdefault(value.value, []).append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_the_parser_reads_the_trace_modules_of_plotlys_bundles():
    # The full bundle registers dozens, the cartesian one a dozen: the parser sees both, and what the
    # Chromium check (tests/integration/test_static_files_browser.py) reads from Plotly.PlotSchema.
    full, partial = plotly_bundle.trace_types(FULL), bundle_trace_types()
    assert {"scatter", "bar", "box", "heatmap", "scattergl", "scatter3d", "parcoords"} <= full
    assert partial == set(RECORD["trace_types"])
    assert partial < full and "scattergl" not in partial and "scatter3d" not in partial
    assert plotly_bundle.trace_types(b"var x = 1;") == set()


def test_every_trace_type_the_figure_builders_draw_is_in_the_bundle():
    used = trace_types_in_source()
    # The scan itself works: the figure modules draw these today (a scan that found nothing would pass
    # the next assertion vacuously).
    assert {"scatter", "bar", "box", "heatmap"} <= set(used), used
    missing = {t: where for t, where in used.items() if t not in bundle_trace_types()}
    assert not missing, (
        f"trace types drawn but not in {RECORD['package']}: {missing}; vendor a bundle that has them "
        "(benchmarks/plotly_bundle.py --fetch --version ..., another plotly.js-*-dist-min package)"
    )


def test_the_vendored_file_is_the_recorded_one_at_the_python_packages_plotly_js_version():
    assert plotly_bundle.sha256(BUNDLE) == RECORD["sha256"]
    assert plotly_bundle.header_version(BUNDLE) == RECORD["version"]
    # Figures are written against the plotly.js the python package documents; keep them in step.
    assert RECORD["version"] == plotly.offline.get_plotlyjs_version()
    assert (REPO / "static" / "vendor" / "plotly" / "LICENSE").read_text().startswith("MIT License")
    assert BUNDLE.startswith(b"/**\n* plotly.js (cartesian - minified) v")  # licence header kept


def test_a_changed_or_truncated_bundle_is_refused_by_the_verifier(tmp_path, monkeypatch):
    vendor = tmp_path / "plotly"
    shutil.copytree(REPO / "static" / "vendor" / "plotly", vendor)
    monkeypatch.setattr(plotly_bundle, "VENDOR", vendor)
    monkeypatch.setattr(plotly_bundle, "RECORD", vendor / "bundle.json")
    plotly_bundle.verify()  # the copy as vendored passes
    target = vendor / RECORD["file"]
    target.write_bytes(BUNDLE.replace(b'name:"violin"', b'name:"violim"', 1))
    with pytest.raises(SystemExit, match="sha256 .* != recorded"):
        plotly_bundle.verify()
    target.write_bytes(b"/* not plotly */")
    with pytest.raises(ValueError, match="licence header"):
        plotly_bundle.verify()
