"""Figures of a listening test's results, built from the results dict alone (no request, no database).

Plotly figures are plain ``{"data": [...], "layout": {...}}`` dicts that plotly.js draws as they are (building
them with ``plotly.graph_objects`` would validate every trace for nothing). :func:`scores_svg` draws the
score box plot as a static SVG for the printable report, which loads no script.
"""

from __future__ import annotations

import html
import math

from evalsite.analysis.availability import MIN_CORRELATION_POINTS

ROLE_COLORS = {
    "system": "#1f77b4",
    "hidden_reference": "#2ca02c",
    "anchor_lp35": "#7f7f7f",
    "anchor_lp70": "#bcbd22",
    "comparison": "#9467bd",
}
KEPT_COLOR, ALL_COLOR = "#1f77b4", "#ff7f0e"
FLAG_COLOR, REGION_COLOR = "#d62728", "rgba(214, 39, 40, 0.15)"
MAX_SCATTERS = 12
CORRECTION_NAMES = {"holm": "Holm", "hochberg": "Hochberg"}


def _label(row: dict) -> str:
    """A system's label; CMOS rows are a system relative to its comparison."""
    return (
        f"{row['system']} vs {row['comparison']}" if row.get("comparison") is not None else str(row["system"])
    )


def _fmt(value, digits: int = 2) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and not math.isfinite(value))
        else f"{value:.{digits}f}"
    )


def _scale_range(results: dict) -> list[float] | None:
    scale = results.get("design", {}).get("scale") or {}
    if "min" in scale and "max" in scale:
        pad = 0.04 * (scale["max"] - scale["min"])
        return [scale["min"] - pad, scale["max"] + pad]
    return None


def _base_layout(title: str, **extra) -> dict:
    return {
        "title": {"text": title},
        "margin": {"l": 60, "r": 20, "t": 50, "b": 120},
        "height": 420,
        "template": "plotly_white",
        **extra,
    }


def scores_figure(results: dict, which: str = "kept") -> dict | None:
    """Box plots per system (median, IQR, Tukey whiskers) with the mean and its 95 % bootstrap interval."""
    scores = (results.get("scores") or {}).get(which) or []
    if not scores:
        return None
    data = []
    for row in scores:
        name = _label(row)
        data.append(
            {
                "type": "box",
                "name": name,
                "x": [name],
                "q1": [row.get("box_q1")],
                "median": [row.get("box_median")],
                "q3": [row.get("box_q3")],
                "lowerfence": [row.get("box_lowerfence")],
                "upperfence": [row.get("box_upperfence")],
                "boxpoints": False,
                "showlegend": False,
                "marker": {"color": ROLE_COLORS.get(row.get("role") or "system", "#1f77b4")},
                "hoverinfo": "name+y",
            }
        )
    data.append(
        {
            "type": "scatter",
            "mode": "markers",
            "name": "mean ± 95% bootstrap CI",
            "x": [_label(r) for r in scores],
            "y": [r["mean"] for r in scores],
            "error_y": {
                "type": "data",
                "symmetric": False,
                "array": [None if r["boot_high"] is None else r["boot_high"] - r["mean"] for r in scores],
                "arrayminus": [None if r["boot_low"] is None else r["mean"] - r["boot_low"] for r in scores],
                "color": "#000",
                "thickness": 1.5,
                "width": 6,
            },
            "marker": {"symbol": "diamond", "size": 9, "color": "#000"},
            "customdata": [[r["n"], r["listeners"], r.get("ci_low"), r.get("ci_high")] for r in scores],
            "hovertemplate": (
                "%{x}<br>mean %{y:.2f}<br>n %{customdata[0]} ratings, %{customdata[1]} listeners"
                "<br>t CI %{customdata[2]:.2f}–%{customdata[3]:.2f}<extra></extra>"
            ),
        }
    )
    kind = results["test"]["kind"]
    # Titles take a short first line and a smaller second one: one long line was cut off on a phone.
    title = "Scores per condition" + (" — screened listeners" if which == "kept" else " — all listeners")
    title += "<br><sup>box: median and IQR; ◆ mean with 95% bootstrap CI</sup>"
    layout = _base_layout(
        title,
        yaxis={"title": {"text": "CMOS" if kind == "cmos" else "score"}, "range": _scale_range(results)},
        # The legend sits between the two-line title and the plot, with room for both (they overlapped at 390 px).
        legend={"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"},
        margin={"l": 60, "r": 20, "t": 100, "b": 120},
    )
    if kind == "cmos":
        layout["shapes"] = [
            {
                "type": "line",
                "xref": "paper",
                "x0": 0,
                "x1": 1,
                "y0": 0,
                "y1": 0,
                "line": {"dash": "dot", "color": "#555"},
            }
        ]
    return {"data": data, "layout": layout}


