"""The fast convnet, its grouped population form (checked against the per-model loop) and
test-time-augmented logits (checked against a direct computation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import manyruns
from manyruns.errors import OptionError
from manyruns.models.architectures import FastCNN, create_model
from manyruns.models.grouped import GroupedFastCNN
from manyruns.models.population import LoopPopulation, make_population
from manyruns.recipe import FastCNNSpec, RecipeError

from .conftest import tiny_recipe

SPEC = FastCNNSpec(stem=6, widths=[8, 12])


def models(g: int, shape=(3, 12, 12)) -> list[FastCNN]:
    return [create_model(SPEC, shape, 10, seed=100 + i) for i in range(g)]


def clone(ms):
    import copy

    return [copy.deepcopy(m) for m in ms]


def test_grouped_form_equals_the_loop_forward_backward_and_batch_norm_statistics():
    torch.manual_seed(0)
    ms = models(3)
    loop, grouped = LoopPopulation(clone(ms)), GroupedFastCNN(clone(ms))
    assert [list(d) for d in grouped.run_parameters()] == [[n for n, _ in m.named_parameters()] for m in ms]
    assert torch.equal(grouped.flat_weights(), loop.flat_weights())  # the same networks, exactly
    x = torch.randn(3, 16, 3, 12, 12)  # each run its own batch
    y = torch.randint(0, 10, (3, 16))
    for pop in (loop, grouped):
        pop.train()
        out = pop(x)
        torch.nn.functional.cross_entropy(out.reshape(-1, 10), y.reshape(-1), reduction="none").view(3, 16).mean(1).sum().backward()
    torch.testing.assert_close(grouped(x), loop(x), rtol=1e-4, atol=1e-5)
    grads = _grads_of(grouped)
    for g in range(3):
        ref = dict(loop.models[g].named_parameters())
        for name, grad in grads[g].items():
            torch.testing.assert_close(grad, ref[name].grad, rtol=1e-4, atol=1e-6, msg=name)
        ref_buffers = dict(loop.models[g].named_buffers())
        for name, b in grouped.run_buffers()[g].items():
            torch.testing.assert_close(b, ref_buffers[name], rtol=1e-5, atol=1e-6, msg=name)  # running statistics, per run
    loop.eval()
    grouped.eval()
    shared = torch.randn(20, 3, 12, 12)
    torch.testing.assert_close(grouped.forward_shared(shared), loop.forward_shared(shared), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grouped.features_shared(shared), loop.features_shared(shared), rtol=1e-4, atol=1e-5)


def _grads_of(grouped: GroupedFastCNN) -> list[dict[str, torch.Tensor]]:
    """Each run's gradients, cut from the grouped gradients as its parameters are cut."""
    params = list(grouped.parameters())
    saved = [p.data for p in params]
    try:
        for p in params:
            p.data = p.grad
        return [{k: v.detach().clone() for k, v in d.items()} for d in grouped.run_parameters()]
    finally:
        for p, data in zip(params, saved):
            p.data = data


def test_one_run_of_the_grouped_form_does_not_see_the_others():
    ms = models(4)
    x = torch.randn(4, 8, 3, 12, 12)
    together = GroupedFastCNN(clone(ms))(x)
    alone = GroupedFastCNN(clone(ms[2:3]))(x[2:3])
    torch.testing.assert_close(together[2:3], alone, rtol=1e-5, atol=1e-6)


