"""Post-screening of listeners: BS.1534-3 §4.1.2, gold/trapping failures, constant raters, low agreement.

Every rule is a small frozen dataclass; pass ``None`` in :class:`ScreeningRules` to switch a rule off.
:func:`screen_listeners` returns a :class:`Screening` that names each excluded listener with every rule
that excluded them and a sentence with the numbers, lists where a rule could not be applied, and keeps
the parameters, so a report can print the rule used. :func:`apply_screening` drops the excluded listeners,
so every score can be shown with and without exclusions. Frame conventions: :mod:`evalsite.analysis.stats`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats as sps

from evalsite.analysis.stats import _clean_ratings, _group_rows

SYSTEM_ROLE = "system"
HIDDEN_REFERENCE = "hidden_reference"
MID_ANCHOR = "anchor_lp70"
EXCLUSION_COLUMNS = ["listener", "rule", "reason"]


@dataclass(frozen=True)
class Bs1534Rule:
    """ITU-R BS.1534-3 §4.1.2 post-screening (MUSHRA only).

    Exclude a listener who rates the hidden reference below ``reference_below`` for more than
    ``max_share`` of items, or the mid-range anchor above ``anchor_above`` for more than ``max_share``
    of items. Items where more than ``anchor_item_guard`` of listeners rate the mid anchor above
    ``anchor_above`` are left out of the anchor rule (numerator and denominator). A listener's repeated
    ratings of one item's reference (or anchor) are averaged.
    """

    reference_below: float = 90.0
    anchor_above: float = 90.0
    max_share: float = 0.15
    anchor_item_guard: float = 0.25
    anchor_role: str = MID_ANCHOR


@dataclass(frozen=True)
class QcRule:
    """Exclude a listener with more than ``max_failures`` failed gold or trapping questions (P.808 §6.3.8)."""

    max_failures: int = 0
    checks: tuple[str, ...] = ("gold", "trapping")


@dataclass(frozen=True)
class ConstantRule:
    """Exclude a near-constant rater (straight-lining): low SD or one answer on nearly every trial.

    Judged on the ratings ``judged_on`` names: ``"systems"`` (role ``"system"`` when there is a role column),
    ``"all"`` (every rating the listener gave: hidden reference, anchors and systems) or ``"by_kind"``, which
    is ``"all"`` for MUSHRA and ``"systems"`` for MOS/SMOS/ACR/CMOS. A listener is excluded when the SD is
    below ``min_sd`` or the most frequent answer covers more than ``max_same_share`` of the ratings.
    ``min_sd=None`` takes the scale default: 5 for MUSHRA (0-100), 0.25 for MOS/SMOS/CMOS. Listeners with
    fewer than ``min_ratings`` judged ratings are not judged (recorded in ``not_applied``).

    Why MUSHRA is judged on all ratings: BS.1534-3 §4.1.2 post-screens a listener on whether they find the
    hidden reference and the anchors, not on how far apart they put the systems under test, which may
    honestly sound alike (checkpoints of one run 44-68 with SD 3.6). A listener who puts the hidden
    reference at 100 and the anchors at 5-47 has a spread of tens of points over all their ratings and is
    kept; a straight-liner who gives every sound, reference included, about the same score is not. Over the
    system ratings alone the first listener fell below the 5-point threshold and was excluded. On a 5-point
    MOS/SMOS/ACR scale without reference conditions the system ratings are what a listener spreads.
    """

    min_sd: float | None = None
    max_same_share: float = 0.9
    min_ratings: int = 5
    judged_on: Literal["by_kind", "systems", "all"] = "by_kind"


@dataclass(frozen=True)
class AgreementRule:
    """Exclude a listener whose scores correlate below ``min_r`` with the leave-one-out mean of the others.

    The correlation runs over the (item, system) cells the listener rated and at least one other listener
    rated (all roles; repeats averaged). With fewer than ``min_common_cells`` such cells, or constant scores
    on either side, the rule is not applied (recorded in ``not_applied``). One pass over all listeners.
    """

    method: Literal["spearman", "pearson"] = "spearman"
    min_r: float = 0.3
    min_common_cells: int = 5


@dataclass(frozen=True)
class ScreeningRules:
    """The set of rules to run; ``None`` switches a rule off."""

    bs1534: Bs1534Rule | None = field(default_factory=Bs1534Rule)
    qc: QcRule | None = field(default_factory=QcRule)
    constant: ConstantRule | None = field(default_factory=ConstantRule)
    agreement: AgreementRule | None = field(default_factory=AgreementRule)


@dataclass(frozen=True, eq=False)
class Screening:
    """Outcome of :func:`screen_listeners`: who is excluded and why, who is kept, and the rules used."""

    kind: str
    rules: ScreeningRules
    excluded: pd.DataFrame
    kept_listeners: tuple
    not_applied: pd.DataFrame
    qc_given: bool = False

    @property
    def excluded_listeners(self) -> tuple:
        """Excluded listener ids, sorted, each once."""
        return tuple(sorted(self.excluded["listener"].unique(), key=str))

    def parameters(self) -> dict:
        """The rules and thresholds used, as plain data (``None`` = switched off), for a report or JSON."""
        out = asdict(self.rules)
        if out["constant"] is not None:
            out["constant"]["min_sd"] = _min_sd(self.rules.constant, self.kind)
            out["constant"]["judged_on"] = _judged_on(self.rules.constant, self.kind)
        if self.kind != "mushra":
            out["bs1534"] = None
        if not self.qc_given:
            out["qc"] = None
        return out

    def describe_rules(self) -> list[str]:
        """One sentence per active rule, for a report's "post-screening used" section."""
        r, out = self.rules, []
        if r.bs1534 and self.kind == "mushra":
            b = r.bs1534
            out.append(
                f"ITU-R BS.1534-3 §4.1.2: excluded listeners who rated the hidden reference below "
                f"{b.reference_below:g} or the mid-range anchor ({b.anchor_role}) above {b.anchor_above:g} on more "
                f"than {_pct(b.max_share)} of items; items where more than {_pct(b.anchor_item_guard)} of listeners "
                f"rated the mid anchor above {b.anchor_above:g} were left out of the anchor rule."
            )
        if r.qc and self.qc_given:
            checks = " or ".join(r.qc.checks)
            out.append(f"Excluded listeners with more than {r.qc.max_failures} failed {checks} questions.")
        if r.constant:
            sd = _min_sd(r.constant, self.kind)
            scores = (
                "all of a listener's scores (hidden reference, anchors and systems)"
                if _judged_on(r.constant, self.kind) == "all"
                else "system scores"
            )
            out.append(
                f"Excluded near-constant raters: SD of {scores} below {sd:g}, or the same answer on "
                f"more than {_pct(r.constant.max_same_share)} of them (judged with at least "
                f"{r.constant.min_ratings} ratings)."
            )
        if r.agreement:
            a = r.agreement
            out.append(
                f"Excluded listeners whose {a.method.capitalize()} correlation with the leave-one-out mean "
                f"of the other listeners was below {a.min_r:g} (needs at least {a.min_common_cells} "
                "common cells)."
            )
        return out