def exclusions_figure(results: dict) -> dict | None:
    """Mean and 95 % bootstrap interval per system with and without the excluded listeners, side by side."""
    scores = results.get("scores") or {}
    kept, every = scores.get("kept") or [], scores.get("all") or []
    if not every:
        return None
    order = [_label(r) for r in (kept or every)]
    order += [_label(r) for r in every if _label(r) not in order]
    data = []
    for rows, name, color, offset in (
        (kept, "screened listeners", KEPT_COLOR, -0.12),
        (every, "all listeners", ALL_COLOR, 0.12),
    ):
        by = {_label(r): r for r in rows}
        xs = [k + offset for k, label in enumerate(order) if label in by]
        picked = [by[label] for label in order if label in by]
        data.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": name,
                "x": xs,
                "y": [r["mean"] for r in picked],
                "text": [_label(r) for r in picked],
                "error_y": {
                    "type": "data",
                    "symmetric": False,
                    "array": [None if r["boot_high"] is None else r["boot_high"] - r["mean"] for r in picked],
                    "arrayminus": [
                        None if r["boot_low"] is None else r["mean"] - r["boot_low"] for r in picked
                    ],
                },
                "marker": {"color": color, "size": 9},
                "hovertemplate": "%{text}<br>mean %{y:.2f}<extra>" + name + "</extra>",
            }
        )
    layout = _base_layout(
        "Mean with 95% bootstrap CI<br><sup>with and without exclusions</sup>",
        xaxis={"tickvals": list(range(len(order))), "ticktext": order, "zeroline": False},
        yaxis={"title": {"text": "score"}, "range": _scale_range(results)},
        # The legend sits between the two-line title and the plot, with room for both (they overlapped at 390 px).
        legend={"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"},
        margin={"l": 60, "r": 20, "t": 100, "b": 120},
    )
    return {"data": data, "layout": layout}


def significance_figure(results: dict) -> dict | None:
    """Heat map of adjusted pairwise p-values (−log10), annotated with the mean difference row − column.

    The correction is the one the results were read under (:func:`~evalsite.analysis.compute.
    pairwise_for_correction` sets ``correction`` and ``p_adjusted``); stored results are Holm's."""
    pairwise = results.get("pairwise") or {}
    matrix = pairwise.get("matrix")
    if not matrix or len(matrix["systems"]) < 2:
        return None
    correction = CORRECTION_NAMES.get(pairwise.get("correction", "holm"), "Holm")
    p = matrix.get("p_adjusted", matrix["p_holm"])
    systems, diff, sig = matrix["systems"], matrix["mean_diff"], matrix["significant"]
    z = [[None if v is None else min(10.0, -math.log10(max(v, 1e-300))) for v in row] for row in p]
    if all(v is None for row in z for v in row):
        return None  # no pair has a p-value yet: a blank grid says nothing; the page states what is missing
    size = range(len(systems))
    text = [
        [("" if diff[i][j] is None else f"{diff[i][j]:+.1f}{' *' if sig[i][j] else ''}") for j in size]
        for i in size
    ]
    hover = [
        [
            (
                ""
                if p[i][j] is None
                else f"{systems[i]} − {systems[j]}: Δ {_fmt(diff[i][j])}, p({correction}) {p[i][j]:.3g}"
            )
            for j in range(len(systems))
        ]
        for i in range(len(systems))
    ]
    alpha = results.get("alpha", 0.05)
    data = [
        {
            "type": "heatmap",
            "x": systems,
            "y": systems,
            "z": z,
            "text": text,
            "texttemplate": "%{text}",
            "customdata": hover,
            "hovertemplate": "%{customdata}<extra></extra>",
            "zmin": 0,
            "zmax": 10,
            "colorscale": "Blues",
            "reversescale": True,
            "colorbar": {"title": {"text": f"−log10 p ({correction})"}},
        }
    ]
    layout = _base_layout(
        f"Pairwise Wilcoxon signed-rank, {correction}-corrected<br><sup>* p < {alpha:g}; cell: mean of row − column</sup>",
        height=max(360, 60 + 45 * len(systems)),
        yaxis={"autorange": "reversed"},
        margin={"l": 200, "r": 20, "t": 60, "b": 160},
    )
    return {"data": data, "layout": layout}


