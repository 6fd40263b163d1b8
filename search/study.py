"""The search study: study files, storage, the Optuna objective and the run loop.

`objective(trial)` follows optuna-examples: it suggests a point of the space, builds the
config, rejects it before any training if it is over the parameter limit, trains, reports
the validation accuracy after every epoch and honours `should_prune`.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
import time
import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from tqdm import tqdm

from search.artifacts import attach_trial_files
from search.data import Split
from search.errors import UsageError
from search.train import DivergedError, train
from space.config import ConfigError, RunConfig, check, config_from_dict, config_to_dict, count_params, parse_section
from space.sampled import Space, config_from_params, reference_point, space_from_dict, suggest_params

# Our own line per trial replaces Optuna's log, which would print a traceback for a trial ended by Ctrl-C.
optuna.logging.set_verbosity(optuna.logging.ERROR)
OBJECTIVE_EPOCHS = 3  # objective: mean validation accuracy over the last 3 epochs (accuracy that holds)
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
PRUNERS = ("median", "hyperband", "none")


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
class StudySpec:
    name: str
    trials: int
    max_params: int
    seed: int
    training: Training
    pruner: Pruner
    space: Space


def _spec_from_dict(raw: dict) -> StudySpec:
    top = parse_section(raw, StudySpec, "")
    training = Training(**parse_section(top["training"], Training, "training"))
    pruner = Pruner(**parse_section(top.get("pruner", {}), Pruner, "pruner"))
    space = space_from_dict(top.get("space", {}))
    spec = StudySpec(**{**top, "training": training, "pruner": pruner, "space": space})
    check(re.fullmatch(r"[A-Za-z0-9_.-]+", spec.name) is not None, "name", f"letters, digits, '_', '.' and '-' only, got {spec.name!r}")
    for key in ("trials", "max_params"):
        check(getattr(spec, key) > 0, key, f"must be > 0, got {getattr(spec, key)}")
    for key in ("epochs", "subset", "batch_size", "export_epochs"):
        check(getattr(training, key) > 0, f"training.{key}", f"must be > 0, got {getattr(training, key)}")
    check(OBJECTIVE_EPOCHS <= training.epochs, "training.epochs", f"must be >= {OBJECTIVE_EPOCHS} (the objective averages the last {OBJECTIVE_EPOCHS} epochs)")
    check(training.subset <= 50_000, "training.subset", f"the training split has 50,000 images, got {training.subset}")
    check(pruner.kind in PRUNERS, "pruner.kind", f"must be one of {', '.join(PRUNERS)}, got {pruner.kind!r}")
    check(pruner.startup_trials >= 0, "pruner.startup_trials", f"must be >= 0, got {pruner.startup_trials}")
    return spec


def load_study_spec(path: Path) -> StudySpec:
    """Read and validate a study file (raises ConfigError naming the file and the field)."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such study file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None
    try:
        return _spec_from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def spec_to_dict(spec: StudySpec) -> dict:
    """The spec as stored in the study (JSON types: ranges become lists)."""
    return json.loads(json.dumps(asdict(spec)))


# ---------------------------------------------------------------- storage


def default_storage(out: Path) -> str:
    return f"sqlite:///{out / 'study.db'}"


def mask_password(url: str) -> str:
    """The URL with any password replaced by ***, safe to print."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def existing_storage(name: str, storage: str | None) -> str:
    """The storage URL of an existing study: `storage`, else studies/NAME/study.db, which must exist."""
    if storage is not None:
        return storage
    path = Path("studies") / name / "study.db"
    if not path.exists():
        raise UsageError(f"study {name!r} not found: there is no {path}; run `python -m search run STUDY.toml` first, or pass --storage URL")
    return default_storage(path.parent)


def load_existing_study(name: str, storage: str | None) -> optuna.Study:
    """A study that must already exist, in `storage` or, by default, studies/NAME/study.db."""
    url = existing_storage(name, storage)
    try:
        return optuna.load_study(study_name=name, storage=url, sampler=optuna.samplers.RandomSampler())
    except KeyError:
        names = optuna.get_all_study_names(url)
        raise UsageError(f"no study named {name!r} in {mask_password(url)} (it holds: {', '.join(names) or 'no study'}); check --study") from None


# ---------------------------------------------------------------- configs of a study


def trial_config(trial: optuna.trial.FrozenTrial) -> RunConfig:
    """The config trial `trial` was trained with."""
    return config_from_dict(trial.user_attrs["config"])


def export_config(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> RunConfig:
    """The trial's config for a full run (see `export_form`)."""
    return export_form(trial_config(trial), study.user_attrs["spec"]["training"], f"{study.study_name}-trial{trial.number}")


def export_form(config: RunConfig, training: dict, name: str) -> RunConfig:
    """`config` as a full run: the study's export epoch count, the step size scaled to it."""
    scale = training["export_epochs"] / training["epochs"]
    step_size = max(1, round(config.scheduler.step_size * scale))
    return replace(config, epochs=training["export_epochs"], scheduler=replace(config.scheduler, step_size=step_size), name=name)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        raise UsageError(f"study {study.study_name!r} has no COMPLETE trial yet; run it longer (python -m search run ...)")
    return study.best_trial


# ---------------------------------------------------------------- the objective


