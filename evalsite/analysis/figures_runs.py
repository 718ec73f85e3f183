"""Plotly figures of the run analysis page, built as plain figure dicts from ``run_selectors`` values.

Plain dicts (``{"data": [...], "layout": {...}}``) rather than ``plotly.graph_objects`` keep building a
page with dozens of charts cheap (no validation pass) and make the figures easy to assert on in tests.
The browser draws them with ``Plotly.newPlot(div, figure.data, figure.layout)``.
"""

from __future__ import annotations

from typing import Any

COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
CHART_HEIGHT = 300
# How far below the smallest non-zero detector rate a zero rate is drawn on the log axis.
ZERO_RATE_DECADES_BELOW = 1

LEADER_WORDS = {
    "best": "best",
    "tied": "leading, tied",
    "top": "leading, no interval",
    "only": "only value",
}
"""What a run chart's star says, by ``analysis.leaders.leaders_mark``: filled only for "best"."""


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def direction_arrow(higher_is_better: bool | None) -> str:
    """↑ when higher is better, ↓ when lower is better, nothing when the metric has no direction."""
    return "↑" if higher_is_better else "" if higher_is_better is None else "↓"


def _layout(title: str, y_title: str, *, legend: bool) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 14}},
        "height": CHART_HEIGHT + (60 if legend else 0),
        "margin": {"l": 60, "r": 20, "t": 40, "b": 100 if legend else 40},
        "xaxis": {"title": {"text": "step"}},
        "yaxis": {"title": {"text": y_title}},
        "showlegend": legend,
        "legend": {"orientation": "h", "x": 0, "y": -0.3, "yanchor": "top"},
        "hovermode": "closest",
    }


def metric_figure(metric: dict[str, Any]) -> dict[str, Any]:
    """One metric over checkpoint step: per comparable series a line, its 95 % CI band where the results
    have one, and a star on the best checkpoint; the title carries the direction (↑ / ↓)."""
    hib = metric["higher_is_better"]
    data: list[dict[str, Any]] = []
    for index, series in enumerate(metric["series"]):
        colour = COLOURS[index % len(COLOURS)]
        group = f"{metric['name']}:{series['spec_key']}:{series['params_hash']}"
        if any(v is not None for v in series["ci_low"]) and any(v is not None for v in series["ci_high"]):
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "x": series["steps"],
                    "y": series["ci_high"],
                    "line": {"width": 0},
                    "hoverinfo": "skip",
                    "showlegend": False,
                    "legendgroup": group,
                    "name": f"{series['label']} CI high",
                }
            )
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "x": series["steps"],
                    "y": series["ci_low"],
                    "line": {"width": 0},
                    "fill": "tonexty",
                    "fillcolor": _rgba(colour, 0.2),
                    "hoverinfo": "skip",
                    "showlegend": False,
                    "legendgroup": group,
                    "name": f"{series['label']} 95% CI",
                }
            )
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "x": series["steps"],
                "y": series["values"],
                "name": series["label"],
                "legendgroup": group,
                "line": {"color": colour},
                "marker": {"size": 5},
                "customdata": [
                    [n, lo, hi] for n, lo, hi in zip(series["n"], series["ci_low"], series["ci_high"])
                ],
                "hovertemplate": (
                    "step %{x}<br>value %{y:.4g}<br>95% CI [%{customdata[1]:.4g}, %{customdata[2]:.4g}]"
                    "<br>n %{customdata[0]}<extra>" + series["label"] + "</extra>"
                ),
            }
        )
        if series["best"] is not None:
            best = series["best"]
            said = LEADER_WORDS[best["mark"]]
            data.append(
                {
                    "type": "scatter",
                    "mode": "markers",
                    "x": [best["step"]],
                    "y": [best["value"]],
                    "name": f"{said}: step {best['step']}",
                    "legendgroup": group,
                    "marker": {
                        "symbol": "star" if best["mark"] == "best" else "star-open",
                        "size": 15,
                        "color": colour,
                        "line": {"width": 1, "color": "#000"},
                    },
                    "hovertemplate": said + ": step %{x}<br>%{y:.4g}<extra></extra>",
                }
            )
    direction = {True: " (higher is better)", False: " (lower is better)"}.get(hib, "")
    title = " ".join(p for p in (metric["name"], direction_arrow(hib)) if p) + direction
    steps = sorted({step for series in metric["series"] for step in series["steps"]})
    if len(steps) == 1:
        title += "<br><sup>1 checkpoint so far: a trend needs at least 2</sup>"
    layout = _layout(title, metric["name"], legend=len(metric["series"]) > 1)
    if len(steps) == 1:
        # One point: plotly's automatic ticks around it read "77.776k, 77.7765k"; name the one step instead.
        layout["xaxis"].update(tickvals=steps, ticktext=[str(steps[0])], range=[steps[0] - 1, steps[0] + 1])
        layout["margin"]["t"] = 55
    return {"data": data, "layout": layout}