def preference_figure(results: dict) -> dict | None:
    """AB: share of decided answers preferring the first system of each pair, with its Wilson 95 % interval."""
    rows = (results.get("preference") or {}).get("kept") or []
    if not rows:
        return None
    labels = [f"{r['system_a']} over {r['system_b']}" for r in rows]
    data = [
        {
            "type": "scatter",
            "mode": "markers",
            "x": [r["preference_rate"] for r in rows],
            "y": labels,
            "error_x": {
                "type": "data",
                "symmetric": False,
                "array": [
                    None if r["ci_high"] is None else r["ci_high"] - r["preference_rate"] for r in rows
                ],
                "arrayminus": [
                    None if r["ci_low"] is None else r["preference_rate"] - r["ci_low"] for r in rows
                ],
            },
            "customdata": [[r["wins"], r["losses"], r["ties"], r["p_holm"]] for r in rows],
            "hovertemplate": (
                "%{y}: %{x:.2f}<br>%{customdata[0]} wins, %{customdata[1]} losses, %{customdata[2]} "
                "ties<br>sign test p(Holm) %{customdata[3]:.3g}<extra></extra>"
            ),
            "marker": {"size": 10, "color": KEPT_COLOR},
        }
    ]
    layout = _base_layout(
        "Preference rate with Wilson 95% CI (ties dropped)",
        xaxis={"range": [0, 1], "title": {"text": "share preferring the first system"}},
        shapes=[
            {
                "type": "line",
                "x0": 0.5,
                "x1": 0.5,
                "yref": "paper",
                "y0": 0,
                "y1": 1,
                "line": {"dash": "dot", "color": "#555"},
            }
        ],
        margin={"l": 320, "r": 20, "t": 50, "b": 60},
    )
    return {"data": data, "layout": layout}


def bradley_terry_figure(results: dict) -> dict | None:
    """AB: Bradley–Terry log-strength per system with its Wald 95 % interval (scores average 0)."""
    bt = (results.get("preference") or {}).get("bradley_terry") or {}
    rows = bt.get("rows") or []
    if not bt.get("ok") or not rows:
        return None
    data = [
        {
            "type": "scatter",
            "mode": "markers",
            "x": [r["score"] for r in rows],
            "y": [str(r["system"]) for r in rows],
            "error_x": {
                "type": "data",
                "symmetric": False,
                "array": [r["ci_high"] - r["score"] for r in rows],
                "arrayminus": [r["score"] - r["ci_low"] for r in rows],
            },
            "customdata": [[r["worth"], r["wins"], r["losses"]] for r in rows],
            "hovertemplate": (
                "%{y}: %{x:.2f}<br>worth %{customdata[0]:.3f}, %{customdata[1]} wins, "
                "%{customdata[2]} losses<extra></extra>"
            ),
            "marker": {"size": 10, "color": KEPT_COLOR},
        }
    ]
    layout = _base_layout(
        "Bradley–Terry score (log-strength, mean 0) with Wald 95% CI",
        xaxis={"title": {"text": "log-strength"}, "zeroline": True},
        yaxis={"autorange": "reversed"},
        margin={"l": 200, "r": 20, "t": 50, "b": 60},
    )
    return {"data": data, "layout": layout}


def flag_systems_figure(results: dict) -> dict | None:
    """Share of presentations flagged per system, with the false-flag rate measured on hidden references."""
    f = results.get("flags") or {}
    rows = f.get("systems") or []
    if not rows or not f.get("flags"):
        return None
    base = (f.get("baseline") or {}).get("rate")
    data = [
        {
            "type": "bar",
            "x": [r["system"] for r in rows],
            "y": [r["share"] for r in rows],
            "customdata": [
                [r["flagged_presentations"], r["presentations"], r["stimuli_significant"]] for r in rows
            ],
            "hovertemplate": (
                "%{x}: %{y:.1%} (%{customdata[0]} of %{customdata[1]} presentations; "
                "%{customdata[2]} stimuli above the false-flag rate)<extra></extra>"
            ),
            "marker": {"color": [ROLE_COLORS.get(r["role"], "#1f77b4") for r in rows]},
        }
    ]
    layout = _base_layout(
        "Share of presentations flagged per condition<br><sup>dotted: false-flag rate</sup>",
        yaxis={"tickformat": ".0%", "title": {"text": "flagged"}},
    )
    if base is not None:
        layout["shapes"] = [
            {
                "type": "line",
                "xref": "paper",
                "x0": 0,
                "x1": 1,
                "y0": base,
                "y1": base,
                "line": {"dash": "dot", "color": FLAG_COLOR},
            }
        ]
    return {"data": data, "layout": layout}


