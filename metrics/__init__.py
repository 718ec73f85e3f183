"""evalsite metrics: a pure library of audio metrics (no Django, Celery or evalsite imports).

Embedders (in ``metrics.embedders``) turn audio into ``(N, D)`` float arrays; the statistics
and distances here consume those arrays. Heavy optional dependencies are imported lazily.
"""

from metrics._common import MetricResult, pair_by_id
from metrics.distribution import FrechetAudioDistance, KernelAudioDistance
from metrics.gaussian import GaussianStatistics
from metrics.preprocess import PreprocessSpec

__all__ = ["MetricResult", "pair_by_id", "GaussianStatistics", "FrechetAudioDistance", "KernelAudioDistance",
           "PreprocessSpec"]