def test_training_a_store_with_the_grouped_form_matches_the_loop(tmp_path, write_recipe):
    text = tiny_recipe(runs=3).replace('kind = "mlp"\nwidths = [32]', 'kind = "fast-cnn"\nstem = 6\nwidths = [8, 8]')
    text = text.replace("lr = 0.1", "lr = 0.02").replace("epochs = 3", "epochs = 1").replace("weights = [0, 3]", "weights = [0, 1]")
    recipe = write_recipe(text)
    stores = {}
    for strategy in ("loop", "grouped"):
        stores[strategy] = tmp_path / strategy
        manyruns.plan(recipe, stores[strategy])
        manyruns.train(stores[strategy], executor="serial", strategy=strategy, group_size=3, progress=False)
    a, b = manyruns.open(stores["loop"]), manyruns.open(stores["grouped"])
    assert np.array_equal(a.load("weights/epoch_0"), b.load("weights/epoch_0"))
    np.testing.assert_allclose(b.load("weights/epoch_1"), a.load("weights/epoch_1"), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(b.load("logits/test").astype(np.float32), a.load("logits/test").astype(np.float32), rtol=1e-2, atol=1e-2)


def test_the_fast_convnet_is_refused_where_it_cannot_work(tmp_path, write_recipe):
    with pytest.raises(RecipeError, match="model.widths"):
        create_model(FastCNNSpec(widths=[8, 8, 8, 8]), (1, 8, 8), 10, seed=0)  # 8x8 digits: 7 -> 3 -> 1 -> 0
    with pytest.raises(ValueError, match="dropout"):
        make_population([create_model(FastCNNSpec(widths=[8], dropout=0.1), (3, 12, 12), 10, seed=0)], "grouped")
    store = tmp_path / "mlp"
    manyruns.plan(write_recipe(tiny_recipe(runs=1)), store)
    with pytest.raises(OptionError, match="grouped is for fast-cnn only"):
        manyruns.train(store, strategy="grouped", progress=False)


def test_test_time_augmented_logits_are_the_weighted_mean_over_the_views():
    from manyruns.training.engine import predict_tta

    ms = models(2)
    pop = LoopPopulation(clone(ms)).eval()
    x = torch.randn(5, 3, 12, 12)
    with torch.no_grad():
        f = [lambda v, m=m: m.eval()(v) for m in ms]
        flip = torch.stack([0.5 * (fm(x) + fm(x.flip(-1))) for fm in f])
        torch.testing.assert_close(predict_tta(pop, x, "flip", batch=3), flip, rtol=1e-5, atol=1e-6)
        padded = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect"))
        padded_mirror = torch.from_numpy(np.pad(x.flip(-1).numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect"))
        shifted = [padded[..., :12, :12], padded[..., 2:, 2:], padded_mirror[..., :12, :12], padded_mirror[..., 2:, 2:]]
        expected = torch.stack([0.5 * flip[g] + 0.5 * torch.stack([fm(v) for v in shifted]).mean(0) for g, fm in enumerate(f)])
        torch.testing.assert_close(predict_tta(pop, x, "flip-translate", batch=3), expected, rtol=1e-5, atol=1e-6)


def test_a_store_records_test_time_augmented_logits(tmp_path, write_recipe):
    text = tiny_recipe(runs=2).replace('kind = "mlp"\nwidths = [32]', 'kind = "fast-cnn"\nstem = 6\nwidths = [8, 8]')
    text = text.replace("logits = [\"train\", \"test\"]", "logits = [\"train\", \"test\"]\ntta = \"flip-translate\"")
    store = tmp_path / "s"
    manyruns.plan(write_recipe(text), store)
    manyruns.train(store, executor="serial", progress=False)
    pop = manyruns.open(store)
    for split in ("train", "test"):
        tta, plain = pop.load(f"logits_tta/{split}"), pop.load(f"logits/{split}")
        assert tta.shape == plain.shape and np.isfinite(tta).all() and not np.array_equal(tta, plain)


def test_the_per_model_loop_trains_one_run_per_group_and_runs_do_not_depend_on_their_group(tmp_path, write_recipe):
    from manyruns.execute.schedule import default_group_size

    assert default_group_size("loop", "cpu") == 1  # each run committed as soon as it ends
    text = tiny_recipe(runs=3).replace('kind = "mlp"\nwidths = [32]', 'kind = "fast-cnn"\nstem = 6\nwidths = [8, 8]').replace("epochs = 3", "epochs = 1")
    text = text.replace("weights = [0, 3]", "weights = [1]")
    recipe = write_recipe(text)
    stores = {}
    for size in (1, 3):  # the loop form keeps weights and inputs channels-last on CPU
        stores[size] = tmp_path / f"g{size}"
        manyruns.plan(recipe, stores[size])
        manyruns.train(stores[size], executor="serial", group_size=size, progress=False)
    a, b = manyruns.open(stores[1]), manyruns.open(stores[3])
    for name in ("logits/train", "logits/test", "weights/epoch_1", "metrics"):
        assert np.array_equal(a.load(name), b.load(name), equal_nan=True), name
