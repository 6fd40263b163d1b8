"""The Optuna objective, as in optuna-examples: suggest a point of the family's space, build
its config, refuse it before any training when its shape is impossible or it is over the
parameter limit, train, report the validation accuracy after every epoch and honour
`should_prune` (see `may_prune`).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import optuna
import torch

from search.artifacts import attach_trial_files
from search.data import Split
from search.storage import worker_id, worker_is_gone
from search.study import (FAMILIES, FINISHED, OBJECTIVE_EPOCHS, StudySpec, config_from_point, export_form, may_prune, settled_after,
                          spec_to_dict)
from search.train import DivergedError, train
from space.config import ConfigError, architecture, check_shapes, config_to_dict, count_params


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



def _prune(trial: optuna.Trial, reason: str) -> float:
    trial.set_user_attr("reason", reason)
    raise optuna.TrialPruned(reason)



class SurplusTrial(Exception):
    """Raised in a trial that several workers started together beyond the study's trial count."""


