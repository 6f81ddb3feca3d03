"""Damaged stores: truncated and altered chunks are found when read, named in one line, and
`verify --repair` uncommits their runs so that `train` redoes them (local and S3)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import manyruns
from manyruns.analysis.heldout import memorization
from manyruns.errors import DamagedChunkError
from manyruns.store import Store

from .conftest import cli_here, tiny_recipe
from .s3server import bucket

ARRAYS = ("logits/train", "logits/test", "mask/train", "labels/train", "metrics", "weights/epoch_3")


cli = cli_here  # the commands, in this process


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    recipe = root / "recipe.toml"
    recipe.write_text(tiny_recipe(runs=4))
    manyruns.plan(recipe, root / "store")
    manyruns.train(root / "store", executor="serial", progress=False)
    return recipe, root / "store"


def damage(location, key: str, how: str) -> None:
    data, _ = location.read(key)
    if how == "truncate":
        location.write(key, data[:100] if len(data) > 100 else data[: len(data) // 2])
    else:
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x40
        location.write(key, bytes(flipped))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_damaged_chunks_are_named_found_and_repaired(original, tmp_path, s3, where):  # noqa: F811
    recipe, source = original
    if where == "local":
        target = str(tmp_path / "store")
        shutil.copytree(source, target)
    else:
        target = f"s3://{bucket(s3)}/damaged"
        manyruns.plan(recipe, target)
        manyruns.train(target, executor="serial", progress=False)
    location = Store.open(target).location
    damage(location, "logits/test/c/1/0/0", "truncate")
    damage(location, "mask/train/c/2/0", "flip")
    # an analysis stops with one line naming the run, the array and verify --repair (exit 1)
    result = cli("ensemble", target, "--plot", str(tmp_path / "e.png"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "run 1, array logits/test" in lines[0] and "verify" in lines[0] and "--repair" in lines[0]
    with pytest.raises(DamagedChunkError) as err:
        memorization(manyruns.open(target))
    assert (err.value.run, err.value.array) == (2, "mask/train")
    # verify finds both, exit 1; --repair uncommits them; train redoes them, identical to the original
    result = cli("verify", target, "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 1 and report["damaged"] == {"1": ["logits/test"], "2": ["mask/train"]} and report["runs_checked"] == 4
    result = cli("verify", target, "--repair")
    assert result.returncode == 0 and "uncommitted 2 runs (1-2)" in result.stdout, result.stdout
    status = manyruns.status(target)
    assert status["committed"] == 2 and set(status["failures"]) == {"1", "2"}
    assert manyruns.train(target, executor="serial", progress=False).trained == 2
    assert cli("verify", target).returncode == 0 and manyruns.status(target)["failures"] == {}
    repaired, reference = manyruns.open(target), manyruns.open(source)
    for name in ARRAYS:
        assert np.array_equal(repaired.load(name), reference.load(name), equal_nan=True), name


def test_new_stores_checksum_every_chunk(original):
    _, source = original
    codecs = [type(c).__name__ for c in manyruns.open(source).array("logits/test").metadata.codecs]
    assert codecs == ["BytesCodec", "ZstdCodec", "Crc32cCodec"]
