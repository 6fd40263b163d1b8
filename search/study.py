"""A study: its file (budget, limit, pruner, family and space) and the configs of its trials.

A study file (`studies/*.toml`) is read and checked here (`load_study_spec`); command-line
overrides go through the same checks. The configs of a study's trials (as trained, or in
their export form for a full run) are derived here too, so that the objective, the runner,
`export` and `report` agree on them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import tomllib

from search.errors import UsageError
from search.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL
from space import blocks, step3
from space.config import ConfigError, RunConfig, check, config_from_dict, parse_section, read_text_file

OBJECTIVE_EPOCHS = 3  # objective: mean validation accuracy over the last 3 epochs (accuracy that holds)
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
PRUNERS = ("median", "none")
OBJECTIVES = ("accuracy", "pareto")
FAMILIES = {"step3": step3, "blocks": blocks}  # one module per model family under space/
# Hyperband is not offered: its rungs compare trials at fixed epochs, but a trial may only be
# judged after its own first learning-rate drop and before its last epoch, so a rung would
# compare one trial's epoch 2 with another's epoch 3, and some trials would never reach one.


# ---------------------------------------------------------------- study files


@dataclass(frozen=True)
class Training:
    epochs: int
    subset: int = 50_000
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 0.0
    export_epochs: int = 15


@dataclass(frozen=True)
class Pruner:
    kind: str = "median"
    startup_trials: int = 5


@dataclass(frozen=True)
class Fidelity:
    """Successive halving (Pareto studies): rung k of `rungs` trains on subset / eta^(rungs-1-k)
    images, and a trial goes on to the next rung only when it ranks in the top 1/eta there."""
    rungs: int = 1
    eta: int = 3


@dataclass(frozen=True)
class Confirm:
    """Confirmation: the candidates (the Pareto front, or the top trials) retrained at the export
    budget on the validation split with `seeds` more seeds; `after_run`: at the end of `run`.
    `subset` below the split's 50,000 images is for quick checks only."""
    top: int = 3
    seeds: int = 2
    after_run: bool = False
    subset: int = 50_000


@dataclass(frozen=True)
class StudySpec:
    name: str
    trials: int
    max_params: int
    seed: int
    training: Training
    space: Any  # the family's Space
    pruner: Pruner = Pruner()  # a Pareto study's default is "none" (see _spec_from_dict)
    heartbeat_interval: int = HEARTBEAT_INTERVAL  # RDB storage: seconds between a worker's heartbeats
    grace_period: int = GRACE_PERIOD  # RDB storage: a trial silent this long is FAIL and re-queued once
    family: str = "step3"
    tpe_group: bool = False  # TPESampler(group=True): multivariate TPE per group of parameters that occur together
    objective: str = "accuracy"  # or "pareto": maximise accuracy and minimise n_params
    fidelity: Fidelity = Fidelity()
    confirm: Confirm = Confirm()


