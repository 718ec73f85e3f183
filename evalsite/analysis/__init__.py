"""Statistics and dashboards for listening tests and runs.

The statistics modules are pure pandas/NumPy/SciPy/statsmodels code with no Django import, so a researcher can
use them in a notebook:
``from evalsite.analysis import stats, screening, reliability, flags, correlation``.
The input conventions (long-format frames) are described in :mod:`evalsite.analysis.stats`.

A listening test's results flow one way: :mod:`~.frames` (the one reader of its rows) → :mod:`~.compute`
(with :mod:`~.flag_summary` and :mod:`~.metric_correlations`) → :mod:`~.snapshots` (stored per set of inputs),
which every page, export, report, API call and alert reads.
"""
