"""Which charts and statistics of a listening test's results can be shown, and if not, what is missing.

Read from the results dict alone (no request, no database), like the figures, so the page, the report and the
tests agree on one rule per chart: ``{"ok": True, "reason": None}`` or ``{"ok": False, "reason": "needs …
(has …)"}``. A chart that is not ok is replaced by its reason; it is never drawn empty.
"""

from __future__ import annotations

MIN_CORRELATION_POINTS = 3
"""``correlation.MIN_POINTS``, restated so this module stays free of SciPy; a test checks they agree."""
MIN_RELIABILITY_LISTENERS = 2

OK = {"ok": True, "reason": None}


def _no(reason: str) -> dict:
    return {"ok": False, "reason": reason}


def plural(n: int, one: str, many: str | None = None) -> str:
    """``1 listener``, ``2 listeners`` (``many`` for irregular plurals)."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _without_votes(results: dict) -> str | None:
    """Why nothing that needs kept ratings can be shown, or None when there are some."""
    counts = results.get("counts") or {}
    listeners, kept = counts.get("listeners", 0), counts.get("listeners_kept", 0)
    if not counts.get("ratings"):
        return "needs ratings from at least 1 listener (has 0: nobody has answered a main trial yet)"
    if not kept:
        return (
            f"needs at least 1 listener kept after screening (all {plural(listeners, 'listener')} "
            "with ratings are excluded; see Listener screening)"
        )
    return None


def _failed(results: dict, name: str) -> str | None:
    return (results.get("failed") or {}).get(name)


def _scores(results: dict) -> dict:
    if reason := _without_votes(results):
        return _no(reason)
    if (results.get("scores") or {}).get("kept") or (results.get("preference") or {}).get("kept"):
        return OK
    return _no(_failed(results, "scores") or "needs at least 1 condition with a score (has 0)")


def _significance(results: dict) -> dict:
    if reason := _without_votes(results):
        return _no(reason)
    if reason := _failed(results, "pairwise"):
        return _no(reason)
    pairwise = results.get("pairwise")
    if results.get("test", {}).get("kind") == "ab":
        return _no("AB: each pair's sign test is in the preference table")
    if not pairwise or not pairwise.get("rows"):
        conditions = len((results.get("scores") or {}).get("kept") or [])
        return _no(f"needs at least 2 conditions with scores from the same listeners (has {conditions})")
    rows = pairwise["rows"]
    if any(r.get("p") is not None for r in rows):
        return OK
    most = max((r.get("n_pairs") or 0) for r in rows)
    note = next((r["note"] for r in rows if r.get("note")), None)
    return _no(
        f"needs more paired answers: {note}"
        if note
        else f"no pair of conditions has a p-value (at most {most} pairs)"
    )


def _friedman(results: dict) -> dict:
    if results.get("test", {}).get("kind") != "mushra":
        return _no("only for MUSHRA")
    if reason := _without_votes(results) or _failed(results, "friedman"):
        return _no(reason)
    friedman = results.get("friedman") or {}
    if friedman.get("statistic") is not None:
        return OK
    return _no(
        friedman.get("note") or "needs complete blocks (a listener's scores of every condition of an item)"
    )


def _mixed_model(results: dict) -> dict:
    if reason := _without_votes(results) or _failed(results, "mixed_model"):
        return _no(reason)
    model = results.get("mixed_model") or {}
    if model.get("ok"):
        return OK
    return _no(model.get("reason") or "needs at least 2 listeners, 2 items and 2 conditions")


def _rating_reliability(results: dict) -> tuple[dict, dict]:
    """Krippendorff's α and the ICC table."""
    if reason := _without_votes(results) or _failed(results, "reliability"):
        return _no(reason), _no(reason)
    rel = (results.get("reliability") or {}).get("ratings") or {}
    listeners = rel.get("listeners") or 0
    if listeners < MIN_RELIABILITY_LISTENERS:
        reason = (
            f"needs at least {MIN_RELIABILITY_LISTENERS} listeners who rated the same sounds "
            f"(has {listeners}: agreement needs someone to agree with)"
        )
        return _no(reason), _no(reason)
    alpha = (
        OK
        if rel.get("alpha_primary") is not None
        else _no(
            "undefined on these answers: the ratings do not vary, or no sound was rated by 2 listeners, so "
            "there is no disagreement to compare with"
        )
    )
    rows = rel.get("icc") or []
    if results.get("test", {}).get("kind") == "ab":
        icc = _no("only for scores on a scale, not for AB choices")
    elif any(r.get("icc") is not None for r in rows):
        icc = OK
    else:
        block = next((n for n in rel.get("notes") or [] if n.startswith("no complete block")), None)
        icc = _no(
            f"needs a complete block of at least 3 sounds each rated by the same 2 or more listeners ({block})"
            if block
            else "undefined on these answers (no variation between the rated sounds)"
        )
    return alpha, icc


