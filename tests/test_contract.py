"""The analysis contract end to end: one store, every analysis, one meaning of ``runs``.

The store holds 8 trained runs; run 1 is marked diverged and run 6 is not committed, so that
"ok", "committed", a count and an explicit set of runs all select different runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import manyruns
from manyruns.analysis.ensemble import ensemble_curve
from manyruns.analysis.heldout import cscore, influence, memorization
from manyruns.analysis.knn import knn_evaluate
from manyruns.analysis.neighbours import neighbours
from manyruns.analysis.pairs import pairs
from manyruns.analysis.randomization import fit_curves
from manyruns.analysis.zoo import predict_accuracy
from manyruns.errors import OptionError
from manyruns.selection import format_runs, parse
from manyruns.store import Store

from .conftest import cli_here, tiny_recipe

OK = [0, 2, 3, 4, 5, 7]
COMMITTED = [0, 1, 2, 3, 4, 5, 7]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("contract")
    recipe = folder / "recipe.toml"
    recipe.write_text(tiny_recipe(runs=8, extra="true_prob = true\n"))
    path = folder / "store"
    manyruns.plan(recipe, path)
    manyruns.train(path, executor="serial", progress=False)
    raw = Store.open(path)
    raw.array("status")[1] = 2  # run 1 diverged (its values stay finite, so every analysis can use it when named)
    raw.uncommit([6])
    return path


cli = cli_here  # every command, in this process


def store_files(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------------ selection


def test_selection_has_one_meaning(store):
    pop = manyruns.open(store)
    assert pop.select().tolist() == OK == pop.select("ok").tolist() == pop.select(None).tolist()
    assert pop.select("committed").tolist() == COMMITTED
    assert pop.select(3).tolist() == [0, 2, 3] == pop.select("3").tolist()
    assert pop.select("0-2").tolist() == [0, 1, 2]  # a diverged run named explicitly is used
    assert pop.select("0,3-4,5-").tolist() == [0, 3, 4, 5, 7]  # an open range: the committed runs from 5 on
    assert pop.select([7, 0, 3]).tolist() == [7, 0, 3]  # a list: exactly these, in this order
    assert format_runs([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


@pytest.mark.parametrize(
    "runs, message",
    [
        ("0-7", "run 6 is not committed"),
        ([6], "run 6 is not committed"),
        ("3,9-10", "runs 9-10 do not exist (the store has runs 0-7)"),
        ("12-", "run 12 does not exist"),
        (7, "asks for the first 7 ok runs, but the store has 6"),
        (0, "must be at least 1"),
        ("ok,1", "must be a count such as 100, 'ok', 'committed', or run indices"),
        ("5-2", "the range 5-2 ends before it starts"),
        ([2, 2], "names run(s) 2 more than once"),
        ("5,3,3", "names run(s) 3 more than once"),
        ("0-3,2-5", "names run(s) 2-3 more than once"),
        ("4,3-", "names run(s) 4 more than once"),
        ("0-99999999999", "runs 8-99999999999 do not exist"),
        (True, "must be a count"),
    ],
)
def test_bad_selections_say_which_runs(store, runs, message):
    with pytest.raises(OptionError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        manyruns.open(store).select(runs)
    assert err.value.param == "runs"


def test_an_empty_selection_is_refused(tmp_path, write_recipe):
    manyruns.plan(write_recipe(tiny_recipe(runs=2)), tmp_path / "s")
    with pytest.raises(OptionError, match="selects no runs .*train the population first"):
        manyruns.open(tmp_path / "s").select()


def test_options_check_the_form_of_runs_before_any_store(store):
    with pytest.raises(OptionError, match="runs must be a count"):
        manyruns.analysis.heldout.MemorizationOptions(runs="latest")
    assert parse("0-9,20").text == "0-9,20"
    # a numpy integer counts runs, as an int does; a list is recorded as a list
    options = manyruns.analysis.heldout.MemorizationOptions(runs=np.int64(3))
    assert options.runs == 3 and options.params()["runs"] == "3"
    assert ensemble_curve(manyruns.open(store), runs=np.int64(3)).runs.tolist() == [0, 2, 3]
    assert manyruns.analysis.heldout.MemorizationOptions(runs=[5]).params()["runs"] == [5]


def test_a_result_without_runs_still_summarizes():
    from manyruns.analysis.neighbours import Neighbours

    nb = Neighbours(indices=np.zeros((2, 1), dtype=np.int64), values=np.ones((2, 1), dtype=np.float32))
    assert nb.run_count == 0 and nb.summary()["runs"] is None


# ---------------------------------------------------------------------- Python contract


COMPUTE = {
    "ensemble": (ensemble_curve, {}),
    "kernel": (neighbours, {"k": 3}),
    "knn": (knn_evaluate, {"k": 3}),
    "pairs": (pairs, {}),
    "memorization": (memorization, {}),
    "influence": (influence, {"dense": "store"}),
    "cscore": (cscore, {}),
    "fit-curves": (fit_curves, {}),
    "zoo-predict": (predict_accuracy, {"model": "linear", "checkpoints": "all"}),
}


@pytest.mark.parametrize("name", sorted(COMPUTE))
def test_compute_writes_nothing_and_save_records_the_runs(store, tmp_path, name):
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(store, path)
    pop = manyruns.open(path)
    compute, options = COMPUTE[name]
    before = store_files(path)
    result = compute(pop, runs="0-2", **options)
    assert store_files(path) == before  # computing never writes to the store
    assert result.runs.tolist() == [0, 1, 2]
    summary = result.summary()
    assert summary["runs"] == [0, 1, 2] and summary["run_count"] == 3 and summary["options"]["runs"] == "0-2"
    json.dumps(summary, allow_nan=False)  # JSON-ready: no NaN, no numpy values
    assert isinstance(result.table(), pd.DataFrame) and len(result.table()) > 0
    where = result.save(pop)
    group = manyruns.open(path).store.group[where]
    assert group["runs"][:].tolist() == [0, 1, 2]
    assert group.attrs["params"]["runs"] == "0-2" and group.attrs["summary"]["run_count"] == 3
    if name == "influence":  # the dense matrix reaches the store only through save
        assert group["matrix"].shape == (pop.layout["n_test"], pop.layout["n_train"])


# -------------------------------------------------------------------------- command line


COMMANDS = {
    "ensemble": ["--plot", "{tmp}/e.png"],
    "kernel": ["--k", "3"],
    "knn": ["--k", "3"],
    "pairs": [],
    "memorization": ["--no-grid"],
    "influence": ["--no-grid"],
    "cscore": ["--no-grid"],
    "fit-curves": ["--plot", "{tmp}/f.png"],
    "zoo-predict": ["--model", "linear", "--checkpoint", "all", "--plot", "{tmp}/z.png"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_analysis_command_uses_exactly_the_runs_selected(store, tmp_path, command):
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(store, path)
    extra = [a.format(tmp=tmp_path) for a in COMMANDS[command]]
    for runs, expected in (("3", [0, 2, 3]), ("0-2", [0, 1, 2]), ("ok", OK)):
        result = cli(command, str(path), "--runs", runs, "--json", *extra)
        assert result.returncode == 0, f"{command} --runs {runs}: {result.stderr}"
        summary = json.loads(result.stdout)
        assert summary["runs"] == expected, (command, runs)
        assert manyruns.open(path).store.group[summary["stored"]]["runs"][:].tolist() == expected
    # bad selections: one line naming --runs, exit 2, nothing written
    before = store_files(path)
    for runs, words in (("5-6", "run 6 is not committed"), ("20", "the first 20 ok runs"), ("latest", "--runs must be")):
        result = cli(command, str(path), "--runs", runs, *extra)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and "--runs" in lines[0] and words in lines[0], (command, result.stderr)
    assert store_files(path) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["kernel", "--k", "0"], "error: --k must be at least 1, got 0"),
        (["kernel", "--queries", "val"], "error: --queries must be one of test, train, got 'val'"),
        (["knn", "--power", "-1"], "error: --power must be at least 0, got -1.0"),
        (["ensemble", "--split", "val"], "error: --split must be one of test, train, got 'val'"),
        (["ensemble", "--sizes", "2,x"], "error: --sizes must be integers separated by commas"),
        (["influence", "--memory-gib", "0"], "error: --memory-gib must be positive, got 0.0"),
        (["influence", "--value", "margin", "--precision", "int8"], "error: --precision int8 would round value 'margin'"),
        (["memorization", "--block-size", "0"], "error: --block-size must be at least 1, got 0"),
        (["pairs", "--ranks", "9-3"], "error: --ranks must satisfy 1 <= FIRST <= LAST"),
        (["zoo-predict", "--test-fraction", "1.5"], "error: --test-fraction must be in (0, 1), got 1.5"),
        (["zoo-predict", "--checkpoint", "7"], "error: --checkpoint: no weights recorded at epoch(s) [7]"),
        (["kernel", "--classes", "12"], "error: --classes [12] are outside 0..9"),
    ],
)
def test_invalid_options_name_the_flag_and_exit_2(store, args, message):
    before = store_files(store)
    result = cli(args[0], str(store), *args[1:])
    assert result.returncode == 2 and result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert store_files(store) == before


def test_unwritable_outputs_and_bad_runs_of_an_option_are_refused_before_any_work(store, tmp_path):
    before = store_files(store)
    for args, words in (
        (["ensemble", "--csv", str(tmp_path)], "--csv"),
        (["memorization", "--grid", str(tmp_path)], "--grid"),
        (["kernel", "--npz", str(tmp_path / "nb.npz"), "--csv", "/proc/x/y.csv"], "--csv"),
        (["pairs", "--features-grid", str(tmp_path / "f.png"), "--feature-run", "999"], "--feature-run 999"),
        (["memorization", "--out", str(tmp_path / "a.csv"), "--csv", str(tmp_path / "b.csv")], "give --csv or its old name --out, not both"),
    ):
        result = cli(args[0], str(store), *args[1:])
        assert result.returncode == 2 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
    assert store_files(store) == before


def test_dense_influence_makes_no_file_for_a_store_it_cannot_serve(tmp_path, write_recipe):
    manyruns.plan(write_recipe(tiny_recipe(runs=2, subset="1.0")), tmp_path / "s")
    manyruns.train(tmp_path / "s", executor="serial", progress=False)
    with pytest.raises(manyruns.analysis.heldout.NoHeldoutRunsError):
        influence(manyruns.open(tmp_path / "s"), dense=tmp_path / "m.npy")
    assert not (tmp_path / "m.npy").exists()


def test_knn_says_when_runs_look_like_the_old_run_counts(store):
    result = cli("knn", str(store), "--k", "2", "--runs", "2,3")
    assert result.returncode == 0 and "for the accuracy with the first n runs, use --sizes 2,3" in result.stderr


def test_deprecated_option_names_still_work_for_a_release(store, tmp_path):
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(store, path)
    result = cli("memorization", str(path), "--out", str(tmp_path / "m.csv"), "--no-grid")
    assert result.returncode == 0 and "--out is deprecated" in result.stderr and (tmp_path / "m.csv").is_file()
    result = cli("kernel", str(path), "--k", "2", "--memory-gb", "0.5", "--json")
    assert result.returncode == 0 and "--memory-gb is deprecated" in result.stderr
    assert json.loads(result.stdout)["options"]["memory_gib"] == 0.5
