"""Finding the dataset a store was planned with: the data root to look in, loaded once per process.

The root is the explicit ``data_dir``, else ``$MANYRUNS_DATA``, else the root recorded in the
store when it was planned (or imported). The data found there must match the store's
fingerprint (shapes, labels and pixels), or it is refused.
"""

from __future__ import annotations

import os

from .base import DATA_ENV, Dataset, check_fingerprint
from .loaders import load_dataset

# Per-process cache: a training worker trains many groups of the same store.
_DATASETS: dict[tuple, Dataset] = {}


def data_root_for(recorded: str | None, data_dir: str | os.PathLike | None) -> str | None:
    """Explicit ``data_dir``, else ``$MANYRUNS_DATA``, else the ``recorded`` root."""
    if data_dir is not None:
        return str(data_dir)
    return os.environ.get(DATA_ENV) or recorded


def dataset_for(
    name: str, fingerprint: dict, recorded: str | None, data_dir: str | os.PathLike | None, where: str, head: tuple[int | None, int | None] = (None, None)
) -> Dataset:
    """Dataset ``name`` from the root :func:`data_root_for` gives, cut to its first ``head``
    training and test examples, checked against ``fingerprint`` (``where`` names the store in
    the error); cached per process."""
    root = data_root_for(recorded, data_dir)
    key = (name, root, head)
    if key not in _DATASETS:
        dataset = load_dataset(name, root)
        try:
            dataset = dataset.head(*head)
        except ValueError:
            pass  # the fingerprint check below names the difference
        check_fingerprint(fingerprint, dataset, where)
        _DATASETS[key] = dataset
    return _DATASETS[key]


def store_dataset(store, data_dir: str | os.PathLike | None = None) -> Dataset:
    """The dataset of a :class:`~manyruns.store.Store` (its recipe's dataset, its fingerprint,
    its recorded root)."""
    data = store.recipe.data
    return dataset_for(data.dataset, store.fingerprint, store.meta.get("data_dir"), data_dir, str(store.path), (data.train_examples, data.test_examples))
