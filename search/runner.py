"""The run loop: create or resume a study, seed its sampler, and run trials in this process
or in several worker processes that share the storage, until the study holds its trial count."""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import torch
from tqdm import tqdm

from search.confirm import companion_name, open_companion, plan, run_confirmations, summarize
from search.data import load_split
from search.errors import UsageError, WorkerDied
from search.objective import SurplusTrial, objective
from search.storage import fail_stale, heartbeat_enabled, mask_password, open_storage, worker_is_gone
from search.study import FAMILIES, FINISHED, OBJECTIVE_EPOCHS, StudySpec, config_from_point, make_pruner, spec_to_dict
from search.train import log_line
from space.config import count_params

# Our own line per trial replaces Optuna's log, which would print a traceback for a trial ended by Ctrl-C.
optuna.logging.set_verbosity(optuna.logging.ERROR)


def trial_line(trial: optuna.trial.FrozenTrial) -> str:
    """One line per finished trial: number, params, state, objective or reason, seconds."""
    n_params = trial.user_attrs.get("n_params")
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else math.nan
    complete = trial.state == optuna.trial.TrialState.COMPLETE  # (a PRUNED trial's value is its last report)
    outcome = f"val {trial.values[0]:.3f}%" if complete else trial.user_attrs.get("reason", "")
    params = f"{n_params:>6,}" if n_params is not None else "     ?"
    return f"trial {trial.number:>4}  params {params}  {trial.state.name:<8}  {outcome}  ({seconds:.2f} s)"



def create_or_resume(spec: StudySpec, storage: optuna.storages.BaseStorage, url: str) -> tuple[optuna.Study, bool]:
    """The study named spec.name in `storage`: (study, True) when this call created it, with the
    settings stored and the hand-made reference as first trial; (study, False) when it existed."""
    pruner = make_pruner(spec.pruner)
    try:
        study = optuna.create_study(study_name=spec.name, storage=storage, directions=directions(spec), pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=spec.name, storage=storage, pruner=pruner)
        deadline = time.monotonic() + 30
        while "spec" not in study.user_attrs and time.monotonic() < deadline:  # its creator, elsewhere, is still writing it
            time.sleep(0.2)
        stored = study.user_attrs.get("spec")
        if stored is None or _settings(stored) != _settings(spec_to_dict(spec)):
            raise UsageError(f"study {spec.name!r} in {mask_password(url)} was created from different settings; "
                             f"restore the study file, or start a new study with --study NEW_NAME") from None
        if stored != spec_to_dict(spec):  # what may change (trial count, [confirm], ...): `confirm` and `report` read it back
            study.set_user_attr("spec", spec_to_dict(spec))
        return study, False
    reference = FAMILIES[spec.family].reference_point(spec.space, spec.training.epochs)
    if reference is not None and count_params(config_from_point(spec, reference, "reference")) <= spec.max_params:
        # The hand-made model is trial 0, the number to beat. It is enqueued before the spec is
        # stored: workers elsewhere wait for the spec, so none can take a trial number first.
        study.enqueue_trial(reference)
    study.set_user_attr("objective", f"mean validation accuracy (%) over the last {OBJECTIVE_EPOCHS} epochs"
                        + (", and the parameter count" if spec.objective == "pareto" else ""))
    with warnings.catch_warnings():  # Optuna marks metric names experimental; the dashboard shows them
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([f"val acc % (mean of last {OBJECTIVE_EPOCHS} epochs)"] + (["params"] if spec.objective == "pareto" else []))
    study.set_user_attr("spec", spec_to_dict(spec))
    return study, True


def directions(spec: StudySpec) -> list[str]:
    return ["maximize", "minimize"] if spec.objective == "pareto" else ["maximize"]


def _settings(spec: dict) -> dict:
    """What must not change when a study resumes: all but its name, trial count, heartbeat timing
    sampler options and confirmation settings (a study stored before the family, objective and
    fidelity fields existed has their defaults)."""
    kept = {k: v for k, v in spec.items() if k not in ("name", "trials", "heartbeat_interval", "grace_period", "tpe_group", "confirm")}
    return {"family": "step3", "objective": "accuracy", "fidelity": {"rungs": 1, "eta": 3}, **kept}


class TrialSeededTPE(optuna.samplers.TPESampler):
    """TPE whose random draws for trial N come from (the study's seed, N). No two trials share a
    number, so processes that start trials at the same moment (several `run` commands on one
    storage, here or on other machines) never share a random state, and the same study resumed
    samples the same way every time."""

    def __init__(self, study_seed: int, **kwargs: Any) -> None:
        super().__init__(seed=study_seed, **kwargs)
        self._study_seed = study_seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        seed = int(hashlib.sha256(f"{self._study_seed}:{trial.number}".encode()).hexdigest()[:8], 16)
        # Optuna's random states, reseeded per trial (it offers no public way to seed them so)
        self._rng.rng.seed(seed)
        self._random_sampler._rng.rng.seed(seed)
        super().before_trial(study, trial)


