"""Length tolerance shared by the paired metrics (torch) and the artifact detectors (NumPy only).

It lives in a module that imports nothing heavy, so that ``metrics.detectors`` — which the web tier's
run dashboards use — can be imported without torch.
"""

DEFAULT_LENGTH_TOLERANCE = 512
"""Default largest allowed |len(gen) − len(ref)| in samples; within it both are cropped to the shorter."""
