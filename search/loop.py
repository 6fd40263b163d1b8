"""The trial loop: run trials until the study holds its trial count, in this process or in
several worker processes that share the study, each printing one line per finished trial."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna
from tqdm import tqdm

from search.console import log_line
from search.data import SearchSplit, Split
from search.objective import FINISHED, SurplusTrial, objective
from search.sampler import make_pruner, seed_sampler
from search.stale import optimize_one, worker_is_gone
from search.storage import has_heartbeat, open_storage
from search.studyfile import StudySpec
from search.workers import run_in_workers


def trial_line(trial: optuna.trial.FrozenTrial) -> str:
    """One line per finished trial: number, params, state, objective or reason, seconds."""
    n_params = trial.user_attrs.get("n_params")
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else math.nan
    complete = trial.state == optuna.trial.TrialState.COMPLETE  # (a PRUNED trial's value is its last report)
    outcome = f"val {trial.values[0]:.3f}%" if complete else trial.user_attrs.get("reason", "")
    params = f"{n_params:>6,}" if n_params is not None else "     ?"
    return f"trial {trial.number:>4}  params {params}  {trial.state.name:<8}  {outcome}  ({seconds:.2f} s)"


@dataclass(frozen=True)
class SearchJob:
    """A search as the processes that run its trials see it: the settings, the storage, the output
    folder, where the data come from, the deadline (time.time()) and whether this run created
    the study. Plain data: it crosses to each worker process as it is."""

    spec: StudySpec
    url: str
    out: Path
    data: SearchSplit
    deadline: float | None
    created: bool


def run_search(study: optuna.Study, job: SearchJob, split: Split | None, workers: int, threads: int | None) -> None:
    """Run the study in this process (on `split`, loaded when None), or in `workers` processes
    (`threads` CPU threads each) that share it through job.url and load their own data."""
    if workers == 1:
        seed_sampler(study, job.spec, job.url, job.created)
        run_trials(study, job, lambda: split or job.data.load())
        return
    run_in_workers(search_worker, job, workers, threads, study)


def search_worker(job: SearchJob, index: int) -> None:
    """One of several worker processes: open the shared storage and run trials until the count is reached."""
    spec = job.spec
    storage = open_storage(job.url, (spec.heartbeat_interval, spec.grace_period))
    study = optuna.load_study(study_name=spec.name, storage=storage, pruner=make_pruner(spec.pruner))
    seed_sampler(study, spec, job.url, job.created, index)
    run_trials(study, job, job.data.load, show_bar=False, label=f"[worker {index}] ")


def first_rung_seconds(trials: list[optuna.trial.FrozenTrial]) -> float:
    """What a trial's first rung is expected to take: the median over the trials that trained one (0 before any)."""
    seconds = sorted(t.user_attrs["rungs"][0]["seconds"] for t in trials if "seconds" in (t.user_attrs.get("rungs") or [{}])[0])
    return seconds[len(seconds) // 2] if seconds else 0.0


def run_trials(study: optuna.Study, job: SearchJob, split_loader: Callable[[], Split], show_bar: bool = True, label: str = "") -> None:
    """Run trials until the study holds spec.trials finished trials, or until job.deadline
    (time.time()): no trial starts that is not expected to end its first rung before it, and
    the objective stops what still trains at it. Several workers can run this on one study: none
    starts a trial the count does not need, and each stays until the last trial is done, to
    take over one re-queued from a dead worker."""
    spec, out, deadline = job.spec, job.out, job.deadline
    states = lambda: [t.state for t in study.get_trials(deepcopy=False)]  # noqa: E731
    finished = sum(s in FINISHED for s in states())
    if finished >= spec.trials:
        print(f"study {spec.name!r} already holds {finished} finished trials (asked for {spec.trials})")
        return
    split = split_loader()
    heartbeat = has_heartbeat(job.url)
    with tqdm(total=spec.trials, initial=finished, unit="trial", desc=spec.name, dynamic_ncols=True,
              disable=not (show_bar and sys.stderr.isatty())) as bar:

        def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            log_line(label + trial_line(trial))
            now = states()
            bar.n = sum(s in FINISHED for s in now)
            if optuna.trial.TrialState.COMPLETE in now and spec.pareto:
                bar.set_postfix_str(f"front: {len(study.best_trials)} trials")
            elif optuna.trial.TrialState.COMPLETE in now:
                bar.set_postfix_str(f"best {study.best_value:.3f}% (trial {study.best_trial.number})")
            bar.refresh()

        while deadline is None or time.time() + first_rung_seconds(study.get_trials(deepcopy=False)) < deadline:
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
            optimize_one(study, lambda trial: objective(trial, spec, split, out, deadline), callbacks=[after_trial], catch=(SurplusTrial,))
        else:
            finished = sum(s in FINISHED for s in states())
            log_line(f"{label}the search's time budget ({spec.timeout:g} s) is spent: no more trials started here "
                     f"({finished} of {spec.trials} finished)")
