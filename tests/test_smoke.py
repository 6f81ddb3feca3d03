import numpy as np

import manyruns
from manyruns.analysis.ensemble import ensemble_accuracy

from .conftest import tiny_recipe


def test_plan_train_open_round_trip(tmp_path, write_recipe):
    recipe = write_recipe(tiny_recipe(runs=4))
    store = tmp_path / "store"
    manyruns.plan(recipe, store)
    report = manyruns.train(store, executor="serial", progress=False)
    assert report.trained == 4 and not report.failed
    pop = manyruns.open(store)
    table = pop.runs
    assert list(table.status) == ["ok"] * 4
    assert (table.test_acc > 0.5).all()  # digits is easy: far above the 10% of chance
    logits = pop.load("logits/test")
    assert logits.shape == (4, 359, 10) and logits.dtype == np.float16
    ens = ensemble_accuracy(pop)
    assert ens["run_count"] == 4 and ens["logit_accuracy"] > 0.5