def _pct(share: float) -> str:
    """Write a share as a percentage the way reports do ("15 %")."""
    return f"{100 * share:.0f} %"


def _min_sd(rule: ConstantRule, kind: str) -> float:
    """Scale-dependent default of the constant-rater SD threshold."""
    if rule.min_sd is not None:
        return rule.min_sd
    return 5.0 if kind == "mushra" else 0.25


def _judged_on(rule: ConstantRule, kind: str) -> str:
    """Which ratings the constant rule judges: ``"systems"`` or ``"all"`` (see :class:`ConstantRule`)."""
    if rule.judged_on != "by_kind":
        return rule.judged_on
    return "all" if kind == "mushra" else "systems"


def _bs1534(frame: pd.DataFrame, rule: Bs1534Rule) -> list[dict]:
    """Hidden-reference and mid-anchor rules with the per-item anchor guard of BS.1534-3 §4.1.2."""
    out = []
    judged = frame.loc[frame["role"].isin([HIDDEN_REFERENCE, rule.anchor_role])]
    per_item = judged.groupby(["listener", "item", "role"], sort=True)["score"].mean().reset_index()
    ref = per_item.loc[per_item["role"] == HIDDEN_REFERENCE]
    ref_counts = (
        (ref["score"] < rule.reference_below).groupby(ref["listener"], sort=True).agg(["sum", "size"])
    )
    for listener, bad, n in zip(ref_counts.index, ref_counts["sum"].tolist(), ref_counts["size"].tolist()):
        if n and bad / n > rule.max_share:
            out.append(
                dict(
                    listener=listener,
                    rule="bs1534_reference",
                    reason=(
                        f"rated the hidden reference below {rule.reference_below:g} on {bad} of {n} items "
                        f"({_pct(bad / n)} > {_pct(rule.max_share)})"
                    ),
                )
            )
    anchor = per_item.loc[per_item["role"] == rule.anchor_role].copy()
    anchor["high"] = anchor["score"] > rule.anchor_above
    item_share = anchor.groupby("item")["high"].mean()
    anchor["guarded"] = anchor["item"].isin(set(item_share.index[item_share > rule.anchor_item_guard]))
    skipped_items = anchor.groupby("listener", sort=True)["guarded"].sum()
    counted = anchor.loc[~anchor["guarded"]]
    anchor_counts = counted.groupby("listener", sort=True)["high"].agg(["sum", "size"])
    for listener, bad, n in zip(
        anchor_counts.index, anchor_counts["sum"].tolist(), anchor_counts["size"].tolist()
    ):
        if n and bad / n > rule.max_share:
            skipped = int(skipped_items[listener])
            extra = (
                (
                    f"; {skipped} item{'' if skipped == 1 else 's'} where more than {_pct(rule.anchor_item_guard)} of listeners rated the "
                    f"anchor above {rule.anchor_above:g} were left out"
                )
                if skipped
                else ""
            )
            out.append(
                dict(
                    listener=listener,
                    rule="bs1534_anchor",
                    reason=(
                        f"rated the mid-range anchor ({rule.anchor_role}) above {rule.anchor_above:g} on {bad} of {n} items "
                        f"({_pct(bad / n)} > {_pct(rule.max_share)}){extra}"
                    ),
                )
            )
    return out


