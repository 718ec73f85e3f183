"""The one converter from NumPy, pandas and datetime values to plain JSON values.

Detector details, stored detector events and analysis results all pass through :func:`jsonable`, so a number
is written the same way wherever it is stored or sent. Only NumPy is imported: ``metrics`` stays a library
without a pandas dependency, and a pandas value can only reach :func:`jsonable` once pandas is imported.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

__all__ = ["jsonable"]


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON values: NaN/inf → None, NumPy scalars and arrays → Python, tuples → lists,
    dict keys → strings, pandas NA/NaT → None, timestamps → ISO strings, anything else → ``str(value)``.

    Args:
        value: A scalar, or dicts, lists, tuples and arrays of them, nested in any way.

    Returns:
        The same structure of ``dict``, ``list``, ``str``, ``int``, ``float``, ``bool`` and ``None``.

    Example:
        >>> jsonable({"a": np.float32(0.5), 1: (np.int64(2), float("nan")), "b": np.array([1.0, np.inf])})
        {'a': 0.5, '1': [2, None], 'b': [1.0, None]}
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        return [x if isinstance(x, (int, bool)) or math.isfinite(x) else None for x in value.tolist()]
    pandas = sys.modules.get("pandas")
    if isinstance(value, (list, tuple, np.ndarray)) or (
        pandas is not None and isinstance(value, pandas.Index)
    ):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    if pandas is not None and (value is pandas.NA or value is pandas.NaT):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