def flag_timeline_figure(timeline: dict) -> dict:
    """Share of listeners whose flags cover each moment of one stimulus, with the merged regions shaded."""
    regions = timeline.get("regions") or []
    # Step plot over bin edges: each share holds from its bin's start to the next bin's start.
    step = timeline["resolution_s"]
    edges = [round(t - step / 2, 6) for t in timeline["times"]] + [timeline["duration_s"]]
    shares = list(timeline["density"]) + (timeline["density"][-1:] or [0.0])
    data = [
        {
            "type": "scatter",
            "mode": "lines",
            "x": edges,
            "y": shares,
            "line": {"shape": "hv", "color": FLAG_COLOR},
            "fill": "tozeroy",
            "name": "flag density",
            "hovertemplate": "%{x:.2f} s: %{y:.0%} of listeners<extra></extra>",
        }
    ]
    shapes = [
        {
            "type": "rect",
            "xref": "x",
            "yref": "paper",
            "x0": r["start_s"],
            "x1": r["end_s"],
            "y0": 0,
            "y1": 1,
            "fillcolor": REGION_COLOR,
            "line": {"width": 0},
        }
        for r in regions
    ]
    annotations = [
        {
            "x": (r["start_s"] + r["end_s"]) / 2,
            "y": 1,
            "yref": "paper",
            "showarrow": False,
            "text": f"{r['n_listeners']}/{r['heard']} · " + ", ".join(sorted(r.get("categories") or {})),
            "font": {"size": 11},
        }
        for r in regions
    ]
    heard = timeline["heard"]
    title = (
        f"{timeline['item']} · {timeline['system']}<br><sup>{timeline['flagged']} of {heard} "
        f"listener{'' if heard == 1 else 's'} flagged (p = "
        f"{'–' if timeline.get('p') is None else format(timeline['p'], '.2g')})</sup>"
    )
    layout = _base_layout(
        title,
        height=250,
        margin={"l": 60, "r": 20, "t": 55, "b": 40},
        xaxis={"range": [0, timeline["duration_s"]], "title": {"text": "seconds"}},
        yaxis={"range": [0, 1.05], "tickformat": ".0%"},
        shapes=shapes,
        annotations=annotations,
        showlegend=False,
    )
    return {"data": data, "layout": layout}


def _corr_title(metric: str, row: dict | None, level: str) -> str:
    """Two short lines (a long metric name and the statistics on one line overflowed a 540 px chart and ran
    into its neighbour's title): the metric and level, then the coefficients or what they need."""
    head = f"<b>{html.escape(metric)}</b> · {level} level"
    if not row:
        return head
    if row.get("pearson_r") is None:
        what = "conditions" if level == "system" else "item × condition cells"
        return (
            f"{head}<br><span style='font-size:12px'>r, ρ, τ need at least {MIN_CORRELATION_POINTS} {what} "
            f"(has {row.get('n')})</span>"
            if (row.get("n") or 0) < MIN_CORRELATION_POINTS
            else f"{head}<br><span style='font-size:12px'>r, ρ, τ undefined: {html.escape(row.get('note') or '')}</span>"
        )
    stats = (
        f"r {_fmt(row.get('pearson_r'))}, ρ {_fmt(row.get('spearman_rho'))}, τ {_fmt(row.get('kendall_tau'))}, "
        f"n {row.get('n')}"
    )
    return f"{head}<br><span style='font-size:12px'>{stats}</span>"


