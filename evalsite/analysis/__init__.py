"""Statistics for listening tests: scores, screening, reliability, artifact flags, metric correlations.

Pure pandas/NumPy/SciPy/statsmodels code with no Django import, so a researcher can use it in a notebook:
``from evalsite.analysis import stats, screening, reliability, flags, correlation``.
The input conventions (long-format frames) are described in :mod:`evalsite.analysis.stats`.
"""
