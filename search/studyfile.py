"""The study file (`studies/*.toml`): its schema, its checks and its stored form.

`load_study_spec` reads and checks a study file; command-line overrides go through the same
checks. The checked settings (`StudySpec`) are stored in the study as JSON (`spec_to_dict`),
and every command that opens an existing study reads them back typed (`stored_spec`), through
the same checks. `config_from_point` turns a point of the study's space into the config a
trial trains: the family's net and recipe with the study's [training] values.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from search.answer import MAX_LOSS_LEVEL, Level
from search.data import N_VAL, TRAIN_SPLIT
from search.errors import UsageError
from search.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL
from space.config import PRECISIONS, ConfigError, RunConfig, check, check_shapes, count_params, load_config, over_limit, parse_section, read_text_file
from space.datasets import DATASETS, DEFAULT_DATASET
from space.families import FAMILIES, RECIPE_IN_TRAINING

OBJECTIVE_EPOCHS = 3  # the objective: mean validation accuracy over the last 3 epochs (accuracy that holds)
PRUNERS = ("median", "none")
RANKS = ("accuracy", "loss")  # [fidelity] rank
FIRST_RANKS = ("", *RANKS, "train_loss")  # [fidelity] first_rank ("": as rank)
OBJECTIVES = ("accuracy", "pareto")
MAX_SPREAD = 8  # tpe_spread: at most this many values, each its own TPE model and random start
# Hyperband is not offered: its rungs compare trials at fixed epochs, but a trial may only be
# judged after its own first learning-rate drop and before its last epoch, so a rung would
# compare one trial's epoch 2 with another's epoch 3, and some trials would never reach one.


@dataclass(frozen=True)
class Training:
    epochs: int
    subset: int = TRAIN_SPLIT
    batch_size: int = 128  # these three: only for a family that takes them from here (FROM_TRAINING)
    momentum: float = 0.9
    weight_decay: float = 0.0
    export_epochs: int = 15
    # the validation images a trial and its confirmation runs are evaluated on (the first N of the held-out 10,000): fewer for
    # quick checks, where evaluating 10,000 images costs more than training a few thousand
    validation: int = N_VAL
    # every trial's convolution arithmetic, written into its config ("fp32" or "bf16": space/config.py, RunConfig.precision)
    precision: str = "fp32"


@dataclass(frozen=True)
class Pruner:
    kind: str = "median"
    startup_trials: int = 5


@dataclass(frozen=True)
class Fidelity:
    """Successive halving (Pareto studies): rung k of `rungs` trains on subset / eta^(rungs-1-k)
    images; a trial goes on to the next rung while it is an end of the rung's first front (the
    smallest or the best ranked within the rung's floor) or ranks in the top 1/eta there, and
    always while the rung holds fewer than eta results (the floor still applies). `rank`: what orders
    a rung's results there and confirmation's candidates (search/pareto.py `rank_score`): the mean
    validation accuracy of the last three epochs, or their mean validation loss ("loss"), which
    ranks the confirmed loss the answer is read on better at the last rung (docs/results.md, "The last
    rung's loss ranks the confirmation better than its accuracy"). The region's floors stay in
    accuracy points, and the trial's objective (what TPE models) stays its accuracy. `within`: a
    parameter of the space (like tpe_spread, a few values); below the last rung a trial is ranked,
    and its young-rung and front-end places counted, among the trials that share its value of it
    alone, so that a kind of net that learns more slowly on few images is not stopped by another
    kind's faster start (the floor still counts every trial; "": all trials together; docs/results.md,
    "Two-stage nets at the rungs"). `near_loss`: a ratio (>= 1); at the rungs between the first and the
    last, a trial whose validation loss is more than this many times the lowest there stops, below
    the region, instead of training a rung more for a last-rung result that confirmation's band
    would leave out (0: no band; docs/results.md, "A band on the loss at the middle rung"). `band_only`:
    at those rungs the band alone decides: every trial inside it (and the floor) goes on, unranked, since
    there the loss of nets of 3,000-5,000 params hardly ordered them at the export budget (docs/results.md,
    "What the rungs stopped"). `first_batch`: the batch size the first rung trains at (0: each config's
    own; the later rungs and the export budget keep the config's), and `first_rank`: what orders the
    first rung ("": as `rank`; "train_loss": the training loss of its last epoch, lower first): on 1,851
    images at the config's batch of 128 a net takes 225 steps against 5,865 at the export budget, and
    there the validation loss of nets of 3,000-5,000 params did not order them at the export budget
    (Spearman +0.02 over 71 nets), while at batch 32 the training loss did (+0.71; docs/results.md,
    "What the first rung stopped")."""
    rungs: int = 1
    eta: int = 3
    rank: str = "accuracy"
    within: str = ""
    near_loss: float = 0.0
    band_only: bool = False
    first_batch: int = 0
    first_rank: str = ""


@dataclass(frozen=True)
class Confirm:
    """Confirmation: `top` candidates (a Pareto study's region in promotion order, or the top
    trials) trained at the export budget on the validation split with `seeds` seeds each, then
    seeds added where they decide the answer (see search/confirm.py); `near`: only the trials near
    the answer's level ([region] answer_acc, else target_acc; not with an answer_loss or answer_elastic_loss: search/candidates.py); `near_loss`: only
    the trials whose last-rung loss is near the region's lowest (first, for the time left); `after_run`: at the end of `run`. `subset` below
    the split's TRAIN_SPLIT images is for quick checks only."""
    top: int = 3
    seeds: int = 2
    after_run: bool = False
    subset: int = TRAIN_SPLIT
    max_seeds: int = 0  # > seeds: a candidate whose interval holds the answer's level gets seeds up to this many
    # accuracy points: only the trials whose last-rung result is at most this far under the answer's level are confirmed
    # (the most accurate one when none is); 0: every trial of the region
    near: float = 0.0
    # a ratio (>= 1): only the trials whose last-rung validation loss is at most this many times the region's lowest are
    # confirmed, whatever the answer's level (the rung-to-export factor of the loss varies too much for a band under a loss
    # level: docs/results.md, "A band on the loss"); a candidate already in question still gets its added seeds; 0: every trial of the region
    near_loss: float = 0.0
    # seconds, a hard bound on confirmation: a round starts only for the candidates (smallest first) whose runs are expected to
    # end within it, and a run still training at it is stopped (the next `confirm` trains it again). None: no limit
    timeout: float | None = None


@dataclass(frozen=True)
class Region:
    """What matters (Pareto studies). `floor`: a trial whose result at a rung is more than this
    many accuracy points below the best result there stops, is infeasible for the sampler and
    stays off the front (0: no floor). `target_acc`: the validation accuracy (%) at the export
    budget that steers the run (and, without an answer_acc, answer_loss or answer_elastic_loss, the answer's level: confirmation adds
    seeds to candidates near it, and `run` exports the smallest confirmed config that reaches it;
    0: none). `near_target`: at the last rung, a trial more than this many points under target_acc stops there too, below the region
    (0: no such bound): the sampler then learns where the answer can be, not the whole front.
    `answer_acc`: the validation accuracy (%) the answer is read at (`export`'s default and `run`'s
    target-ACC.json, and where confirmation adds its seeds), when it lies apart from the level that
    steers the run (0: target_acc): steering a little above the answer's level keeps the last
    rung's bound higher (docs/results.md, "The level in the file: seed 1"). `answer_loss`: the mean
    final validation loss the answer is read at instead (at most it; 0: none), which ranks nets of
    one size better than their accuracy does (docs/results.md, "Found or chosen").
    `answer_elastic_loss`: instead, the mean final validation loss under elastic distortion, which
    ranked 37 nets' test means a little better again (docs/results.md, "What validation can see")."""
    floor: float = 0.0
    target_acc: float = 0.0
    near_target: float = 0.0
    answer_acc: float = 0.0
    answer_loss: float = 0.0
    answer_elastic_loss: float = 0.0

    @property
    def answer_level(self) -> Level:
        """The level the study's answer is read at: answer_elastic_loss, answer_loss, else answer_acc, else target_acc (0: none)."""
        if self.answer_elastic_loss:
            return Level(self.answer_elastic_loss, "elastic_loss")
        return Level(self.answer_loss, "loss") if self.answer_loss else Level(self.answer_acc or self.target_acc)


@dataclass(frozen=True)
class StudySpec:
    name: str
    trials: int
    max_params: int
    seed: int
    training: Training
    space: Any  # the family's Space
    timeout: float | None = None  # seconds: a hard bound on the search (no trial or rung starts that would not end within it; one
    # still training at it is stopped); None: no limit
    pruner: Pruner = Pruner()  # a Pareto study's default is "none" (see _spec_from_dict)
    heartbeat_interval: int = HEARTBEAT_INTERVAL  # RDB storage: seconds between a worker's heartbeats
    grace_period: int = GRACE_PERIOD  # RDB storage: a trial silent this long is FAIL and re-queued once
    family: str = "step3"
    tpe_group: bool = False  # TPESampler(group=True): multivariate TPE per group of parameters that occur together
    tpe_startup_trials: int = 10  # TPESampler(n_startup_trials): finished trials drawn at random before TPE models any (Optuna's default)
    tpe_spread: str = ""  # a parameter whose values the trials take in turn, each with a TPE model of its own (search/sampler.py); "": none
    objective: str = "accuracy"  # or "pareto": maximise accuracy and minimise n_params
    fidelity: Fidelity = Fidelity()
    confirm: Confirm = Confirm()
    region: Region = Region()
    # config files (the reference model format) whose nets and recipes are the study's first trials after the hand-made
    # model: hints for the sampler, judged by the same rules as every trial (family "blocks"; read by every `run`, enqueued
    # when the study is created, and again on resume when their trial was lost to a crash)
    start: tuple[str, ...] = ()
    dataset: str = DEFAULT_DATASET  # what every trial trains on (space/datasets.py): each trial's config field `dataset`

    @property
    def pareto(self) -> bool:
        return self.objective == "pareto"


def _spec_from_dict(raw: dict) -> StudySpec:
    top = parse_section(raw, StudySpec, "")
    dataset = top.get("dataset", DEFAULT_DATASET)
    check(dataset in DATASETS, "dataset", f"must be one of {', '.join(DATASETS)}, got {json.dumps(dataset, default=str)}")
    sizes = DATASETS[dataset]
    family = top.get("family", "step3")
    check(family in FAMILIES, "family", f"must be one of {', '.join(FAMILIES)}, got {family!r}")
    training = Training(**parse_section(top["training"], Training, "training"))
    for key in RECIPE_IN_TRAINING:
        check(key in FAMILIES[family].FROM_TRAINING or key not in top["training"], f"training.{key}",
              f"the {family} family searches it: give its range or choices in [space] instead")
    objective = top.get("objective", "accuracy")
    check(objective in OBJECTIVES, "objective", f"must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    # Optuna's report/should_prune raise in a multi-objective study: a Pareto study prunes by its rungs
    pruner = Pruner(**({"kind": "none"} if objective == "pareto" else {}) | parse_section(top.get("pruner", {}), Pruner, "pruner"))
    fidelity = Fidelity(**parse_section(top.get("fidelity", {}), Fidelity, "fidelity"))
    confirm = Confirm(**parse_section(top.get("confirm", {}), Confirm, "confirm"))
    region = Region(**parse_section(top.get("region", {}), Region, "region"))
    space = FAMILIES[family].space_from_dict(top.get("space", {}))
    spec = StudySpec(**{**top, "training": training, "pruner": pruner, "space": space, "fidelity": fidelity, "confirm": confirm,
                        "region": region})
    start = top.get("start", [])
    check(isinstance(start, (list, tuple)) and all(isinstance(p, str) and p.strip() for p in start), "start",
          f"must be a list of config file paths, got {json.dumps(start, default=str)}")
    spec = replace(spec, start=tuple(start))
    check(not spec.start or len(spec.start) < spec.trials, "start", f"{len(spec.start)} start configs need trials > {len(spec.start)} (got {spec.trials}): "
          f"each is a trial, after the hand-made model")
    check_seconds(spec.timeout, "timeout")
    check_seconds(confirm.timeout, "confirm.timeout")
    spec = replace(spec, timeout=_float_or_none(spec.timeout), confirm=replace(confirm, timeout=_float_or_none(confirm.timeout)))
    check(re.fullmatch(r"[A-Za-z0-9_.-]+", spec.name) is not None, "name", f"letters, digits, '_', '.' and '-' only, got {spec.name!r}")
    for key in ("trials", "max_params", "heartbeat_interval"):
        check(getattr(spec, key) > 0, key, f"must be > 0, got {getattr(spec, key)}")
    for key in ("epochs", "subset", "batch_size", "export_epochs"):
        check(getattr(training, key) > 0, f"training.{key}", f"must be > 0, got {getattr(training, key)}")
    check(training.batch_size <= sizes.search_train_size, "training.batch_size",
          f"must be at most {sizes.search_train_size:,} (the training split), got {training.batch_size}")
    check(OBJECTIVE_EPOCHS <= training.epochs, "training.epochs", f"must be >= {OBJECTIVE_EPOCHS} (the objective averages the last {OBJECTIVE_EPOCHS} epochs)")
    check(training.export_epochs % training.epochs == 0, "training.export_epochs",
          f"must be a multiple of training.epochs ({training.epochs}), got {training.export_epochs}: only then does the exported "
          f"StepLR schedule drop the learning rate as often and at the same fractions of training as the trial's")
    check(training.precision in PRECISIONS, "training.precision", f"must be one of {', '.join(PRECISIONS)}, got {training.precision!r}")
    check(training.subset <= sizes.search_train_size, "training.subset", f"the training split has {sizes.search_train_size:,} images, got {training.subset}")
    check(0 < training.validation <= sizes.validation_size, "training.validation",
          f"must be in 1..{sizes.validation_size:,} (the validation split), got {training.validation}")
    check(pruner.kind != "hyperband", "pruner.kind", "hyperband is not supported (its rungs would compare trials at different "
          "epochs of their schedules; see docs/design.md, pruning); use \"median\" or \"none\"")
    check(pruner.kind in PRUNERS, "pruner.kind", f"must be one of {', '.join(PRUNERS)}, got {pruner.kind!r}")
    check(spec.grace_period > spec.heartbeat_interval, "grace_period", f"must be > heartbeat_interval, got {spec.grace_period}")
    check(pruner.startup_trials >= 0, "pruner.startup_trials", f"must be >= 0, got {pruner.startup_trials}")
    check(spec.tpe_startup_trials >= 0, "tpe_startup_trials", f"must be >= 0, got {spec.tpe_startup_trials}")
    check(not fidelity.within or objective == "pareto", "fidelity.within", "groups a Pareto study's rungs: it needs objective = \"pareto\"")
    _check_spread(spec)
    check(objective == "accuracy" or pruner.kind == "none", "pruner.kind", "a Pareto study cannot use Optuna's pruners (they need "
          "one objective); leave [pruner] out and set [fidelity] rungs for successive halving")
    check(fidelity.rungs >= 1 and fidelity.eta >= 2, "fidelity", f"needs rungs >= 1 and eta >= 2, got {fidelity.rungs} and {fidelity.eta}")
    check(fidelity.rungs == 1 or objective == "pareto", "fidelity.rungs", "rungs > 1 need objective = \"pareto\" (an accuracy study prunes with [pruner])")
    check(fidelity.rank in RANKS, "fidelity.rank", f"must be one of {', '.join(RANKS)}, got {json.dumps(fidelity.rank, default=str)}")
    check(fidelity.rank == "accuracy" or objective == "pareto", "fidelity.rank",
          "\"loss\" orders a Pareto study's rungs and candidates: it needs objective = \"pareto\"")
    check(fidelity.near_loss == 0.0 or (math.isfinite(fidelity.near_loss) and fidelity.near_loss >= 1.0), "fidelity.near_loss",
          f"must be a ratio >= 1 to the lowest loss at a rung (0: no band), got {fidelity.near_loss}")
    check(not fidelity.near_loss or fidelity.rungs >= 3, "fidelity.near_loss",
          f"bands the rungs between the first and the last: it needs rungs >= 3, got {fidelity.rungs}")
    check(not fidelity.band_only or fidelity.near_loss, "fidelity.band_only", "lets the loss band alone decide: it needs a near_loss")
    first_images = training.subset // fidelity.eta ** (fidelity.rungs - 1)
    check(0 <= fidelity.first_batch <= first_images, "fidelity.first_batch",
          f"must be a batch size in 1..{first_images:,} (the first rung's images), or 0 for each config's own, got {fidelity.first_batch}")
    check(not fidelity.first_batch or fidelity.rungs >= 2, "fidelity.first_batch", "sets the first of several rungs: it needs rungs >= 2")
    check(fidelity.first_rank in FIRST_RANKS, "fidelity.first_rank",
          f"must be one of {', '.join(repr(r) for r in FIRST_RANKS)}, got {json.dumps(fidelity.first_rank, default=str)}")
    check(not fidelity.first_rank or (objective == "pareto" and fidelity.rungs >= 2), "fidelity.first_rank",
          "orders the first of a Pareto study's rungs: it needs objective = \"pareto\" and rungs >= 2")
    check(first_images >= 128, "fidelity.rungs", f"the first rung would train on {first_images} images: too few; use fewer rungs or a larger subset")
    check(confirm.top >= 1 and confirm.seeds >= 1, "confirm", f"needs top >= 1 and seeds >= 1, got {confirm.top} and {confirm.seeds}")
    check(0 < confirm.subset <= sizes.search_train_size, "confirm.subset",
          f"must be in 1..{sizes.search_train_size:,} (the training split), got {confirm.subset}")
    check(confirm.max_seeds == 0 or confirm.max_seeds >= confirm.seeds, "confirm.max_seeds",
          f"must be 0 (no extra seeds) or >= seeds ({confirm.seeds}), got {confirm.max_seeds}")
    check(math.isfinite(confirm.near) and confirm.near >= 0.0, "confirm.near", f"must be >= 0 accuracy points (0: no band), got {confirm.near}")
    check(not confirm.near or (objective == "pareto" and region.target_acc), "confirm.near",
          "needs objective = \"pareto\" and a [region] target_acc: the band lies under the target")
    check(confirm.near_loss == 0.0 or (math.isfinite(confirm.near_loss) and confirm.near_loss >= 1.0), "confirm.near_loss",
          f"must be a ratio >= 1 to the region's lowest last-rung loss (0: no band), got {confirm.near_loss}")
    check(not confirm.near_loss or objective == "pareto", "confirm.near_loss", "needs objective = \"pareto\": the band lies over the region's lowest loss")
    check(0.0 <= region.floor <= 100.0, "region.floor", f"must be in [0, 100] accuracy points (0: no floor), got {region.floor}")
    check(0.0 <= region.target_acc <= 100.0, "region.target_acc", f"must be a percentage in [0, 100] (0: none), got {region.target_acc}")
    check(math.isfinite(region.near_target) and region.near_target >= 0.0, "region.near_target",
          f"must be >= 0 accuracy points (0: no bound), got {region.near_target}")
    check(not region.near_target or region.target_acc, "region.near_target", "needs a [region] target_acc: the bound lies under the target")
    check(0.0 <= region.answer_acc <= 100.0, "region.answer_acc", f"must be a percentage in [0, 100] (0: target_acc), got {region.answer_acc}")
    check(not region.answer_acc or region.target_acc, "region.answer_acc", "needs a [region] target_acc: it is read apart from the level that steers the run")
    check(0.0 <= region.answer_loss <= MAX_LOSS_LEVEL, "region.answer_loss",
          f"must be a validation loss in [0, {MAX_LOSS_LEVEL:g}] (0: none), got {region.answer_loss}")
    check(0.0 <= region.answer_elastic_loss <= MAX_LOSS_LEVEL, "region.answer_elastic_loss",
          f"must be a validation loss in [0, {MAX_LOSS_LEVEL:g}] (0: none), got {region.answer_elastic_loss}")
    levels = [key for key in ("answer_acc", "answer_loss", "answer_elastic_loss") if getattr(region, key)]
    if len(levels) > 1:
        check(False, f"region.{levels[-1]}", f"the answer is read at one level: set one of answer_acc, answer_loss and answer_elastic_loss, "
                                             f"not {' and '.join(levels)}")
    check(not (region.answer_level.measure != "acc" and confirm.near), "confirm.near",
          "needs an accuracy level to lie under: leave it out with [region] answer_loss or answer_elastic_loss")
    check(region == Region() or objective == "pareto", "region", "needs objective = \"pareto\" (it shapes a front)")
    return spec


def start_points(spec: StudySpec) -> list[tuple[str, dict[str, Any]]]:
    """The study file's start configs as (path, point of its space), each a trial to enqueue, checked
    as a trial would be: a file that cannot be read, is no point of the space, has an
    impossible shape or is over the limit is an error naming the file. A start config is a hint
    for the sampler and nothing more: its trial meets the rungs and the confirmation rule of
    every other trial."""
    points = []
    for path in spec.start:
        try:
            config = load_config(path)  # its errors name the file
        except ConfigError as e:
            raise ConfigError(f"start: {e}") from None
        try:
            check(config.dataset == spec.dataset, "dataset", f"{config.dataset}, not the study's {spec.dataset}")
            point = FAMILIES[spec.family].point_from_config(config, spec.space, spec.training.epochs)
            check_shapes(config.layers, config.dataset)
        except ConfigError as e:
            raise ConfigError(f"start: {path}: {e}") from None
        if over_limit(count_params(config), spec.max_params):
            raise ConfigError(f"start: {path} has {count_params(config):,} parameters, over max_params ({spec.max_params:,})")
        points.append((path, point))
    return points


def check_seconds(value: Any, where: str) -> None:
    """A time budget: a finite number of seconds >= 0, or absent (None: no limit)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    check(value is None or (number and math.isfinite(value) and value >= 0), where,
          f"must be a finite number of seconds >= 0 (leave it out for no limit), got {json.dumps(value, default=str)}")


def _float_or_none(value: int | float | None) -> float | None:
    return None if value is None else float(value)


def load_study_spec(path: Path, overrides: dict[str, tuple[str, Any]] | None = None) -> StudySpec:
    """Read and validate a study file (raises ConfigError naming the file and the field).

    `overrides` maps a field ("training.epochs") to the command-line option that sets it and
    its value ("--epochs", 1); they go through the same checks as the file, and an error in
    one of them names the option."""
    text = read_text_file(path, "study")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    except RecursionError:
        raise ConfigError(f"{path}: TOML nested too deeply to be a study file") from None
    for field, (_, value) in (overrides or {}).items():
        *parents, key = field.split(".")
        table = raw.setdefault(parents[0], {}) if parents else raw  # fields are at most one table deep
        if isinstance(table, dict):  # (a table that is not one is reported by the checks below)
            table[key] = value
    try:
        return _spec_from_dict(raw)
    except ConfigError as e:
        field, _, problem = str(e).partition(": ")
        if field in (overrides or {}):
            option, value = overrides[field]
            raise ConfigError(f"{option} {value}: {field} {problem}") from None
        raise ConfigError(f"{path}: {e}") from None


def spec_to_dict(spec: StudySpec) -> dict:
    """The spec as stored in the study (JSON types: ranges become lists; the recipe values that
    the family does not take from [training] are left out)."""
    stored = json.loads(json.dumps(asdict(spec)))
    for key in set(RECIPE_IN_TRAINING) - set(FAMILIES[spec.family].FROM_TRAINING):
        del stored["training"][key]
    return stored


def stored_spec(study: optuna.Study) -> StudySpec:
    """The settings `study` was run with, typed and checked as a study file is (a study stored
    before a field existed gets its default; one stored with recipe values its family does not
    take from [training] has them dropped)."""
    raw = study.user_attrs.get("spec")
    if raw is None:
        raise UsageError(f"study {study.study_name!r} holds no settings of this tool; open it with optuna-dashboard instead")
    family = FAMILIES.get(raw.get("family", "step3"))
    training = {k: v for k, v in raw.get("training", {}).items() if k not in RECIPE_IN_TRAINING or k in getattr(family, "FROM_TRAINING", ())}
    try:
        return _spec_from_dict({**raw, "training": training})
    except ConfigError as e:
        raise UsageError(f"study {study.study_name!r}: its stored settings no longer pass the checks ({e}); start a new study") from None


def spread_values(distribution: optuna.distributions.BaseDistribution) -> list[Any]:
    """The values a tpe_spread parameter takes in turn: an integer range's every value, or a choice's
    choices; none for any other parameter."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, optuna.distributions.IntDistribution) and not distribution.log:
        return list(range(distribution.low, distribution.high + 1, distribution.step))
    return []


def _check_spread(spec: StudySpec) -> None:
    """tpe_spread and [fidelity] within name a parameter of the family's space that takes a few values: an integer range
    (not log-scaled) or a choice."""
    named = [(key, name) for key, name in (("tpe_spread", spec.tpe_spread), ("fidelity.within", spec.fidelity.within)) if name]
    if not named:
        return
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()  # one point, to see the parameters
    FAMILIES[spec.family].suggest_params(trial, spec.space, spec.training.epochs)
    few = sorted(p for p, d in trial.distributions.items() if 2 <= len(spread_values(d)) <= MAX_SPREAD)
    for key, name in named:
        check(name in few, key, f"must name a linear integer range or a choice parameter of this space with 2-{MAX_SPREAD} values "
              f"({', '.join(few) or 'none here'}), or be \"\" for none; got {name!r}")


def changed_settings(a: StudySpec, b: StudySpec) -> list[str]:
    """The settings (dotted keys, with both values) that keep a study created from `a` from
    resuming with `b`; empty when it may: only its name, trial count, time budget, heartbeat
    timing, sampler options, confirmation settings, target and answer level may differ (the target
    not where [region] near_target makes it a rule of the search)."""
    volatile = dict(name="", trials=1, timeout=None, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD, tpe_group=False, tpe_startup_trials=10, tpe_spread="",
                    confirm=Confirm())

    def fixed(spec: StudySpec) -> dict[str, Any]:
        answers = dict(answer_acc=0.0, answer_loss=0.0, answer_elastic_loss=0.0)
        region = replace(spec.region, **answers) if spec.region.near_target else replace(spec.region, target_acc=0.0, **answers)
        return flat(spec_to_dict(replace(spec, **volatile, region=region)))

    def flat(tree: dict, prefix: str = "") -> dict[str, Any]:
        items: dict[str, Any] = {}
        for key, value in tree.items():
            items.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return items

    old, new = fixed(a), fixed(b)
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]


def config_from_point(spec: StudySpec, params: dict[str, Any], name: str) -> RunConfig:
    """The config of a point of the study's space, with the recipe values its family takes
    from [training] (the step-3 family: batch size, momentum, weight decay), and the study's precision and dataset."""
    family = FAMILIES[spec.family]
    fixed = {key: getattr(spec.training, key) for key in family.FROM_TRAINING}
    config = family.config_from_params({**fixed, **params}, epochs=spec.training.epochs, seed=spec.seed, name=name)
    return replace(config, precision=spec.training.precision, dataset=spec.dataset)


def first_points(spec: StudySpec) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """The points a study starts with, each with the user attributes its trial is enqueued with:
    the hand-made reference ("enqueued": "reference"; where the space holds it and it is within
    the limit), then the start configs (`start_points`; "enqueued" and "start": the file) that are
    not the same config as one before. Read on every run, so that a bad start config answers
    before anything is written."""
    starts = start_points(spec)
    reference = FAMILIES[spec.family].reference_point(spec.space, spec.training.epochs)
    firsts = []
    if reference is not None and not over_limit(count_params(config_from_point(spec, reference, "")), spec.max_params):
        firsts.append((reference, {"enqueued": "reference"}))
    for path, point in starts:  # a start config that is the hand-made model, or given twice, is one trial
        if all(config_from_point(spec, point, "") != config_from_point(spec, first, "") for first, _ in firsts):
            firsts.append((point, {"enqueued": path, "start": path}))
    return firsts
