"""The data audit: label issues from out-of-sample probabilities (confident learning),
near-duplicates, train/test leaks and outliers from the ensemble kernel.

``audit(pop, options)`` (:mod:`.audit`) is the analysis; :mod:`.outofsample` computes the
held-out probabilities and :mod:`.confident` the confident-learning estimates.
"""

from .audit import SCORES, AuditOptions, AuditResult, audit
from .confident import ConfidentLearning, confident_learning, normalized_margin, self_confidence
from .outofsample import OutOfSample, out_of_sample

__all__ = [
    "SCORES",
    "AuditOptions",
    "AuditResult",
    "ConfidentLearning",
    "OutOfSample",
    "audit",
    "confident_learning",
    "normalized_margin",
    "out_of_sample",
    "self_confidence",
]
