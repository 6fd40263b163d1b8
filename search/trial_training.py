"""Training a config inside an Optuna trial: the one way both a search trial (search/objective.py)
and a confirmation run (search/confirm_runs.py) train, and what each records while it does."""

from __future__ import annotations

import time
from typing import Callable

import optuna
import torch

from search.data import Split
from search.teacher import teacher_for
from search.train import DivergedError, train
from space.config import RunConfig


def train_in_trial(trial: optuna.Trial, config: RunConfig, split: Split, *, started: float, deadline: float | None,
                   evaluated_epochs: int | None, progress: str | None = None,
                   on_epoch: Callable[[dict], None] | None = None, elastic: bool = False) -> list[dict]:
    """Train `config` on `split` for `trial` and return the per-epoch metrics. The trial records
    its CPU thread count, the teacher it learned from, every epoch's metrics ("epochs") and the
    seconds since `started` (time.perf_counter()); `on_epoch` runs after each record (a pruner
    reads it there). A run whose loss diverges is PRUNED with "diverged" and "reason" recorded
    (on the CPU it would diverge again); Ctrl-C records its reason and goes on up (Optuna marks
    the trial FAIL); OutOfTime goes up to the caller, whose budget it was. `elastic`: the last
    epoch is also scored under elastic distortion (search/train.py, `train`)."""
    if split.train_images.device.type == "cpu":  # the CPU's numbers depend on the thread count; --as-trained uses it
        trial.set_user_attr("threads", torch.get_num_threads())
    history: list[dict] = []

    def record(metrics: dict) -> None:
        history.append(metrics)
        trial.set_user_attr("epochs", history)
        trial.set_user_attr("seconds", time.perf_counter() - started)
        if on_epoch is not None:
            on_epoch(metrics)

    teacher, learned_from = teacher_for(config, split)
    if learned_from:
        trial.set_user_attr("teacher", learned_from)
    try:
        train(config, split, on_epoch=record, progress=progress, teacher=teacher, deadline=deadline, evaluated_epochs=evaluated_epochs,
              elastic=elastic)
    except DivergedError as e:
        trial.set_user_attr("diverged", str(e))
        trial.set_user_attr("reason", f"diverged: {e}")
        trial.set_user_attr("seconds", time.perf_counter() - started)
        raise optuna.TrialPruned(f"diverged: {e}") from None
    except KeyboardInterrupt:
        trial.set_user_attr("reason", "interrupted (Ctrl-C)")
        raise
    return history