def _flags(results: dict) -> tuple[dict, dict]:
    """Flag summary and flag agreement."""
    counts = results.get("counts") or {}
    summary = results.get("flags") or {}
    if reason := _failed(results, "flags"):
        summary_ok = _no(reason)
    elif summary.get("flags"):
        summary_ok = OK
    elif counts.get("flags"):
        excluded = counts["flags"] - counts.get("flags_kept", 0)
        unmatched = counts["flags"] - excluded
        parts = []
        if excluded:
            parts.append(
                f"{excluded} {'is' if excluded == 1 else 'are'} from excluded listeners (see Listener screening)"
            )
        if unmatched:  # the header counts completed main trials only; these name no sound the listener heard
            parts.append(
                f"{unmatched} {'is' if unmatched == 1 else 'are'} on sounds the listener was not given"
            )
        summary_ok = _no(
            f"needs flags from kept listeners: of the {plural(counts['flags'], 'flag')} "
            f"counted above, {' and '.join(parts)}; they are left out"
        )
    elif not summary.get("presentations"):
        summary_ok = _no(
            _without_votes(results) or "needs at least 1 kept listener who heard the sounds (has 0)"
        )
    else:
        summary_ok = _no(
            f"no listener has flagged an artifact yet ({plural(summary['presentations'], 'sound')} heard)"
        )
    if reason := _failed(results, "flag_agreement"):
        return summary_ok, _no(reason)
    agreement = (results.get("reliability") or {}).get("flags") or {}
    listeners = counts.get("listeners_kept", 0)
    if not summary_ok["ok"]:
        return summary_ok, _no(summary_ok["reason"])
    if listeners < MIN_RELIABILITY_LISTENERS:
        return summary_ok, _no(
            f"needs at least {MIN_RELIABILITY_LISTENERS} kept listeners who heard the same sounds (has {listeners})"
        )
    keys = ("percent_agreement", "fleiss_kappa", "gwet_ac1", "alpha_nominal")
    if any(agreement.get(k) is not None for k in keys):
        return summary_ok, OK
    return summary_ok, _no("needs at least 1 sound heard by 2 or more kept listeners")


def _correlations(results: dict) -> tuple[dict, dict, dict]:
    """The human ↔ metric table and its system- and item-level scatter plots."""
    corr = results.get("correlations") or {}
    stored = corr.get("stored_metrics") or []
    if reason := _failed(results, "correlations"):
        return _no(reason), _no(reason), _no(reason)
    if not stored and not corr.get("metrics"):
        reason = (
            "needs objective metrics of the rated checkpoints (none stored for the checkpoints of this test's "
            "conditions; run metrics on them from the run page)"
        )
        return _no(reason), _no(reason), _no(reason)
    if reason := _without_votes(results):
        reason = f"{reason}; metrics are stored ({', '.join(stored)})" if stored else reason
        return _no(reason), _no(reason), _no(reason)
    if not corr.get("system") and not corr.get("item"):
        reason = "needs human scores of the conditions whose checkpoints have metrics (none match)"
        return _no(reason), _no(reason), _no(reason)
    levels = []
    for level, what in (("system", "conditions"), ("item", "item × condition cells")):
        rows = corr.get(level) or []
        if any(r.get("pearson_r") is not None for r in rows):
            levels.append(OK)
            continue
        most = max((r.get("n") or 0 for r in rows), default=0)
        note = next((r["note"] for r in rows if r.get("note") and "constant" in r["note"]), None)
        levels.append(
            _no(f"{level} level: {note}")
            if note and most >= MIN_CORRELATION_POINTS
            else _no(
                f"{level} level needs at least {MIN_CORRELATION_POINTS} {what} with both a human score and a "
                f"metric value (has {most})"
            )
        )
    return OK, levels[0], levels[1]


def results_availability(results: dict) -> dict[str, dict]:
    """Every chart and statistic of the results page and report: ``{"ok", "reason"}`` by name."""
    alpha, icc = _rating_reliability(results)
    flag_summary, flag_agreement = _flags(results)
    correlations, metric_system, metric_item = _correlations(results)
    return {
        "scores": _scores(results),
        "significance": _significance(results),
        "friedman": _friedman(results),
        "mixed_model": _mixed_model(results),
        "alpha": alpha,
        "icc": icc,
        "flags": flag_summary,
        "flag_agreement": flag_agreement,
        "correlations": correlations,
        "metric_system": metric_system,
        "metric_item": metric_item,
    }
