"""The recipe: one TOML file that says what every run of a population trains and records.

A recipe has seven sections::

    [data]        dataset, input scaling, augmentation
    [model]       architecture (``kind`` = mlp | small-cnn | resnet | wrn) and its options
    [optimizer]   sgd | adam | adamw | rmsprop, learning rate, momentum, weight decay
    [schedule]    constant | step | cosine | one-cycle
    [training]    epochs, batch size, label smoothing, precision
    [population]  what varies per run: runs, seed, subset, label_noise, inputs, sweep
    [record]      what each run keeps: logits, metrics, weights, true-class probabilities

Every field is validated here, at the boundary; :class:`RecipeError` names the offending field
and, where there is a fixed set, the allowed values. See ``examples/`` for complete recipes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from .sweeps import SweepSpec, sweep_extremes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DATASETS = (
    "digits",
    "mnist",
    "fashion-mnist",
    "cifar10",
    "cifar10-gs",
    "cifar100",
    "svhn",
    "svhn-gs",
)
ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid", "elu", "leaky_relu")
INITS = ("default", "he_normal", "glorot_normal", "orthogonal", "normal", "truncated_normal")
INPUT_RANDOMIZATIONS = ("none", "shuffled-pixels", "permuted-pixels", "random-pixels", "gaussian")

Dataset = Literal[DATASETS]  # type: ignore[valid-type]
Activation = Literal[ACTIVATIONS]  # type: ignore[valid-type]
Init = Literal[INITS]  # type: ignore[valid-type]
InputRandomization = Literal[INPUT_RANDOMIZATIONS]  # type: ignore[valid-type]


class RecipeError(ValueError):
    """An invalid recipe. ``field`` is the dotted path of the first offending field."""

    def __init__(self, message: str, field: str | None = None, source: str | None = None):
        self.field = field
        self.source = source
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + message)


class FieldError(ValueError):
    """A check that spans sections, raised inside validation, naming the field it blames."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------------- data


class Augment(_Section):
    flip: StrictBool = False
    """Random horizontal flips with probability 1/2."""
    crop: int = Field(0, ge=0)
    """Random crops after zero padding by this many pixels on each side (0: off)."""


class DataSection(_Section):
    dataset: Dataset = "digits"
    normalize: Literal["unit", "standard", "symmetric"] = "standard"
    """unit: pixels in [0, 1]; symmetric: [-1, 1]; standard: per-channel mean 0 and variance 1
    (statistics of the training set)."""
    augment: Augment = Augment()
    train_examples: int | None = Field(None, ge=1)
    """Use only the first N training examples, in the dataset's order (all when unset): the
    small fixed sets of attribution benchmarks, e.g. 5,000 MNIST images."""
    test_examples: int | None = Field(None, ge=1)
    """Use only the first N test examples (all when unset)."""


# ---------------------------------------------------------------------------------- model