def _spec_from_dict(raw: dict) -> StudySpec:
    top = parse_section(raw, StudySpec, "")
    family = top.get("family", "step3")
    check(family in FAMILIES, "family", f"must be one of {', '.join(FAMILIES)}, got {family!r}")
    training = Training(**parse_section(top["training"], Training, "training"))
    if family == "blocks":
        for key in ("batch_size", "momentum", "weight_decay"):
            check(key not in top["training"], f"training.{key}", "the blocks family searches it: give its range or choices in [space] instead")
    objective = top.get("objective", "accuracy")
    check(objective in OBJECTIVES, "objective", f"must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    # Optuna's report/should_prune raise in a multi-objective study: a Pareto study prunes by its rungs
    pruner = Pruner(**({"kind": "none"} if objective == "pareto" else {}) | parse_section(top.get("pruner", {}), Pruner, "pruner"))
    fidelity = Fidelity(**parse_section(top.get("fidelity", {}), Fidelity, "fidelity"))
    confirm = Confirm(**parse_section(top.get("confirm", {}), Confirm, "confirm"))
    space = FAMILIES[family].space_from_dict(top.get("space", {}))
    spec = StudySpec(**{**top, "training": training, "pruner": pruner, "space": space, "fidelity": fidelity, "confirm": confirm})
    check(re.fullmatch(r"[A-Za-z0-9_.-]+", spec.name) is not None, "name", f"letters, digits, '_', '.' and '-' only, got {spec.name!r}")
    for key in ("trials", "max_params", "heartbeat_interval"):
        check(getattr(spec, key) > 0, key, f"must be > 0, got {getattr(spec, key)}")
    for key in ("epochs", "subset", "batch_size", "export_epochs"):
        check(getattr(training, key) > 0, f"training.{key}", f"must be > 0, got {getattr(training, key)}")
    check(OBJECTIVE_EPOCHS <= training.epochs, "training.epochs", f"must be >= {OBJECTIVE_EPOCHS} (the objective averages the last {OBJECTIVE_EPOCHS} epochs)")
    check(training.export_epochs % training.epochs == 0, "training.export_epochs",
          f"must be a multiple of training.epochs ({training.epochs}), got {training.export_epochs}: only then does the exported "
          f"StepLR schedule drop the learning rate as often and at the same fractions of training as the trial's")
    check(training.subset <= 50_000, "training.subset", f"the training split has 50,000 images, got {training.subset}")
    check(pruner.kind != "hyperband", "pruner.kind", "hyperband is not supported (its rungs would compare trials at different "
          "epochs of their schedules; see the README's pruning section); use \"median\" or \"none\"")
    check(pruner.kind in PRUNERS, "pruner.kind", f"must be one of {', '.join(PRUNERS)}, got {pruner.kind!r}")
    check(spec.grace_period > spec.heartbeat_interval, "grace_period", f"must be > heartbeat_interval, got {spec.grace_period}")
    check(pruner.startup_trials >= 0, "pruner.startup_trials", f"must be >= 0, got {pruner.startup_trials}")
    check(objective == "accuracy" or pruner.kind == "none", "pruner.kind", "a Pareto study cannot use Optuna's pruners (they need "
          "one objective); leave [pruner] out and set [fidelity] rungs for successive halving")
    check(fidelity.rungs >= 1 and fidelity.eta >= 2, "fidelity", f"needs rungs >= 1 and eta >= 2, got {fidelity.rungs} and {fidelity.eta}")
    check(fidelity.rungs == 1 or objective == "pareto", "fidelity.rungs", "rungs > 1 need objective = \"pareto\" (an accuracy study prunes with [pruner])")
    check(training.subset // fidelity.eta ** (fidelity.rungs - 1) >= 128, "fidelity.rungs",
          f"the first rung would train on {training.subset // fidelity.eta ** (fidelity.rungs - 1)} images: too few; use fewer rungs or a larger subset")
    check(confirm.top >= 1 and confirm.seeds >= 1, "confirm", f"needs top >= 1 and seeds >= 1, got {confirm.top} and {confirm.seeds}")
    check(0 < confirm.subset <= 50_000, "confirm.subset", f"must be in 1..50,000 (the training split), got {confirm.subset}")
    return spec


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


def rung_subsets(spec: StudySpec) -> list[int]:
    """Training images of each rung, smallest first; the last is the study's subset."""
    f = spec.fidelity
    return [spec.training.subset // f.eta ** (f.rungs - 1 - k) for k in range(f.rungs)]


def spec_to_dict(spec: StudySpec) -> dict:
    """The spec as stored in the study (JSON types: ranges become lists)."""
    return json.loads(json.dumps(asdict(spec)))


# ---------------------------------------------------------------- configs of a study


def trial_config(trial: optuna.trial.FrozenTrial) -> RunConfig:
    """The config trial `trial` was trained with."""
    return config_from_dict(trial.user_attrs["config"])


def export_config(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> RunConfig:
    """The trial's config for a full run (see `export_form`)."""
    return export_form(trial_config(trial), study.user_attrs["spec"]["training"], f"{study.study_name}-trial{trial.number}")


def export_form(config: RunConfig, training: dict, name: str) -> RunConfig:
    """`config` as a full run: the study's export epoch count, the step size scaled by
    export_epochs / epochs (a whole number: the study file is refused otherwise), so the learning
    rate drops as many times and at the same fractions of training as in the trial."""
    factor, remainder = divmod(training["export_epochs"], training["epochs"])
    if remainder:  # a study stored before that check existed
        raise UsageError(f"export_epochs {training['export_epochs']} is not a multiple of the trials' {training['epochs']} epochs, "
                         f"so the exported schedule would differ from the searched one; start a new study with a multiple")
    scheduler = config.scheduler  # OneCycleLR spans all of training by itself: its fractions stay
    if scheduler.kind == "step":
        scheduler = replace(scheduler, step_size=scheduler.step_size * factor)
    return replace(config, epochs=training["export_epochs"], scheduler=scheduler, name=name)


def config_from_point(spec: StudySpec, params: dict[str, Any], name: str) -> RunConfig:
    """The config of a point of the study's space: the blocks family samples its whole recipe,
    the step-3 family takes batch size, momentum and weight decay from [training]."""
    t = spec.training
    if spec.family == "blocks":
        return blocks.config_from_params(params, epochs=t.epochs, seed=spec.seed, name=name)
    return step3.config_from_params(params, epochs=t.epochs, batch_size=t.batch_size, momentum=t.momentum,
                                    weight_decay=t.weight_decay, seed=spec.seed, name=name)


def settled_after(config: RunConfig) -> int:
    """The epoch after which a trial's accuracy says something about where its schedule ends:
    its first StepLR drop, or the end of OneCycleLR's warm-up."""
    s = config.scheduler
    return s.step_size if s.kind == "step" else math.ceil(s.warmup * config.epochs)


def may_prune(epoch: int, settled: int, epochs: int) -> bool:
    """Whether a trial may be judged after `epoch`: not before `settled` (its first learning-rate
    drop or the end of its warm-up; until then accuracy says little about where the schedule
    ends) and not after its last epoch (then nothing is saved, and its finished objective would
    be replaced by one epoch's value)."""
    return settled < epoch < epochs


def make_pruner(pruner: Pruner) -> optuna.pruners.BasePruner:
    """Median pruning after `startup_trials` completed trials (Optuna's MedianPruner counts COMPLETE ones)."""
    if pruner.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=pruner.startup_trials, n_warmup_steps=0)
    return optuna.pruners.NopPruner()