def seed_sampler(study: optuna.Study, spec: StudySpec, url: str, first: bool, index: int = 0) -> None:
    """TPE, seeded from the study, never from the process: the process that created the study
    uses the study's seed as a plain TPESampler seed; every later start (a resumed run, worker
    `index` of several, a run on another machine) reseeds TPE at each trial from the study's
    seed and the trial's number (TrialSeededTPE). So the same command on the same study
    continues the same way, while processes running at once propose different points, even
    when they start at the same moment and see the same trials."""
    # group: Optuna 5's TPE is multivariate for one objective; parameters that exist only in
    # some trials (the blocks family's) are then sampled independently unless group=True.
    # constant_liar (Optuna's default) counts other processes' running trials as bad ones and
    # re-reads every trial for every parameter, most of a refused trial's cost. Only a journal
    # file or an RDB server lets several processes run trials at once; on SQLite this process's
    # own trial is the only one running, so the liar would change nothing there.
    options = {"group": spec.tpe_group, "constant_liar": not url.startswith("sqlite")}
    if first and index == 0:
        study.sampler = optuna.samplers.TPESampler(seed=spec.seed, **options)
    else:
        study.sampler = TrialSeededTPE(spec.seed, **options)


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
            if optuna.trial.TrialState.COMPLETE in now and spec.objective == "pareto":
                bar.set_postfix_str(f"front: {len(study.best_trials)} trials")
            elif optuna.trial.TrialState.COMPLETE in now:
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
        seed_sampler(study, spec, url, created)
        run_worker(spec, study, split_loader, out, timeout)
        return
    context = multiprocessing.get_context("spawn")  # CUDA and a clean torch in every worker
    supervise([context.Process(target=worker_main, args=(spec, url, out, str(device), data_dir, timeout, i, created, threads))
               for i in range(workers)], study)


def supervise(processes: list, study: optuna.Study) -> None:
    """Start worker processes of `study` and wait for them; pass Ctrl-C on; a worker that died
    is reported with the fate of its trial (marked FAIL), and WorkerDied raised at the end."""
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
        raise WorkerDied(f"{len(dead)} of {len(processes)} workers died (see above); rerun the same command to resume")


def confirm(study: optuna.Study, url: str, top: int, seeds: int, device, data_dir: Path, workers: int,
            threads: int | None, subset: int = 50_000) -> dict[str, dict]:
    """Confirm the study's candidates (search/confirm.py) in this process or in `workers` processes
    sharing `url`; store and return the mean ± std per candidate."""
    companion = open_companion(study)
    runs = plan(study, companion, top, seeds, subset)
    left = len(companion.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))
    epochs = study.user_attrs["spec"]["training"]["export_epochs"]
    log_line(f"confirming {len({n for n, _ in runs})} candidate(s) of {study.study_name!r} with {seeds} seed(s) or more each at the export "
             f"budget ({epochs} epochs on {subset:,} training images) on the validation split: {left} of {len(runs)} run(s) to train "
             f"(study {companion.study_name!r})")
    if workers == 1:
        run_confirmations(companion, lambda: load_split(data_dir, device, validation=True, subset=subset))
    else:
        context = multiprocessing.get_context("spawn")
        supervise([context.Process(target=confirm_worker_main, args=(study.study_name, url, str(device), data_dir, i, threads, subset))
                   for i in range(workers)], companion)
    return summarize(study, companion)


def confirm_worker_main(name: str, url: str, device: str, data_dir: Path, index: int, threads: int | None, subset: int) -> None:
    """One of several confirmation worker processes."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # see search/cli.py main
    if threads:
        torch.set_num_threads(threads)
    tqdm.set_lock(threading.RLock())  # see worker_main
    companion = optuna.load_study(study_name=companion_name(name), storage=open_storage(url))
    try:
        run_confirmations(companion, lambda: load_split(data_dir, torch.device(device), validation=True, subset=subset),
                          label=f"[worker {index}] ")
    except KeyboardInterrupt:
        sys.exit(130)


def worker_main(spec: StudySpec, url: str, out: Path, device: str, data_dir: Path, timeout: float | None,
                index: int, created: bool, threads: int | None) -> None:
    """One of several worker processes: open the shared storage and run trials until the count is reached."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # see search/cli.py main
    if threads:
        torch.set_num_threads(threads)
    # tqdm's default lock is a multiprocessing semaphore; a worker killed while holding one
    # makes the parent's resource tracker print warnings at exit. A thread lock is enough here.
    tqdm.set_lock(threading.RLock())
    storage = open_storage(url, (spec.heartbeat_interval, spec.grace_period))
    study = optuna.load_study(study_name=spec.name, storage=storage, pruner=make_pruner(spec.pruner))
    seed_sampler(study, spec, url, created, index)
    split_loader = lambda: load_split(data_dir, torch.device(device), validation=True, subset=spec.training.subset)  # noqa: E731
    try:
        run_worker(spec, study, split_loader, out, timeout, show_bar=False, label=f"[worker {index}] ")
    except KeyboardInterrupt:
        sys.exit(130)

