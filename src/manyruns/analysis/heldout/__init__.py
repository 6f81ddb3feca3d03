"""Held-out subset statistics: what a population trained on random subsets says about each example.

For every run ``r`` and training example ``i`` the store says whether ``r`` trained on ``i``
(``mask/train``) and how ``r`` did on ``i`` and on every test example (a per-run value,
:mod:`.values`). The statistics compare runs that trained on an example with runs that held it
out:

* :mod:`.memorization`: mean value over runs that trained on ``i`` minus over runs that held it out;
* :mod:`.influence`: the same difference on test example ``j``'s value, for every pair ``(i, j)``:
  top influencers and high-influence pairs (:mod:`.influence_products`,
  :mod:`.influence_finish`, :mod:`.influence_halves`);
* :mod:`.cscore`: held-out accuracy at each subset ratio, averaged over the ratios, with the
  learning-speed proxy (:mod:`.learning_speed`).

Each reads the runs block by block (:mod:`.source`) into per-example sums (:mod:`.sums`), so
memory does not grow with the number of runs, and reports its split-half stability
(:mod:`.stability`). Stores imported from a correctness release hold ``correct/{train,test}``
instead of logits and support the ``correct`` value only.
"""

from .cscore import CScoreOptions, CScoreResult, HeldoutByRatio, cscore, ratio_name
from .influence import PRECISIONS, InfluenceOptions, InfluenceResult, influence, influence_from_source
from .influence_halves import PairStability
from .influence_products import MaskedProduct
from .learning_speed import LearningSpeed, learning_speed_proxy
from .memorization import MemorizationOptions, MemorizationResult, memorization, memorization_from_source
from .source import HeldoutBlock, HeldoutSource, NoHeldoutRunsError
from .stability import Stability, average_ranks, spearman
from .sums import LabelConsensus, MembershipSums, difference_of_means
from .values import VALUES, values_from_logits

__all__ = [
    "CScoreOptions",
    "CScoreResult",
    "HeldoutBlock",
    "HeldoutByRatio",
    "HeldoutSource",
    "InfluenceOptions",
    "InfluenceResult",
    "LabelConsensus",
    "LearningSpeed",
    "MaskedProduct",
    "MembershipSums",
    "MemorizationOptions",
    "MemorizationResult",
    "NoHeldoutRunsError",
    "PRECISIONS",
    "PairStability",
    "Stability",
    "VALUES",
    "average_ranks",
    "cscore",
    "difference_of_means",
    "influence",
    "influence_from_source",
    "learning_speed_proxy",
    "memorization",
    "memorization_from_source",
    "ratio_name",
    "spearman",
    "values_from_logits",
]
