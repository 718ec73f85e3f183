"""Pure metric functions. Each returns a :class:`metrics.MetricResult`.

Submodules are imported lazily by users (``from metrics.functional.spectral import mel_distance``)
so that optional dependencies (pesq, pystoi, torchcrepe, speechmos) are only needed by the
metrics that use them.
"""
