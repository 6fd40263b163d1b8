"""The runs of a confirmation: each (candidate, seed) run a trial of the companion study
(search/companion.py), taken one by one from its WAITING trials by this process or by worker
processes until none is left or the time budget passes. search/confirm.py runs the rounds."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import optuna
from optuna.trial import TrialState

from search.companion import companion_name
from search.console import log_line
from search.data import SearchSplit, Split
from search.stale import optimize_one, worker_id
from search.storage import open_storage
from search.studyfile import OBJECTIVE_EPOCHS
from search.train import OutOfTime
from search.trial_training import train_in_trial
from space.config import config_from_dict


@dataclass(frozen=True)
class ConfirmJob:
    """What a confirmation worker process is handed: the search study's name and storage, its data, the deadline."""

    study_name: str
    url: str
    data: SearchSplit
    deadline: float | None


def confirm_worker(job: ConfirmJob, index: int) -> None:
    """One of several confirmation worker processes."""
    companion = optuna.load_study(study_name=companion_name(job.study_name), storage=open_storage(job.url))
    run_confirmations(companion, job.data.load, job.deadline, label=f"[worker {index}] ")


class NoRunLeft(Exception):
    """Raised in a trial a worker started after the last waiting run was taken by another."""


def confirm_objective(trial: optuna.Trial, split: Split, deadline: float | None = None) -> tuple[float, int]:
    """Train one (candidate, seed) run (search/trial_training.py); its values are the final
    validation accuracy and the size. The final epoch is also scored under elastic distortion
    ("val_elastic_loss": a study can read its answer there, [region] answer_elastic_loss). A run whose loss diverges is PRUNED with the reason in its
    "diverged" attribute: it counts against its candidate and is not retried."""
    trial.set_user_attr("worker", worker_id())  # first: a Ctrl-C from here on leaves no run RUNNING (stale.optimize_one)
    if "candidate" not in trial.user_attrs:
        trial.set_user_attr("reason", "no confirmation run was left to take")
        raise NoRunLeft()
    config = config_from_dict(trial.user_attrs["config"])
    try:
        history = train_in_trial(trial, config, split, started=time.perf_counter(), deadline=deadline, evaluated_epochs=OBJECTIVE_EPOCHS,
                                 progress=f"trial {trial.user_attrs['candidate']} seed {trial.user_attrs['seed']}",  # only the final epoch's counts
                                 elastic=True)
    except OutOfTime:  # Optuna marks the run FAIL (caught by run_confirmations); the next `confirm` enqueues it again
        trial.set_user_attr("reason", "the confirmation's time budget ran out")
        raise
    return history[-1]["val_acc"], trial.user_attrs["n_params"]


def run_confirmations(companion: optuna.Study, load: Callable[[], Split], deadline: float | None = None, label: str = "") -> None:
    """Take waiting runs one by one until none is left or `deadline` (time.time()) passes; the split is loaded (`load`) at the first."""
    split: Split | None = None

    def after_run(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        a = trial.user_attrs
        if trial.state == TrialState.COMPLETE:
            final = a["epochs"][-1]
            losses = ", ".join(f"{name} {final[key]:.4f}" for name, key in (("loss", "val_loss"), ("elastic loss", "val_elastic_loss")) if key in final)
            log_line(f"{label}confirm trial {a['candidate']:>4} seed {a['seed']}: final val acc {trial.values[0]:.2f}%, {losses} "
                     f"({a['n_params']:,} params, {a['seconds']:.0f} s)")
        elif "diverged" in a:
            log_line(f"{label}confirm trial {a['candidate']:>4} seed {a['seed']}: DIVERGED ({a['diverged']}); "
                     f"counted against the candidate, not retried")
        elif "candidate" in a:
            log_line(f"{label}confirm trial {a['candidate']:>4} seed {a['seed']}: stopped, {a.get('reason', trial.state.name)}")

    while companion.get_trials(deepcopy=False, states=(TrialState.WAITING,)) and (deadline is None or time.time() < deadline):
        split = split or load()
        optimize_one(companion, lambda trial: confirm_objective(trial, split, deadline), catch=(NoRunLeft, OutOfTime), callbacks=[after_run])
