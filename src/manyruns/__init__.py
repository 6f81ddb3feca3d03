"""manyruns: train populations of neural networks and compute statistics over them.

>>> import manyruns
>>> manyruns.plan("examples/demo.toml", "runs/demo")      # doctest: +SKIP
>>> manyruns.train("runs/demo", workers=2)                 # doctest: +SKIP
>>> pop = manyruns.open("runs/demo")                       # doctest: +SKIP
>>> pop.runs.head()                                        # doctest: +SKIP
>>> result = manyruns.audit(pop)                           # doctest: +SKIP
>>> manyruns.write_report(pop).path                         # doctest: +SKIP
"""

from .version import __version__  # noqa: E402

from .api import TrainReport, plan, status, train, write_report  # noqa: E402
from .population import Population, open  # noqa: E402
from .recipe import Recipe, RecipeError  # noqa: E402
from .errors import InputError, OptionError  # noqa: E402
from .store import StoreError, StoreNotFoundError  # noqa: E402

__all__ = [
    "InputError",
    "OptionError",
    "Population",
    "Recipe",
    "RecipeError",
    "StoreError",
    "StoreNotFoundError",
    "TrainReport",
    "__version__",
    "audit",
    "open",
    "plan",
    "status",
    "train",
    "write_report",
]


def __getattr__(name: str):
    # the audit pulls in the analyses (and torch): imported when first asked for
    if name == "audit":
        from .analysis.audit import audit

        return audit
    raise AttributeError(f"module 'manyruns' has no attribute {name!r}")
