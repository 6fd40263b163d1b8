"""The search study: study files, storage, the Optuna objective and the run loop.

`objective(trial)` follows optuna-examples: it suggests a point of the space, builds the
config, rejects it before any training if it is over the parameter limit, trains, reports
the validation accuracy after every epoch and honours `should_prune`.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import re
import signal
import socket
import statistics
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import tomllib
import torch
from tqdm import tqdm

from search.artifacts import attach_trial_files
from search.data import Split, load_split
from search.errors import UsageError, WorkerDied
from search.storage import (GRACE_PERIOD, HEARTBEAT_INTERVAL, fail_stale, heartbeat_enabled, mask_password, open_storage, worker_id,
                            worker_is_gone)
from search.train import DivergedError, log_line, train
from space.config import (ConfigError, RunConfig, architecture, check, check_shapes, config_from_dict, config_to_dict, count_params,
                          parse_section, read_text_file)
from space import blocks, step3

# Our own line per trial replaces Optuna's log, which would print a traceback for a trial ended by Ctrl-C.
optuna.logging.set_verbosity(optuna.logging.ERROR)
OBJECTIVE_EPOCHS = 3  # objective: mean validation accuracy over the last 3 epochs (accuracy that holds)
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
PRUNERS = ("median", "none")
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
class StudySpec:
    name: str
    trials: int
    max_params: int
    seed: int
    training: Training
    pruner: Pruner
    space: Any  # the family's Space
    heartbeat_interval: int = HEARTBEAT_INTERVAL  # RDB storage: seconds between a worker's heartbeats
    grace_period: int = GRACE_PERIOD  # RDB storage: a trial silent this long is FAIL and re-queued once
    family: str = "step3"
    tpe_group: bool = False  # TPESampler(group=True): multivariate TPE per group of parameters that occur together


def _spec_from_dict(raw: dict) -> StudySpec:
    top = parse_section(raw, StudySpec, "")
    family = top.get("family", "step3")
    check(family in FAMILIES, "family", f"must be one of {', '.join(FAMILIES)}, got {family!r}")
    training = Training(**parse_section(top["training"], Training, "training"))
    if family == "blocks":
        for key in ("batch_size", "momentum", "weight_decay"):
            check(key not in top["training"], f"training.{key}", f"the blocks family searches it: give its range or choices in [space] instead")
    pruner = Pruner(**parse_section(top.get("pruner", {}), Pruner, "pruner"))
    space = FAMILIES[family].space_from_dict(top.get("space", {}))
    spec = StudySpec(**{**top, "training": training, "pruner": pruner, "space": space})
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


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        raise UsageError(f"study {study.study_name!r} has no COMPLETE trial yet; run it longer (python -m search run ...)")
    return study.best_trial


# ---------------------------------------------------------------- the objective


def objective(trial: optuna.Trial, spec: StudySpec, split: Split, out: Path) -> float:
    trial.set_user_attr("worker", worker_id())
    ahead = [t for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number
             and (t.state in FINISHED or (t.state == optuna.trial.TrialState.RUNNING and not worker_is_gone(t)))]
    if len(ahead) >= spec.trials:  # another worker started the last needed trial a moment before this one
        reason = f"surplus: {len(ahead)} trials were already finished or running"
        trial.set_user_attr("reason", reason)
        raise SurplusTrial(reason)
    params = FAMILIES[spec.family].suggest_params(trial, spec.space, spec.training.epochs)
    config = config_from_point(spec, params, f"{trial.study.study_name}-trial{trial.number}")
    n_params = count_params(config)  # exact, and needs only the channel counts: valid or not
    trial.set_user_attr("n_params", n_params)
    trial.set_user_attr("architecture", architecture(config))
    trial.set_user_attr("config", config_to_dict(config))
    try:
        check_shapes(config.layers)
    except ConfigError as e:  # infeasible however small: the sampler learns the region from the constraint
        trial.set_constraint("params_over_limit", max(n_params - spec.max_params, 1))
        return _prune(trial, f"invalid shape: {e}")
    trial.set_constraint("params_over_limit", n_params - spec.max_params)  # <= 0: feasible; TPE learns the region
    if n_params > spec.max_params:
        return _prune(trial, f"over the parameter limit: {n_params:,} > {spec.max_params:,}")

    trial.set_user_attr("seed", config.seed)
    trial.set_user_attr("subset", len(split.train_images))
    trial.set_user_attr("device", str(split.train_images.device))
    if split.train_images.device.type == "cpu":  # the CPU's numbers depend on the thread count; --as-trained uses it
        trial.set_user_attr("threads", torch.get_num_threads())
    history: list[dict] = []
    start = time.perf_counter()

    def on_epoch(metrics: dict) -> None:
        history.append(metrics)
        trial.set_user_attr("epochs", history)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        trial.report(metrics["val_acc"], metrics["epoch"])
        if may_prune(metrics["epoch"], settled_after(config), config.epochs) and trial.should_prune():
            _prune(trial, f"pruned by the {spec.pruner.kind} pruner after epoch {metrics['epoch']} (val acc {metrics['val_acc']:.2f}%)")

    try:
        train(config, split, on_epoch=on_epoch)
    except DivergedError as e:
        return _prune(trial, f"diverged: {e}")
    except KeyboardInterrupt:  # Optuna marks the trial FAIL and re-raises
        trial.set_user_attr("reason", "interrupted (Ctrl-C)")
        raise
    attach_trial_files(trial, export_form(config, spec_to_dict(spec)["training"], config.name), n_params, history, out)
    return statistics.mean(m["val_acc"] for m in history[-OBJECTIVE_EPOCHS:])


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


def _prune(trial: optuna.Trial, reason: str) -> float:
    trial.set_user_attr("reason", reason)
    raise optuna.TrialPruned(reason)


def make_pruner(pruner: Pruner) -> optuna.pruners.BasePruner:
    """Median pruning after `startup_trials` completed trials (Optuna's MedianPruner counts COMPLETE ones)."""
    if pruner.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=pruner.startup_trials, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------- the run loop


def trial_line(trial: optuna.trial.FrozenTrial) -> str:
    """One line per finished trial: number, params, state, objective or reason, seconds."""
    n_params = trial.user_attrs.get("n_params")
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else math.nan
    complete = trial.state == optuna.trial.TrialState.COMPLETE  # (a PRUNED trial's value is its last report)
    outcome = f"val {trial.value:.3f}%" if complete else trial.user_attrs.get("reason", "")
    params = f"{n_params:>6,}" if n_params is not None else "     ?"
    return f"trial {trial.number:>4}  params {params}  {trial.state.name:<8}  {outcome}  ({seconds:.2f} s)"


class SurplusTrial(Exception):
    """Raised in a trial that several workers started together beyond the study's trial count."""


def create_or_resume(spec: StudySpec, storage: optuna.storages.BaseStorage, url: str) -> tuple[optuna.Study, bool]:
    """The study named spec.name in `storage`: (study, True) when this call created it, with the
    settings stored and the hand-made reference as first trial; (study, False) when it existed."""
    pruner = make_pruner(spec.pruner)
    try:
        study = optuna.create_study(study_name=spec.name, storage=storage, direction="maximize", pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=spec.name, storage=storage, pruner=pruner)
        deadline = time.monotonic() + 30
        while "spec" not in study.user_attrs and time.monotonic() < deadline:  # its creator, elsewhere, is still writing it
            time.sleep(0.2)
        stored = study.user_attrs.get("spec")
        if stored is None or _settings(stored) != _settings(spec_to_dict(spec)):
            raise UsageError(f"study {spec.name!r} in {mask_password(url)} was created from different settings; "
                             f"restore the study file, or start a new study with --study NEW_NAME") from None
        return study, False
    reference = FAMILIES[spec.family].reference_point(spec.space, spec.training.epochs)
    if reference is not None and count_params(config_from_point(spec, reference, "reference")) <= spec.max_params:
        # The hand-made model is trial 0, the number to beat. It is enqueued before the spec is
        # stored: workers elsewhere wait for the spec, so none can take a trial number first.
        study.enqueue_trial(reference)
    study.set_user_attr("objective", f"mean validation accuracy (%) over the last {OBJECTIVE_EPOCHS} epochs")
    with warnings.catch_warnings():  # Optuna marks metric names experimental; the dashboard shows them
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([f"val acc % (mean of last {OBJECTIVE_EPOCHS} epochs)"])
    study.set_user_attr("spec", spec_to_dict(spec))
    return study, True


def _settings(spec: dict) -> dict:
    """What must not change when a study resumes: all but its name, trial count, heartbeat timing
    and sampler options (a study stored before the family existed is a step-3 study)."""
    return {"family": "step3", **{k: v for k, v in spec.items() if k not in ("name", "trials", "heartbeat_interval", "grace_period", "tpe_group")}}


def seed_sampler(study: optuna.Study, spec: StudySpec, first: bool, index: int = 0) -> None:
    """TPE, seeded from the study, never from the process: the process that created the study
    uses the study's seed, and every later start (a resumed run, worker `index` of several, a
    worker on another machine) a seed made of the study's seed, its trial count, the worker's
    index and the host name. So the same command on the same study continues the same way,
    while workers running at once propose different points."""
    if first and index == 0:
        seed = spec.seed
    else:
        key = f"{spec.seed}:{len(study.trials)}:{index}:{socket.gethostname()}"
        seed = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    # Optuna 5's TPE is multivariate for one objective; parameters that exist only in some
    # trials (the blocks family's) are then sampled independently unless group=True
    study.sampler = optuna.samplers.TPESampler(seed=seed, group=spec.tpe_group)


def run_worker(spec: StudySpec, study: optuna.Study, split_loader, out: Path, timeout: float | None,
               show_bar: bool = True, label: str = "") -> None:
    """Run trials until the study holds spec.trials finished trials (or `timeout` seconds pass).
    Several workers can run this on one study: none starts a trial the count does not need, and
    each stays until the last trial is done, to take over one re-queued from a dead worker."""
    states = lambda: [t.state for t in study.get_trials(deepcopy=False)]  # noqa: E731
    finished = sum(s in FINISHED for s in states())
    if finished >= spec.trials:
        print(f"study {spec.name!r} already holds {finished} finished trials (asked for {spec.trials})")
        return
    split = split_loader()
    deadline = None if timeout is None else time.monotonic() + timeout
    heartbeat = heartbeat_enabled(study._storage)
    with tqdm(total=spec.trials, initial=finished, unit="trial", desc=spec.name, dynamic_ncols=True,
              disable=not (show_bar and sys.stderr.isatty())) as bar:

        def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            log_line(label + trial_line(trial))
            now = states()
            bar.n = sum(s in FINISHED for s in now)
            if optuna.trial.TrialState.COMPLETE in now:
                bar.set_postfix_str(f"best {study.best_value:.3f}% (trial {study.best_trial.number})")
            bar.refresh()

        while deadline is None or time.monotonic() < deadline:
            trials = study.get_trials(deepcopy=False)
            finished = sum(t.state in FINISHED for t in trials)
            if finished >= spec.trials:
                break
            in_flight = sum(t.state == optuna.trial.TrialState.RUNNING and not worker_is_gone(t) for t in trials)
            waiting = any(t.state == optuna.trial.TrialState.WAITING for t in trials)
            if finished + in_flight >= spec.trials and not waiting:
                if heartbeat:
                    optuna.storages.fail_stale_trials(study)  # a dead worker's trial becomes FAIL and is re-queued
                time.sleep(1)
                continue
            study.optimize(lambda trial: objective(trial, spec, split, out), n_trials=1, callbacks=[after_trial],
                           catch=(SurplusTrial,), gc_after_trial=False)


def run_workers(spec: StudySpec, study: optuna.Study, created: bool, url: str, out: Path, device, data_dir: Path,
                split_loader, timeout: float | None, workers: int, threads: int | None) -> None:
    """Run the study in this process (with `split_loader`'s data), or in `workers` processes that
    share it through `url` and load their own data."""
    if workers == 1:
        seed_sampler(study, spec, created)
        run_worker(spec, study, split_loader, out, timeout)
        return
    context = multiprocessing.get_context("spawn")  # CUDA and a clean torch in every worker
    processes = [context.Process(target=worker_main, args=(spec, url, out, str(device), data_dir, timeout, i, created, threads))
                 for i in range(workers)]
    for p in processes:
        p.start()
    try:
        # is_alive() reaps a dead worker, so the others see its pid gone (not a zombie) and take
        # over its trial; a list, not any(), so that every worker is polled on every round
        while any([p.is_alive() for p in processes]):
            time.sleep(0.5)
    except KeyboardInterrupt:  # Ctrl-C reaches the workers too; a plain `kill -INT` of this process must as well
        for p in processes:
            if p.is_alive():
                os.kill(p.pid, signal.SIGINT)
        for p in processes:
            p.join()
        raise
    codes = [p.exitcode for p in processes]
    if 130 in codes:
        raise KeyboardInterrupt
    dead = [(i, p) for i, p in enumerate(processes) if p.exitcode]
    for i, p in dead:
        how = f"was killed by signal {-p.exitcode}" if p.exitcode < 0 else f"exited with code {p.exitcode}"
        mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == f"{socket.gethostname()}:{p.pid}"]
        orphans = [t for t in mine if t.state == optuna.trial.TrialState.RUNNING]
        fail_stale(study, orphans, by="the run that started it")
        if orphans:
            fate = "; ".join(f"its trial {t.number} was marked FAIL" for t in orphans)
        elif mine and mine[-1].state == optuna.trial.TrialState.FAIL:
            fate = f"its trial {mine[-1].number} had already been marked FAIL (heartbeat)"
        else:
            fate = "it held no running trial"
        log_line(f"worker {i} (pid {p.pid}) {how}; {fate}; the other workers' trials are kept")
    if dead:
        raise WorkerDied(f"{len(dead)} of {workers} workers died (see above); rerun the same command to resume the study")


def worker_main(spec: StudySpec, url: str, out: Path, device: str, data_dir: Path, timeout: float | None,
                index: int, created: bool, threads: int | None) -> None:
    """One of several worker processes: open the shared storage and run trials until the count is reached."""
    if threads:
        torch.set_num_threads(threads)
    # tqdm's default lock is a multiprocessing semaphore; a worker killed while holding one
    # makes the parent's resource tracker print warnings at exit. A thread lock is enough here.
    tqdm.set_lock(threading.RLock())
    storage = open_storage(url, (spec.heartbeat_interval, spec.grace_period))
    study = optuna.load_study(study_name=spec.name, storage=storage, pruner=make_pruner(spec.pruner))
    seed_sampler(study, spec, created, index)
    split_loader = lambda: load_split(data_dir, torch.device(device), validation=True, subset=spec.training.subset)  # noqa: E731
    try:
        run_worker(spec, study, split_loader, out, timeout, show_bar=False, label=f"[worker {index}] ")
    except KeyboardInterrupt:
        sys.exit(130)
