"""The training engine and the worker entry point that executors call."""

from .engine import RunJob, train_group

__all__ = ["RunJob", "train_group"]