def _padded_range(values: list) -> list[float] | None:
    """The values' range with 15 % room each side, so markers and their labels are not cut at the plot edge."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    low, high = min(finite), max(finite)
    pad = 0.15 * (high - low) if high > low else max(abs(high) * 0.1, 1.0)
    return [low - pad, high + pad]


def metric_scatter_figure(results: dict, metric: str, level: str = "system") -> dict | None:
    """Human score against one metric at system or item level, titled with Pearson r, Spearman ρ, Kendall τ, n."""
    corr = results.get("correlations") or {}
    points = (corr.get("points") or {}).get(level, {}).get(metric)
    if not points or not points.get("human"):
        return None
    row = next((r for r in corr.get(level) or [] if r["metric"] == metric), None)
    if level == "system":
        text = points["systems"]
        mode = "markers+text"
        # Labels lean inwards: centred labels of the outermost points were cut by the plot's edges.
        xs = [v for v in points["metric"] if v is not None]
        middle = (min(xs) + max(xs)) / 2 if xs else 0
        position = ["top right" if v is not None and v < middle else "top left" for v in points["metric"]]
    else:
        text = [f"{s} · {i}" for s, i in zip(points["systems"], points["items"])]
        mode = "markers"
    data = [
        {
            "type": "scatter",
            "mode": mode,
            "x": points["metric"],
            "y": points["human"],
            "text": text,
            "textposition": position if level == "system" else "top center",
            "cliponaxis": False,
            "marker": {"size": 10 if level == "system" else 6, "opacity": 0.8},
            "hovertemplate": "%{text}<br>" + metric + " %{x:.3g}<br>human %{y:.2f}<extra></extra>",
        }
    ]
    layout = _base_layout(
        _corr_title(metric, row, level),
        height=360,
        margin={"l": 60, "r": 30, "t": 70, "b": 50},
        xaxis={"title": {"text": metric}, "range": _padded_range(points["metric"])},
        yaxis={"title": {"text": "human score"}, "range": _padded_range(points["human"])},
    )
    layout["title"]["font"] = {"size": 14}
    return {"data": data, "layout": layout}


def page_figures(results: dict) -> dict[str, dict]:
    """Every figure of the test page, keyed by the id of the element that shows it."""
    figures = {
        "fig_scores": scores_figure(results, "kept"),
        "fig_exclusions": exclusions_figure(results),
        "fig_significance": significance_figure(results),
        "fig_preference": preference_figure(results),
        "fig_bradley_terry": bradley_terry_figure(results),
        "fig_flag_systems": flag_systems_figure(results),
    }
    for k, timeline in enumerate((results.get("flags") or {}).get("timelines") or []):
        figures[f"fig_timeline_{k}"] = flag_timeline_figure(timeline)
    names = [m["name"] for m in (results.get("correlations") or {}).get("metrics") or []][:MAX_SCATTERS]
    for k, name in enumerate(names):
        for level in ("system", "item"):
            figures[f"fig_metric_{level}_{k}"] = metric_scatter_figure(results, name, level)
    return {key: fig for key, fig in figures.items() if fig is not None}


def scores_svg(results: dict, which: str = "kept", width: int = 720, height: int = 320) -> str:
    """A static SVG box plot (median, IQR, whiskers) with mean ◆ and 95 % bootstrap interval, for the report."""
    rows = (results.get("scores") or {}).get(which) or []
    if not rows:
        return ""
    values = [
        v
        for r in rows
        for v in (
            r.get("box_lowerfence"),
            r.get("box_upperfence"),
            r.get("boot_low"),
            r.get("boot_high"),
            r.get("mean"),
        )
        if v is not None
    ]
    scale = (results.get("design") or {}).get("scale") or {}
    low = min([scale.get("min", min(values))] + values)
    high = max([scale.get("max", max(values))] + values)
    left, right, top, bottom = 50, 90, 10, 110
    plot_w, plot_h = width - left - right, height - top - bottom
    span = (high - low) or 1.0

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - low) / span)

    step = plot_w / len(rows)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="box plot of scores per condition" font-family="sans-serif" font-size="11">'
    ]
    for k in range(6):
        v = low + span * k / 5
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>'
        )
    for k, r in enumerate(rows):
        cx = left + step * (k + 0.5)
        half = min(18.0, step * 0.3)
        color = ROLE_COLORS.get(r.get("role") or "system", "#1f77b4")
        if r.get("box_q1") is not None:
            parts.append(
                f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(r["box_lowerfence"]):.1f}" '
                f'y2="{y(r["box_upperfence"]):.1f}" stroke="{color}"/>'
                f'<rect x="{cx - half:.1f}" y="{y(r["box_q3"]):.1f}" width="{2 * half:.1f}" '
                f'height="{max(0.5, y(r["box_q1"]) - y(r["box_q3"])):.1f}" fill="{color}" fill-opacity="0.25" '
                f'stroke="{color}"/>'
                f'<line x1="{cx - half:.1f}" x2="{cx + half:.1f}" y1="{y(r["box_median"]):.1f}" '
                f'y2="{y(r["box_median"]):.1f}" stroke="{color}" stroke-width="2"/>'
            )
        if r.get("boot_low") is not None:
            parts.append(
                f'<line x1="{cx + half + 6:.1f}" x2="{cx + half + 6:.1f}" y1="{y(r["boot_low"]):.1f}" '
                f'y2="{y(r["boot_high"]):.1f}" stroke="#000" stroke-width="1.5"/>'
            )
        my = y(r["mean"])
        parts.append(f'<path d="M{cx + half + 6:.1f},{my - 5:.1f} l5,5 l-5,5 l-5,-5 z" fill="#000"/>')
        label = html.escape(_label(r))
        parts.append(
            f'<text transform="translate({cx:.1f},{height - bottom + 12}) rotate(35)">{label}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