class _ModelBase(_Section):
    activation: Activation = "relu"
    init: Init = "default"
    """Weight initialization. ``default`` keeps PyTorch's; ``normal``/``truncated_normal`` use
    ``init_std``."""
    init_std: float = Field(0.05, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


class MLPSpec(_ModelBase):
    kind: Literal["mlp"] = "mlp"
    widths: list[Annotated[int, Field(gt=0)]] = [512, 256]
    """Hidden layer widths; the input and output sizes come from the dataset."""


class SmallCNNSpec(_ModelBase):
    kind: Literal["small-cnn"] = "small-cnn"
    channels: int = Field(16, gt=0)
    layers: int = Field(3, gt=0)
    """Number of 3x3 stride-2 'valid' convolutions before global average pooling."""


class ResNetSpec(_ModelBase):
    kind: Literal["resnet"] = "resnet"
    blocks: list[Annotated[int, Field(gt=0)]] = [2, 2, 2, 2]
    """Basic blocks per stage (ResNet-18 layout by default)."""
    width: int = Field(64, gt=0)
    """Channels of the first stage; each later stage doubles them."""


class WideResNetSpec(_ModelBase):
    kind: Literal["wrn"] = "wrn"
    depth: int = Field(28, ge=10)
    width: int = Field(10, gt=0)

    @field_validator("depth")
    @classmethod
    def _depth_is_6n_plus_4(cls, v: int) -> int:
        if (v - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n+4 (10, 16, 22, 28, 34, 40, ...), got {v}")
        return v


class FastCNNSpec(_ModelBase):
    """A fast CIFAR-style convnet: a 2x2 stem convolution, then per width a block of
    conv3x3, 2x2 max-pool, batch norm, activation, conv3x3, batch norm, activation; a global
    max-pool and a bias-free linear output whose logits are multiplied by ``logit_scale``."""

    kind: Literal["fast-cnn"] = "fast-cnn"
    activation: Activation = "gelu"
    stem: int = Field(24, gt=0)
    """Channels of the 2x2 stem convolution."""
    widths: list[Annotated[int, Field(gt=0)]] = [64, 256, 256]
    """Channels of each block; each block halves the resolution."""
    logit_scale: float = Field(1 / 9, gt=0)
    batchnorm_momentum: float = Field(0.4, gt=0, le=1)
    """Weight of a batch's statistics in the running ones (PyTorch's convention): short
    training wants fast-moving statistics."""


ModelSpec = Annotated[
    Union[MLPSpec, SmallCNNSpec, ResNetSpec, WideResNetSpec, FastCNNSpec], Field(discriminator="kind")
]
MODEL_KINDS = ("mlp", "small-cnn", "resnet", "wrn", "fast-cnn")


# ------------------------------------------------------------------ optimizer and schedule


class OptimizerSection(_Section):
    name: Literal["sgd", "adam", "adamw", "rmsprop"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    """SGD and RMSprop momentum."""
    nesterov: StrictBool = False
    weight_decay: float = Field(0.0, ge=0)
    """L2 penalty added to the gradient (decoupled for adamw)."""
    betas: tuple[float, float] = (0.9, 0.999)
    alpha: float = Field(0.99, gt=0, lt=1)
    """RMSprop smoothing constant."""
    eps: float = Field(1e-8, gt=0)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> "OptimizerSection":
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov = true needs name = 'sgd' and momentum > 0")
        return self


class ScheduleSection(_Section):
    kind: Literal["constant", "step", "cosine", "one-cycle"] = "constant"
    milestones: list[Annotated[int, Field(gt=0)]] = []
    """step: epochs at which the learning rate is multiplied by ``gamma``."""
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    """cosine: linear warm-up from 0 before the decay."""
    peak_fraction: float = Field(0.25, gt=0, lt=1)
    """one-cycle: fraction of training spent rising linearly to the peak ``lr``."""
    final_fraction: float = Field(0.0, ge=0, le=1)
    """cosine and one-cycle: final learning rate as a fraction of ``lr``."""


class TrainingSection(_Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    precision: Literal["float32", "bfloat16"] = "float32"
    """bfloat16: matrix products in bfloat16 with float32 master weights (MLP on CPU)."""
    batches: Literal["subset", "dataset"] = "subset"
    """subset: each epoch a run shuffles its own examples into batches of ``batch_size``.
    dataset: each epoch a run shuffles the whole training set into batches of ``batch_size /
    subset`` examples and trains on the members of its subset in each, their loss summed and
    divided by ``batch_size``; runs sharing a seed then take the same steps on the same batches
    less the examples they leave out."""


# ------------------------------------------------------------------------- population


class LabelNoise(_Section):
    p: float | list[float] = 0.0
    """Probability that a training label is replaced by a uniformly drawn class. A list splits
    the runs evenly between the values. Test labels are never touched."""
    scope: Literal["dataset", "run"] = "dataset"
    """dataset: the same corrupted labels for every run at a given p (randomization tests);
    run: each run draws its own."""
    exclude_true: StrictBool = False
    """false (as in the randomization papers): the replacement is uniform over all classes and
    may equal the true label, so p = 1 leaves about 1/C of the labels right. true: the
    replacement is uniform over the other classes, so exactly the drawn labels are wrong."""

    matrix: list[list[float]] | None = None
    """Class-conditional noise: row ``i`` is the distribution of the noisy label of an example
    whose true class is ``i`` (C rows of C probabilities, each row summing to 1). A label drawn
    for replacement (probability ``p``) is redrawn from its row; ``p = 1`` applies the matrix
    to every label. ``exclude_true`` does not apply (the diagonal says how often a label stays)."""

    @model_validator(mode="after")
    def _matrix_is_a_transition_matrix(self) -> "LabelNoise":
        if self.matrix is None:
            return self
        m = self.matrix
        if not m or any(len(row) != len(m) for row in m):
            raise ValueError(f"label noise matrix must be square (C rows of C probabilities), got rows of lengths {[len(r) for r in m]}")
        for i, row in enumerate(m):
            if any(not 0.0 <= x <= 1.0 for x in row) or abs(sum(row) - 1.0) > 1e-6:
                raise ValueError(f"label noise matrix row {i} must hold probabilities summing to 1, got {row} (sum {sum(row):.6g})")
        if self.exclude_true:
            raise ValueError("label noise: exclude_true does not apply with a matrix (its diagonal says how often a label stays)")
        return self

    @field_validator("p", mode="before")
    @classmethod
    def _p_is_a_number(cls, v: Any) -> Any:
        if isinstance(v, bool) or (isinstance(v, list) and any(isinstance(x, bool) for x in v)):
            raise ValueError(f"label noise probability must be a number in [0, 1], got {v!r}")
        return v

    @field_validator("p")
    @classmethod
    def _p_in_unit_interval(cls, v: float | list[float]) -> float | list[float]:
        for p in v if isinstance(v, list) else [v]:
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"label noise probability must lie in [0, 1], got {p}")
        if isinstance(v, list) and not v:
            raise ValueError("give at least one probability")
        return v

    @property
    def levels(self) -> list[float]:
        return list(self.p) if isinstance(self.p, list) else [self.p]


SWEEPABLE_SECTIONS = ("data", "model", "optimizer", "schedule", "training")


class PopulationSection(_Section):
    runs: int = Field(1, ge=1)
    seed: int = Field(0, ge=0)
    subset: float | list[float] = 1.0
    """Fraction of the training set each run trains on (drawn without replacement, per run).
    A list splits the runs evenly between the ratios."""
    folds: int | None = Field(None, ge=2)
    """K-fold cross-validation instead of random subsets: the training set is split into K
    folds of equal size (up to one example), a fresh random partition for every K consecutive
    runs, and run ``r`` trains on every fold but fold ``r mod K``; each block of K runs holds
    every example out exactly once. Not combined with ``subset``."""
    seeds_per_subset: int = Field(1, ge=1)
    """Runs in blocks of this many share their training subset (and condition) and differ in
    seed: run ``r`` trains on the subset of run ``r - r mod S``. What the linear datamodeling
    score's evaluation needs (several seeds per subset, for its noise ceiling)."""
    shared_seed: bool = False
    """Every run draws its initialization, data order, dropout and augmentation from one seed
    (run 0's), so runs differ only in what else varies (subset, label noise, sweep): the
    seed's own variation leaves the outputs, which is what datamodels fitted on the runs want.
    Not combined with ``seeds_per_subset``."""
    label_noise: LabelNoise | None = None
    inputs: InputRandomization | list[InputRandomization] = "none"
    """Input randomization (dataset scope, applied to train and test inputs):
    shuffled-pixels: one pixel permutation for the whole dataset;
    permuted-pixels: an independent permutation per image;
    random-pixels: independent uniform pixel values;
    gaussian: independent normal pixels with the dataset's per-channel mean and variance.
    A list splits the runs between them."""
    sweep: dict[str, SweepSpec] = {}
    """Per-run hyperparameters: ``"optimizer.lr" = {log_uniform = [1e-3, 1e-1]}``,
    ``"model.activation" = {choice = ["relu", "tanh"]}``, ``"model.dropout" = {uniform = [0, 0.5]}``."""

    @field_validator("label_noise", mode="before")
    @classmethod
    def _noise_shorthand(cls, v: Any) -> Any:
        if isinstance(v, (int, float, list)):
            return {"p": v}
        return v

    @field_validator("subset")
    @classmethod
    def _ratios_in_unit_interval(cls, v: float | list[float]) -> float | list[float]:
        for r in v if isinstance(v, list) else [v]:
            if not 0.0 < r <= 1.0:
                raise ValueError(f"subset ratio must lie in (0, 1], got {r}")
        if isinstance(v, list) and not v:
            raise ValueError("give at least one ratio")
        return v

    @field_validator("sweep")
    @classmethod
    def _dotted_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            section = key.split(".", 1)[0]
            if "." not in key or section not in SWEEPABLE_SECTIONS:
                raise ValueError(
                    f"sweep key {key!r} must be 'section.field' with section one of "
                    + ", ".join(SWEEPABLE_SECTIONS)
                )
        return v

    @model_validator(mode="after")
    def _folds_or_subset(self) -> "PopulationSection":
        if self.folds is not None and self.subset != 1.0:
            raise ValueError("give population.folds or population.subset, not both (folds set each run's subset)")
        if self.folds is not None and self.seeds_per_subset > 1:
            raise ValueError("give population.folds or population.seeds_per_subset, not both")
        if self.shared_seed and self.seeds_per_subset > 1:
            raise ValueError("give population.shared_seed or population.seeds_per_subset, not both (the seeds of a block would be one)")
        return self

    @property
    def subset_levels(self) -> list[float]:
        if self.folds is not None:
            return [(self.folds - 1) / self.folds]
        return list(self.subset) if isinstance(self.subset, list) else [self.subset]

    @property
    def noise_levels(self) -> list[float]:
        return self.label_noise.levels if self.label_noise else [0.0]

    @property
    def input_levels(self) -> list[str]:
        return list(self.inputs) if isinstance(self.inputs, list) else [self.inputs]


class RecordSection(_Section):
    logits: list[Literal["train", "test"]] = ["train", "test"]
    """Final logits on the whole training set (every example, trained on or not) and on the
    test set, stored as float16."""
    metrics: StrictBool = True
    """Per-epoch train/test loss and accuracy."""
    train_metrics: Literal["running", "eval"] = "running"
    """running: train loss/accuracy averaged over the epoch's batches (free);
    eval: a separate pass over the run's training subset at the end of each epoch."""
    weights: list[Annotated[int, Field(ge=0)]] = []
    """Epochs at which to keep the flattened parameters (0 = initialization)."""
    tta: Literal["none", "flip", "flip-translate"] = "none"
    """Also keep test-time-augmented logits (``logits_tta/<split>`` for each split of
    ``logits``): the mean logits over the image and its mirror image (``flip``); with
    ``flip-translate``, half that and half the same mean over the image shifted by one pixel
    both ways (reflect-padded), diagonally up-left and down-right."""
    true_prob: StrictBool = False
    """Per-epoch probability of the (run's) label for each training example, taken from the
    forward pass in which the example was trained on (NaN where it was not)."""
    initial_metrics: StrictBool = False
    """Evaluate train/test loss and accuracy before the first step (row 0 of ``metrics``);
    implied when ``weights`` contains epoch 0."""
    features: int = Field(0, ge=0)
    """Keep the penultimate-layer features on every train and test example for the first
    ``features`` runs (float16)."""

    @property
    def metrics_at_init(self) -> bool:
        return self.initial_metrics or 0 in self.weights


# ----------------------------------------------------------------------------- recipe


class Recipe(_Section):
    name: str = "population"
    description: str = ""
    data: DataSection = DataSection()
    model: ModelSpec = MLPSpec()
    optimizer: OptimizerSection = OptimizerSection()
    schedule: ScheduleSection = ScheduleSection()
    training: TrainingSection = TrainingSection()
    population: PopulationSection = PopulationSection()
    record: RecordSection = RecordSection()

    @model_validator(mode="before")
    @classmethod
    def _model_kind_defaults_to_mlp(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("model"), dict) and "kind" not in data["model"]:
            data = {**data, "model": {**data["model"], "kind": "mlp"}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        for e in self.record.weights:
            if e > self.training.epochs:
                raise FieldError("record.weights", f"asks for epoch {e} but training.epochs is {self.training.epochs}")
        for m in self.schedule.milestones:
            if m > self.training.epochs:
                raise FieldError("schedule.milestones", f"has epoch {m} > training.epochs = {self.training.epochs}")
        if self.training.batches == "dataset" and self.model.kind in ("resnet", "wrn", "fast-cnn"):
            raise FieldError(
                "training.batches",
                f"'dataset' needs a model without batch norm, got {self.model.kind} (the batch statistics would see the examples a run leaves out)",
            )
        return self

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> "Recipe":
        try:
            recipe = cls.model_validate(data)
        except pydantic.ValidationError as exc:
            raise _as_recipe_error(exc, source, data) from None
        _check_sweep_targets(recipe, source)
        return recipe

    @classmethod
    def from_toml(cls, text: str, source: str | None = None) -> "Recipe":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise RecipeError(f"not valid TOML: {exc}", source=source) from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> "Recipe":
        path = Path(path)
        if not path.is_file():
            raise RecipeError("recipe file not found", source=str(path))
        return cls.from_toml(path.read_text(), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible form, with every default filled in."""
        return self.model_dump(mode="json")

    def with_overrides(self, overrides: dict[str, Any]) -> "Recipe":
        """A copy with dotted-path fields replaced (``{"optimizer.lr": 0.01}``), re-validated."""
        data = self.to_dict()
        for key, value in overrides.items():
            section, field = key.split(".", 1)
            data[section][field] = value
        return Recipe.model_validate(data)

    @property
    def num_cells(self) -> int:
        p = self.population
        return len(p.subset_levels) * len(p.noise_levels) * len(p.input_levels)


_UNION_MEMBER_TAG = re.compile(r"^(literal|list|tuple|dict|set|float|int|str|bool|none)(\[.*\])?$")


def _format_loc(loc: tuple[Any, ...]) -> str:
    # Pydantic names the union member that failed ("literal['none',...]", "list[float]"): drop it.
    parts = [str(x) for x in loc if not (isinstance(x, str) and _UNION_MEMBER_TAG.match(x))]
    # Pydantic puts the discriminator tag of a union member into the path: drop it.
    if len(parts) >= 2 and parts[0] == "model" and parts[1] in MODEL_KINDS:
        parts = [parts[0], *parts[2:]]
    if len(parts) >= 3 and parts[0] == "population" and parts[1] == "sweep":
        # the sweep spec union lists every member's failure; keep the key only
        parts = parts[:3]
    return ".".join(parts)


def _allowed_fields(loc: tuple[Any, ...], data: dict[str, Any]) -> list[str]:
    """Field names valid at the parent of ``loc`` (for 'unknown field' messages)."""
    if len(loc) == 1:
        return list(Recipe.model_fields)
    section = loc[0]
    model_cls: type[BaseModel] | None = None
    if section == "model":
        kind = (data.get("model") or {}).get("kind", "mlp")
        model_cls = {"mlp": MLPSpec, "small-cnn": SmallCNNSpec, "resnet": ResNetSpec, "wrn": WideResNetSpec, "fast-cnn": FastCNNSpec}.get(kind)
    else:
        field = Recipe.model_fields.get(str(section))
        model_cls = field.annotation if field is not None and isinstance(field.annotation, type) else None
    if model_cls is None:
        return []
    if len(loc) == 3 and section == "data" and loc[1] == "augment":
        model_cls = Augment
    elif len(loc) == 3 and section == "population" and loc[1] == "label_noise":
        model_cls = LabelNoise
    return list(model_cls.model_fields)


def _as_recipe_error(exc: pydantic.ValidationError, source: str | None, data: dict[str, Any]) -> RecipeError:
    err = exc.errors()[0]
    loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
    field = _format_loc(loc)
    kind = err["type"]
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, FieldError):
        return RecipeError(f"field '{cause.field}': {cause}", field=cause.field, source=source)
    if field.startswith("population.sweep.") and kind in ("missing", "extra_forbidden"):
        kind = "model_type"
    if kind == "extra_forbidden":
        allowed = _allowed_fields(loc, data)
        where = f" in [{'.'.join(str(x) for x in loc[:-1] if str(x) not in MODEL_KINDS)}]" if len(loc) > 1 else ""
        msg = f"unknown field '{field}'{where}"
        if allowed:
            msg += "; allowed: " + ", ".join(allowed)
    elif kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        msg = f"field '{field}': kind {ctx.get('tag')!r} is not one of {ctx.get('expected_tags')}"
    elif kind == "missing":
        msg = f"field '{field}' is required"
    elif field.startswith("population.sweep.") and kind in ("model_type", "dict_type", "model_attributes_type"):
        msg = f"field '{field}': a sweep entry is one of {{choice = [...]}}, {{uniform = [low, high]}}, {{log_uniform = [low, high]}}"
    else:
        msg = f"field '{field}': {err['msg'].removeprefix('Value error, ')}"
        if "input" in err and kind not in ("value_error", "assertion_error") and not isinstance(err["input"], dict):
            msg += f" (got {err['input']!r})"
    return RecipeError(msg, field=field, source=source)


UNSWEEPABLE_FIELDS = {
    "data.dataset": "the dataset is one for the whole population (its fingerprint and array shapes "
    "are fixed when the store is planned)",
    "training.epochs": "the number of epochs sets the shape of every run's metrics and the "
    "checkpoints the store keeps, so it is one value for the whole population",
}


def _check_sweep_targets(recipe: Recipe, source: str | None) -> None:
    """Every sweep key must name a field that may differ between runs, and its extreme values
    must validate."""
    for key, spec in recipe.population.sweep.items():
        section, field = key.split(".", 1)
        if key in UNSWEEPABLE_FIELDS:
            raise RecipeError(
                f"field 'population.sweep.{key}': {UNSWEEPABLE_FIELDS[key]}",
                field=f"population.sweep.{key}",
                source=source,
            )
        current = getattr(recipe, section)
        if field not in type(current).model_fields or field == "kind":
            allowed = [f for f in type(current).model_fields if f != "kind"]
            raise RecipeError(
                f"field 'population.sweep.{key}': [{section}] has no field {field!r}; allowed: " + ", ".join(allowed),
                field=f"population.sweep.{key}",
                source=source,
            )
        for value in sweep_extremes(spec):
            try:
                recipe.with_overrides({key: value})
            except pydantic.ValidationError as exc:
                inner = exc.errors()[0]
                raise RecipeError(
                    f"field 'population.sweep.{key}': value {value!r} is invalid for '{key}': {inner['msg']}",
                    field=f"population.sweep.{key}",
                    source=source,
                ) from None
