"""The one rule every surface uses to call a value "best" or "tied", and the one sentence that states the screening.

The test page, the report, the results API, the scores export, the run page, the compare page and the alerts read
human scores from :func:`evalsite.analysis.snapshots.listening_test_results`; these two helpers make them say the
same thing about those numbers.
"""

from __future__ import annotations

from typing import Any


def leaders_mark(cells: list[dict[str, Any]], *, higher_is_better: bool | None) -> None:
    """Set ``mark`` on the leading cells (dicts with ``value``, ``ci_low``, ``ci_high``) of one comparison.

    ``"best"``: the single leader whose 95 % interval overlaps no other cell's. ``"tied"``: the leader and every
    cell whose interval overlaps it, or several leaders with the same value. ``"top"``: the single leader of a
    comparison where some cell has no interval, so no claim that it is better. Nothing with fewer than two values.
    """
    if higher_is_better is None or len(cells) < 2:
        return
    top = (max if higher_is_better else min)(c["value"] for c in cells)
    leaders = [c for c in cells if c["value"] == top]
    if not all(c.get("ci_low") is not None and c.get("ci_high") is not None for c in cells):
        for c in leaders:
            c["mark"] = "top" if len(leaders) == 1 else "tied"
        return
    lead = leaders[0]
    rivals = [
        c
        for c in cells
        if c is not lead and c["ci_low"] <= lead["ci_high"] and lead["ci_low"] <= c["ci_high"]
    ]
    for c in [lead, *rivals]:
        c["mark"] = "tied" if rivals else "best"


def screening_statement(counts: dict[str, int]) -> str:
    """ "screened: k of n listeners excluded; completed trials only" from a results dict's ``counts``.

    ``n`` counts the listeners with ratings (the ones a post-screening rule judged); listeners screened out
    before they rated anything (the headphone check) are named apart, as the test page counts them.
    """
    kept, excluded = counts.get("listeners_kept", 0), counts.get("listeners_excluded", 0)
    total = kept + excluded
    text = f"screened: {excluded} of {total} listener{'s' if total != 1 else ''} excluded"
    before = counts.get("screened_out_before_rating", 0)
    if before:
        text += f" (and {before} screened out before rating)"
    return text + "; completed trials only"