def objective(trial: optuna.Trial, spec: StudySpec, split: Split, out: Path) -> float:
    params = suggest_params(trial, spec.space, spec.training.epochs)
    t = spec.training
    config = config_from_params(params, epochs=t.epochs, batch_size=t.batch_size, momentum=t.momentum,
                                weight_decay=t.weight_decay, seed=spec.seed, name=f"{trial.study.study_name}-trial{trial.number}")
    n_params = count_params(config)
    trial.set_user_attr("n_params", n_params)
    trial.set_user_attr("config", config_to_dict(config))
    trial.set_constraint("params_over_limit", n_params - spec.max_params)  # <= 0: feasible; TPE learns the region
    if n_params > spec.max_params:
        return _prune(trial, f"over the parameter limit: {n_params:,} > {spec.max_params:,}")

    trial.set_user_attr("seed", config.seed)
    trial.set_user_attr("subset", len(split.train_images))
    trial.set_user_attr("device", str(split.train_images.device))
    history: list[dict] = []
    start = time.perf_counter()

    def on_epoch(metrics: dict) -> None:
        history.append(metrics)
        trial.set_user_attr("epochs", history)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        trial.report(metrics["val_acc"], metrics["epoch"])
        # Before its first learning-rate drop a trial is not comparable: the drop is what lifts accuracy.
        if metrics["epoch"] > config.scheduler.step_size and trial.should_prune():
            _prune(trial, f"pruned after epoch {metrics['epoch']}: val acc {metrics['val_acc']:.2f}% is below the other trials")

    try:
        train(config, split, on_epoch=on_epoch)
    except DivergedError as e:
        return _prune(trial, f"diverged: {e}")
    except KeyboardInterrupt:  # Optuna marks the trial FAIL and re-raises
        trial.set_user_attr("reason", "interrupted (Ctrl-C)")
        raise
    attach_trial_files(trial, export_form(config, spec_to_dict(spec)["training"], config.name), n_params, history, out)
    return statistics.mean(m["val_acc"] for m in history[-OBJECTIVE_EPOCHS:])


def _prune(trial: optuna.Trial, reason: str) -> float:
    trial.set_user_attr("reason", reason)
    raise optuna.TrialPruned(reason)


def make_pruner(pruner: Pruner, epochs: int) -> optuna.pruners.BasePruner:
    if pruner.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=pruner.startup_trials, n_warmup_steps=0)
    if pruner.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------- the run loop


def trial_line(trial: optuna.trial.FrozenTrial) -> str:
    """One line per finished trial: number, params, state, objective or reason, seconds."""
    n_params = trial.user_attrs.get("n_params")
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else math.nan
    outcome = f"val {trial.value:.3f}%" if trial.value is not None else trial.user_attrs.get("reason", "")
    params = f"{n_params:>6,}" if n_params is not None else "     ?"
    return f"trial {trial.number:>4}  params {params}  {trial.state.name:<8}  {outcome}  ({seconds:.2f} s)"


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def create_or_resume(spec: StudySpec, storage: str) -> optuna.Study:
    """The study named spec.name in `storage`, created (with the reference as first trial) if new."""
    sampler = optuna.samplers.TPESampler(seed=spec.seed)
    pruner = make_pruner(spec.pruner, spec.training.epochs)
    study = optuna.create_study(study_name=spec.name, storage=storage, direction="maximize", sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    stored = study.user_attrs.get("spec")
    if stored is None:
        study.set_user_attr("spec", spec_to_dict(spec))
        study.set_user_attr("objective", f"mean validation accuracy (%) over the last {OBJECTIVE_EPOCHS} epochs")
        reference = reference_point(spec.space, spec.training.epochs)
        if reference is not None:  # the hand-made model is the first trial: the number to beat
            study.enqueue_trial(reference, skip_if_exists=True)
    elif _settings(stored) != _settings(spec_to_dict(spec)):
        raise UsageError(f"study {spec.name!r} in {mask_password(storage)} was created from different settings; "
                         f"restore the study file, or start a new study with --study NEW_NAME")
    return study


def _settings(spec: dict) -> dict:
    """What must not change when a study resumes: all but its name and trial count."""
    return {k: v for k, v in spec.items() if k not in ("name", "trials")}


def run_study(spec: StudySpec, study: optuna.Study, split_loader, out: Path, timeout: float | None) -> None:
    """Run trials until the study holds spec.trials finished trials (or `timeout` seconds pass)."""
    finished = count_finished(study)
    if finished >= spec.trials:
        print(f"study {spec.name!r} already holds {finished} finished trials (asked for {spec.trials})")
        return
    split = split_loader()
    deadline = None if timeout is None else time.monotonic() + timeout
    show_bar = sys.stderr.isatty()
    with tqdm(total=spec.trials, initial=finished, unit="trial", desc=spec.name, dynamic_ncols=True, disable=not show_bar) as bar:

        def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            tqdm.write(trial_line(trial))
            bar.n = count_finished(study)
            try:
                bar.set_postfix_str(f"best {study.best_value:.3f}% (trial {study.best_trial.number})")
            except ValueError:  # no COMPLETE trial yet
                pass
            bar.refresh()

        while (remaining := spec.trials - count_finished(study)) > 0:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            study.optimize(lambda trial: objective(trial, spec, split, out), n_trials=remaining, timeout=left,
                           callbacks=[after_trial], gc_after_trial=False)
