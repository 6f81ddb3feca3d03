"""Datasets: loaders for local files, the in-memory Dataset, and randomizing transforms."""

from .base import DATA_ENV, Dataset, DatasetMismatchError, DatasetNotFoundError, check_fingerprint, resolve_data_root
from .loaders import LOADERS, load_dataset

__all__ = [
    "DATA_ENV",
    "Dataset",
    "DatasetMismatchError",
    "DatasetNotFoundError",
    "LOADERS",
    "check_fingerprint",
    "load_dataset",
    "resolve_data_root",
]
