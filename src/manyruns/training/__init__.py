"""The training engine and the worker entry point that executors call.

(Named ``training`` rather than ``train`` so that it does not shadow ``manyruns.train()``.)
"""

from .engine import RunJob, train_group

__all__ = ["RunJob", "train_group"]