def _qc(listeners: list, qc: dict, rule: QcRule) -> list[dict]:
    """Gold and trapping question failures from the per-listener QC summary."""
    out = []
    for listener in listeners:
        record = qc.get(listener) or {}
        for check in rule.checks:
            c = record.get(check)
            if not c:
                continue
            total, passed = int(c.get("total", 0)), int(c.get("passed", 0))
            failed = total - passed
            if failed > rule.max_failures:
                out.append(
                    dict(
                        listener=listener,
                        rule=f"qc_{check}",
                        reason=(
                            f"failed {failed} of {total} {check} questions (more than {rule.max_failures} allowed)"
                        ),
                    )
                )
    return out


def _constant(frame: pd.DataFrame, rule: ConstantRule, kind: str) -> tuple[list[dict], list[dict]]:
    """Near-constant raters (straight-lining, P.808's rating-variance check) over the judged ratings."""
    out, skipped = [], []
    min_sd = _min_sd(rule, kind)
    every = _judged_on(rule, kind) == "all"
    what = "all stimuli" if every else "system stimuli"
    judged = frame.loc[frame["role"] == SYSTEM_ROLE] if "role" in frame and not every else frame
    listeners = sorted(frame["listener"].unique(), key=str)
    scores = judged["score"].to_numpy(float)
    rows = _group_rows(pd.Index(listeners).get_indexer(judged["listener"]), len(listeners))
    for listener, mine in zip(listeners, rows):
        s = scores[mine]
        if len(s) < rule.min_ratings:
            skipped.append(
                dict(
                    listener=listener,
                    rule="constant",
                    reason=(
                        f"only {len(s)} rating{'' if len(s) == 1 else 's'} of {what} (at least {rule.min_ratings} needed)"
                    ),
                )
            )
            continue
        sd = float(np.std(s, ddof=1))
        values, counts = np.unique(s, return_counts=True)
        top = counts.max() / len(s)
        if sd < min_sd:
            out.append(
                dict(
                    listener=listener,
                    rule="constant",
                    reason=(f"scores of {what} have SD {sd:.2f} over {len(s)} ratings (< {min_sd:g})"),
                )
            )
        elif top > rule.max_same_share:
            out.append(
                dict(
                    listener=listener,
                    rule="constant",
                    reason=(
                        f"gave the same answer ({values[counts.argmax()]:g}) on {counts.max()} of {len(s)} "
                        f"ratings of {what} ({_pct(top)} > {_pct(rule.max_same_share)})"
                    ),
                )
            )
    return out, skipped


