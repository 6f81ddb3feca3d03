"""Datasets: loaders for local files, the in-memory Dataset, and randomizing transforms."""

from .base import DATA_ENV, Dataset, DatasetFormatError, DatasetMismatchError, DatasetNotFoundError, check_fingerprint, resolve_data_root
from .loaders import LOADERS, load_dataset
from .lookup import data_root_for, dataset_for, store_dataset

__all__ = [
    "DATA_ENV",
    "Dataset",
    "DatasetFormatError",
    "DatasetMismatchError",
    "DatasetNotFoundError",
    "LOADERS",
    "check_fingerprint",
    "data_root_for",
    "dataset_for",
    "load_dataset",
    "resolve_data_root",
    "store_dataset",
]
