"""Per-run values of held-out statistics, from stored logits.

``v_r(i)`` is one of :data:`VALUES`:

* ``correct``: 1 when run ``r``'s argmax prediction on ``i`` equals the label ``r`` trained with
  (``labels/train``; for test examples the dataset's label), else 0;
* ``trueprob``: the softmax probability of that label;
* ``margin``: the logit of that label minus the largest other logit.

Logits are float16 as stored; they are turned into float32 a few runs at a time.
"""

from __future__ import annotations

import numpy as np

from ...errors import check_choice

VALUES = ("correct", "trueprob", "margin")


def values_from_logits(logits: np.ndarray, labels: np.ndarray, value: str, chunk: int = 16) -> np.ndarray:
    """Per-run values from stored logits.

    ``logits (b, n, C)`` (float16 as stored), ``labels (b, n)`` or ``(n,)`` (the label each run is
    scored against). Returns ``(b, n)``: bool for ``correct``, float32 otherwise.
    """
    import torch

    check_choice("value", value, VALUES)
    b, n, _ = logits.shape
    labels = np.broadcast_to(np.asarray(labels), (b, n))
    out = np.empty((b, n), dtype=bool if value == "correct" else np.float32)
    for start in range(0, b, chunk):  # float32 copies of a few runs at a time
        x = torch.from_numpy(np.ascontiguousarray(logits[start : start + chunk])).float()
        y = torch.from_numpy(np.array(labels[start : start + chunk], dtype=np.int64)).unsqueeze(-1)
        if value == "correct":
            v = x.argmax(-1) == y.squeeze(-1)
        elif value == "trueprob":
            v = x.softmax(-1).gather(-1, y).squeeze(-1)
        else:
            own = x.gather(-1, y).squeeze(-1)
            others = x.scatter(-1, y, float("-inf")).amax(-1)
            v = own - others
        out[start : start + chunk] = v.numpy()
    return out