def _grouped_ranks(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Average ranks (1 = smallest, ties share the mean rank) of values within each group, all groups at once."""
    value_codes = np.unique(values, return_inverse=True)[1].ravel()
    key = groups.astype(np.int64) * (int(value_codes.max(initial=0)) + 1) + value_codes
    order = np.argsort(key, kind="stable")
    g, k = groups[order], key[order]
    n = len(k)
    new_group = np.r_[True, g[1:] != g[:-1]]
    new_run = np.r_[True, k[1:] != k[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    run_start = np.flatnonzero(new_run)
    run_stop = np.r_[run_start[1:], n]
    run = np.cumsum(new_run) - 1
    ranks = np.empty(n)
    ranks[order] = (run_start[run] + run_stop[run] - 1) / 2 - group_start + 1
    return ranks


def _grouped_pearson(groups: np.ndarray, x: np.ndarray, y: np.ndarray, n_groups: int) -> np.ndarray:
    """Pearson r of x and y within each group (NaN for a group with no spread), one pass over all groups."""
    n = np.bincount(groups, minlength=n_groups).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = x - (np.bincount(groups, weights=x, minlength=n_groups) / n)[groups]
        dy = y - (np.bincount(groups, weights=y, minlength=n_groups) / n)[groups]
        sxy = np.bincount(groups, weights=dx * dy, minlength=n_groups)
        sxx = np.bincount(groups, weights=dx * dx, minlength=n_groups)
        syy = np.bincount(groups, weights=dy * dy, minlength=n_groups)
        return np.clip(sxy / np.sqrt(sxx * syy), -1.0, 1.0)


AGREEMENT_RECHECK = 1e-9
"""A vectorised correlation this close to the threshold is recomputed with SciPy, so that rounding (about 1e-16)
can never decide an exclusion differently from ``scipy.stats.spearmanr`` / ``pearsonr``."""


def _agreement(frame: pd.DataFrame, rule: AgreementRule) -> tuple[list[dict], list[dict]]:
    """Correlation of each listener with the leave-one-out mean of the others over shared (item, system) cells.

    All listeners at once: cells and their leave-one-out means from integer codes, ranks and Pearson r per
    listener from group sums (the same r as SciPy's per-listener call to rounding; the tests check it).
    """
    out, skipped = [], []
    units = ["item", "system"] + (["comparison"] if "comparison" in frame else [])
    l_codes, natural = pd.factorize(frame["listener"], sort=True)  # the order a groupby sums the cells in
    unit_codes = np.zeros(len(frame), dtype=np.int64)
    for (
        column
    ) in units:  # lexicographic (item, system[, comparison]) order, as a groupby over the columns sorts
        codes, uniques = pd.factorize(frame[column], sort=True)
        unit_codes = unit_codes * len(uniques) + codes
    unit_codes = np.unique(unit_codes, return_inverse=True)[1].ravel()
    n_units = int(unit_codes.max()) + 1 if len(unit_codes) else 0
    cell = pd.Series(frame["score"].to_numpy(float)).groupby([l_codes, unit_codes], sort=True).mean()
    listener, unit, score = (
        cell.index.get_level_values(0).to_numpy(),
        cell.index.get_level_values(1).to_numpy(),
        cell.to_numpy(),
    )
    totals = cell.groupby(level=1).agg(["sum", "count"]).reindex(range(n_units))
    total, count = totals["sum"].to_numpy()[unit], totals["count"].to_numpy()[unit]
    shared = count >= 2
    listener, score = listener[shared], score[shared]
    loo = (total[shared] - score) / (count[shared] - 1)
    n_listeners = len(natural)
    n_cells = np.bincount(listener, minlength=n_listeners)
    if len(listener):
        spread_x = _grouped_ptp(listener, score, n_listeners)
        spread_y = _grouped_ptp(listener, loo, n_listeners)
        if rule.method == "spearman":
            x, y = _grouped_ranks(listener, score), _grouped_ranks(listener, loo)
        else:
            x, y = score, loo
        r_all = _grouped_pearson(listener, x, y, n_listeners)
    else:
        spread_x = spread_y = np.zeros(n_listeners, bool)
        r_all = np.full(n_listeners, np.nan)
    corr = sps.spearmanr if rule.method == "spearman" else sps.pearsonr
    for name in sorted(natural, key=str):
        k = natural.get_loc(name)
        if n_cells[k] < rule.min_common_cells:
            skipped.append(
                dict(
                    listener=name,
                    rule="agreement",
                    reason=(
                        f"only {n_cells[k]} cells shared with other listeners (at least {rule.min_common_cells} needed)"
                    ),
                )
            )
            continue
        if not (spread_x[k] and spread_y[k]):
            skipped.append(
                dict(
                    listener=name,
                    rule="agreement",
                    reason=("constant scores on the shared cells; correlation undefined"),
                )
            )
            continue
        r = float(r_all[k])
        if abs(r - rule.min_r) < AGREEMENT_RECHECK or not np.isfinite(r):
            mine = listener == k
            r = float(corr(score[mine], loo[mine])[0])
        if r < rule.min_r:
            out.append(
                dict(
                    listener=name,
                    rule="agreement",
                    reason=(
                        f"{rule.method.capitalize()} correlation with the other listeners' mean is {r:.2f} over "
                        f"{n_cells[k]} cells (< {rule.min_r:g})"
                    ),
                )
            )
    return out, skipped


def _grouped_ptp(groups: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Whether the values of each group are not all equal (``np.ptp(...) != 0`` per group)."""
    low = np.full(n_groups, np.inf)
    high = np.full(n_groups, -np.inf)
    np.minimum.at(low, groups, values)
    np.maximum.at(high, groups, values)
    return high > low


def screen_listeners(
    ratings: pd.DataFrame,
    *,
    kind: str,
    qc: dict | None = None,
    rules: ScreeningRules = ScreeningRules(),
) -> Screening:
    """Run the post-screening rules and say, per excluded listener, which rules excluded them and why.

    Args:
        ratings: Ratings frame; for MUSHRA with a ``role`` column (``hidden_reference``, ``anchor_lp70``, ...).
        kind: ``"mos"``, ``"smos"``, ``"mushra"`` or ``"cmos"``; the BS.1534-3 rule runs for MUSHRA only.
        qc: ``{listener: {"gold": {"passed": n, "total": n}, "trapping": {...}}}``; listeners absent from it
            are not judged by the QC rule.
        rules: Which rules run and their thresholds.

    Returns:
        A :class:`Screening`; ``excluded`` has one row per (listener, rule) with a reason sentence;
        ``not_applied`` says where a rule could not judge a listener (listener missing: the rule could
        not run at all).

    Example:
        >>> s = screen_listeners(ratings, kind="mushra", rules=ScreeningRules(agreement=None))  # doctest: +SKIP
        >>> s.excluded.to_dict("records")[0]  # doctest: +SKIP
        {'listener': 'p07', 'rule': 'bs1534_reference',
         'reason': 'rated the hidden reference below 90 on 3 of 12 items (25 % > 15 %)'}
    """
    frame = _clean_ratings(ratings, kind=kind)
    listeners = sorted(frame["listener"].unique(), key=str)
    excluded, skipped = [], []
    if rules.bs1534 and kind == "mushra":
        roles = set(frame["role"].unique()) if "role" in frame else set()
        for rule, role in (
            ("bs1534_reference", HIDDEN_REFERENCE),
            ("bs1534_anchor", rules.bs1534.anchor_role),
        ):
            if role not in roles:
                skipped.append(
                    dict(listener=None, rule=rule, reason=f"no ratings with role {role!r}; rule not run")
                )
        excluded += _bs1534(frame, rules.bs1534) if roles else []
    if rules.qc and qc:
        excluded += _qc(listeners, qc, rules.qc)
    if rules.constant:
        found, missed = _constant(frame, rules.constant, kind)
        excluded, skipped = excluded + found, skipped + missed
    if rules.agreement:
        found, missed = _agreement(frame, rules.agreement)
        excluded, skipped = excluded + found, skipped + missed
    order = {l: k for k, l in enumerate(listeners)}
    excluded = sorted(excluded, key=lambda e: (order[e["listener"]], e["rule"]))
    excluded_df = pd.DataFrame(excluded, columns=EXCLUSION_COLUMNS)
    gone = set(excluded_df["listener"])
    return Screening(
        kind=kind,
        rules=rules,
        excluded=excluded_df,
        kept_listeners=tuple(l for l in listeners if l not in gone),
        not_applied=pd.DataFrame(skipped, columns=EXCLUSION_COLUMNS),
        qc_given=bool(rules.qc and qc),
    )


def apply_screening(ratings: pd.DataFrame, screening: Screening) -> pd.DataFrame:
    """Ratings of the kept listeners only, so scores can be shown with and without exclusions."""
    return ratings.loc[~ratings["listener"].isin(set(screening.excluded["listener"]))]