def detector_rate_figure(rates: dict[str, Any]) -> dict[str, Any] | None:
    """Events per minute of analysed audio, one line per detector over checkpoint step, on a log axis;
    None when no checkpoint went through the detectors.

    Rates of different detectors differ by orders of magnitude (tonal_buzz fires far more often than
    clipping), so a linear axis flattens all but the loudest one. A log axis cannot show zero: a zero rate
    is drawn one decade below the smallest non-zero rate (``ZERO_RATE_DECADES_BELOW``) as an open
    triangle, and its hover gives the true 0. With no non-zero rate at all the axis stays linear.
    """
    if not rates["steps"]:
        return None
    positive = [v for values in rates["detectors"].values() for v in values["per_minute"] if v]
    zero_at = min(positive) / 10**ZERO_RATE_DECADES_BELOW if positive else 0.0
    data = []
    for index, (name, values) in enumerate(rates["detectors"].items()):
        rate = values["per_minute"]
        data.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "x": rates["steps"],
                "y": [zero_at if v == 0 else v for v in rate],
                "name": name,
                "line": {"color": COLOURS[index % len(COLOURS)]},
                "marker": {
                    "size": [9 if v == 0 else 5 for v in rate],
                    "symbol": ["triangle-down-open" if v == 0 else "circle" for v in rate],
                },
                "customdata": [
                    [e, round(m, 3), c, v]
                    for e, m, c, v in zip(values["events"], rates["minutes"], rates["clips"], rate)
                ],
                "hovertemplate": (
                    "step %{x}<br>%{customdata[3]:.3g} events/min<br>%{customdata[0]} events in"
                    " %{customdata[1]} min (%{customdata[2]} clips)<extra>" + name + "</extra>"
                ),
            }
        )
    layout = _layout("Detector events per minute of audio", "events / min", legend=True)
    layout.update(
        height=CHART_HEIGHT + 60, margin={"l": 60, "r": 20, "t": 40, "b": 40}, legend={"orientation": "v"}
    )
    if positive:
        layout["yaxis"] = {"title": {"text": "events / min (log scale)"}, "type": "log"}
        layout["margin"]["t"] = 60  # room for the note on zeros between the title and the plot
        layout["annotations"] = [
            {
                "text": f"▽ no events (0/min), drawn at {zero_at:.3g}",
                "xref": "paper",
                "yref": "paper",
                "x": 0,
                "y": 1.0,
                "xanchor": "left",
                "yanchor": "bottom",
                "showarrow": False,
                "font": {"size": 11},
            }
        ]
    return {"data": data, "layout": layout}


def run_figures(metrics: list[dict[str, Any]], rates: dict[str, Any]) -> list[dict[str, Any]]:
    """Every chart of the run analysis page as ``{"id", "figure"}``, metrics first."""
    out = [{"id": f"metric-{i}", "figure": metric_figure(m)} for i, m in enumerate(metrics) if m["series"]]
    rate = detector_rate_figure(rates)
    if rate is not None:
        out.append({"id": "detector-rates", "figure": rate})
    return out
