"""The Optuna objective, as in optuna-examples: suggest a point of the family's space, build
its config, refuse it before any training when its shape is impossible or it is over the
parameter limit, train, report the validation accuracy after every epoch and honour
`should_prune` (see `may_prune`).

A Pareto study (accuracy up, parameters down) cannot report or prune in Optuna; it trains
its trials by successive halving instead: rung by rung on more images, going on only while
the trial ranks in the top 1/eta of its rung (search/pareto.py). A trial that stops early
is PRUNED, without values, so every COMPLETE trial, and so the front the sampler and the
dashboard see, is measured at the same budget.
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import replace
from pathlib import Path

import optuna
import torch

from search.artifacts import attach_trial_files
from search.data import Split
from search.storage import worker_id, worker_is_gone
from search.pareto import promoted
from search.study import (FAMILIES, FINISHED, OBJECTIVE_EPOCHS, StudySpec, config_from_point, export_form, may_prune, rung_subsets,
                          settled_after, spec_to_dict)
from search.teacher import teacher_for
from search.train import DivergedError, train
from space.config import ConfigError, architecture, check_shapes, config_to_dict, count_params


def objective(trial: optuna.Trial, spec: StudySpec, split: Split, out: Path) -> float | tuple[float, int]:
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
        _constrain(trial, max(n_params - spec.max_params, 1))
        return _prune(trial, f"invalid shape: {e}")
    _constrain(trial, n_params - spec.max_params)  # <= 0: feasible; TPE learns the region
    if n_params > spec.max_params:
        return _prune(trial, f"over the parameter limit: {n_params:,} > {spec.max_params:,}")

    trial.set_user_attr("seed", config.seed)
    trial.set_user_attr("subset", len(split.train_images))
    trial.set_user_attr("device", str(split.train_images.device))
    if split.train_images.device.type == "cpu":  # the CPU's numbers depend on the thread count; --as-trained uses it
        trial.set_user_attr("threads", torch.get_num_threads())
    start = time.perf_counter()
    subsets = rung_subsets(spec)
    rungs: list[dict] = []
    if "rungs" in trial.user_attrs:  # a re-queued copy of a dead worker's trial: its results are the original's, not its own
        trial.set_user_attr("rungs", rungs)
    for rung, images in enumerate(subsets):
        history = _train_rung(trial, spec, config, replace(split, train_images=split.train_images[:images],
                                                           train_labels=split.train_labels[:images]), start)
        accuracy = statistics.mean(m["val_acc"] for m in history[-OBJECTIVE_EPOCHS:])
        rungs.append({"rung": rung, "images": images, "val_acc": accuracy})
        if len(subsets) > 1:
            trial.set_user_attr("rungs", rungs)
        if rung + 1 < len(subsets):
            # a trial re-queued after its worker died carries a copy of the FAIL original's attributes: count
            # the original out (the copy's own rungs were reset when it started)
            peers = [t.user_attrs["rungs"][rung] | {"n_params": t.user_attrs["n_params"], "number": t.number}
                     for t in trial.study.get_trials(deepcopy=False)
                     if t.state != optuna.trial.TrialState.FAIL and len(t.user_attrs.get("rungs", [])) > rung]
            points = [(p["val_acc"], p["n_params"]) for p in peers]
            me = [p["number"] for p in peers].index(trial.number)
            if not promoted(points, me, spec.fidelity.eta):
                return _prune(trial, f"stopped at rung {rung} ({images:,} images): val acc {accuracy:.2f}% with {n_params:,} params is not "
                                     f"in the top 1/{spec.fidelity.eta} of the {len(points)} results there")
    attach_trial_files(trial, export_form(config, spec_to_dict(spec)["training"], config.name), n_params, history, out)
    return (accuracy, n_params) if spec.objective == "pareto" else accuracy


def _train_rung(trial: optuna.Trial, spec: StudySpec, config, split: Split, start: float) -> list[dict]:
    """Train `config` on `split`; in an accuracy study report every epoch and honour the pruner."""
    history: list[dict] = []

    def on_epoch(metrics: dict) -> None:
        history.append(metrics)
        trial.set_user_attr("epochs", history)
        trial.set_user_attr("seconds", time.perf_counter() - start)
        if spec.objective == "pareto":  # Optuna's report and should_prune need one objective
            return
        trial.report(metrics["val_acc"], metrics["epoch"])
        if may_prune(metrics["epoch"], settled_after(config), config.epochs) and trial.should_prune():
            _prune(trial, f"pruned by the {spec.pruner.kind} pruner after epoch {metrics['epoch']} (val acc {metrics['val_acc']:.2f}%)")

    teacher, learned_from = teacher_for(config, split)
    if learned_from:
        trial.set_user_attr("teacher", learned_from)
    try:
        train(config, split, on_epoch=on_epoch, teacher=teacher)
    except DivergedError as e:
        _prune(trial, f"diverged: {e}")
    except KeyboardInterrupt:  # Optuna marks the trial FAIL and re-raises
        trial.set_user_attr("reason", "interrupted (Ctrl-C)")
        raise
    return history


def _constrain(trial: optuna.Trial, over_limit: int) -> None:
    """trial.set_constraint("params_over_limit", ...); a trial re-queued after its worker died
    already holds the same value (Optuna copies it), and Optuna's warning about it is noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The constraint value is ignored")
        trial.set_constraint("params_over_limit", over_limit)


def _prune(trial: optuna.Trial, reason: str) -> float:
    trial.set_user_attr("reason", reason)
    raise optuna.TrialPruned(reason)



class SurplusTrial(Exception):
    """Raised in a trial that several workers started together beyond the study's trial count."""


