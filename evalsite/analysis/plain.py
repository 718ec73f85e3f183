"""Plain values of analysis frames for pages, exports and stored results: JSON-ready rows and opaque listener ids."""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd
from django.utils.crypto import salted_hmac

from metrics.jsonable import jsonable


def records(frame: pd.DataFrame | None, rename: Callable | None = None) -> list[dict]:
    """DataFrame rows as JSON-ready dicts (listener ids through ``rename`` where a column holds them).

    Column by column (what ``jsonable(frame.to_dict("records"))`` gives, without visiting every cell in Python
    twice): numeric columns become lists at once, other columns go through :func:`jsonable`.
    """
    if frame is None or frame.empty:
        return []
    columns = []
    for name in frame.columns:
        values = frame[name].to_numpy()
        if rename is not None and name == "listener":
            column = [jsonable(rename(v) if v is not None else None) for v in frame[name].tolist()]
        elif rename is not None and name == "listeners":
            column = [
                jsonable([rename(v) for v in vs] if isinstance(vs, (list, tuple)) else vs)
                for vs in frame[name].tolist()
            ]
        elif values.dtype.kind == "f":
            column = [x if math.isfinite(x) else None for x in values.tolist()]
        elif values.dtype.kind in "iub":
            column = values.tolist()
        else:
            column = [jsonable(v) for v in frame[name].tolist()]
        columns.append(column)
    keys = [str(name) for name in frame.columns]
    return [dict(zip(keys, row)) for row in zip(*columns)]


def listener_id(test_id: int, participant_id: int) -> str:
    """Opaque, stable id of a participant: not their token (which opens their session) nor their crowd id."""
    return "L" + salted_hmac("evalsite.analysis.listener", f"{test_id}:{participant_id}").hexdigest()[:10]
