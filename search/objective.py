"""The Optuna objective, as in optuna-examples: suggest a point of the family's space, build
its config, refuse it before any training when its shape is impossible or it is over the
parameter limit, train, report the validation accuracy after every epoch and honour
`should_prune` (see `may_prune`).

A Pareto study (accuracy up, parameters down) cannot report or prune in Optuna; it trains
its trials by successive halving instead (the rules: search/halving.py): rung by rung on more
images, going on only while the verdict after each rung says so. A trial that stops early is
PRUNED, without values, so every COMPLETE trial, and so the front the sampler and the dashboard
see, is measured at the same budget and lies in the region; the verdict's constraints make
the stopped ones infeasible for the sampler, as one over the limit is.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from dataclasses import replace
from pathlib import Path

import optuna

from search.artifacts import attach_trial_files
from search.data import Split
from search.export import export_form
from search.halving import no_time_for_rung, rung_config, rung_group, rung_results, rung_subsets, verdict
from search.stale import worker_id, worker_is_gone
from search.studyfile import OBJECTIVE_EPOCHS, StudySpec, config_from_point
from search.train import OutOfTime
from search.trial_training import train_in_trial
from space.config import ConfigError, RunConfig, architecture, check_shapes, config_to_dict, count_params, over_limit
from space.families import FAMILIES

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def objective(trial: optuna.Trial, spec: StudySpec, split: Split, out: Path, deadline: float | None = None) -> float | tuple[float, int]:
    """One trial; `deadline` (time.time(), the search's time budget): no rung starts that is not
    expected to end before it, and a rung still training at it is stopped."""
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
    too_large = over_limit(n_params, spec.max_params)
    trial.set_user_attr("n_params", n_params)
    trial.set_user_attr("architecture", architecture(config))
    trial.set_user_attr("config", config_to_dict(config))
    try:
        check_shapes(config.layers, config.dataset)
    except ConfigError as e:  # infeasible however small: the sampler learns the region from the constraint
        _constrain(trial, "params_over_limit", max(n_params - spec.max_params, 1))
        return _prune(trial, f"invalid shape: {e}")
    _constrain(trial, "params_over_limit", n_params - spec.max_params)  # <= 0: feasible
    if too_large:
        return _prune(trial, f"over the parameter limit: {n_params:,} > {spec.max_params:,}")

    trial.set_user_attr("seed", config.seed)
    trial.set_user_attr("subset", len(split.train_images))
    trial.set_user_attr("device", str(split.train_images.device))
    start = time.perf_counter()
    subsets = rung_subsets(spec)
    rungs: list[dict] = []
    if "rungs" in trial.user_attrs:  # a re-queued copy of a dead worker's trial: its results are the original's, not its own
        trial.set_user_attr("rungs", rungs)
    for rung, images in enumerate(subsets):
        late = no_time_for_rung(rungs, images, deadline, time.time())
        if late:
            return _prune(trial, late)
        rung_start = time.perf_counter()
        trained = rung_config(spec, config, rung)
        history = _train_rung(trial, spec, trained, replace(split, train_images=split.train_images[:images],
                                                            train_labels=split.train_labels[:images]), start, rung, deadline)
        accuracy = statistics.mean(m["val_acc"] for m in history[-OBJECTIVE_EPOCHS:])
        loss = statistics.mean(m["val_loss"] for m in history[-OBJECTIVE_EPOCHS:])
        if not math.isfinite(loss):  # it would rank nowhere ([fidelity] rank = "loss"): a run that diverged on the validation images
            trial.set_user_attr("diverged", f"validation loss is {loss} at rung {rung}")
            return _prune(trial, f"diverged: validation loss is {loss} at rung {rung}")
        # what the rung measured: the verdict ranks by it ([fidelity] rank), and `report` compares it with confirmation
        rungs.append({"rung": rung, "images": images, "val_acc": accuracy, "final_val_acc": history[-1]["val_acc"],
                      "val_loss": loss, "train_loss": history[-1]["train_loss"], "batch_size": trained.batch_size,
                      "train_loss_sum": sum(m["train_loss"] for m in history), "seconds": time.perf_counter() - rung_start,
                      "train_seconds": sum(images / m["images_per_s"] for m in history)})  # (the rest: scoring, building)
        last = rung + 1 == len(subsets)
        if spec.pareto:
            trial.set_user_attr("rungs", rungs)
            trials = trial.study.get_trials(deepcopy=False)
            within = spec.fidelity.within
            group = None if last else rung_group(trials, within, params.get(within))
            judged = verdict(spec, rung_results(trials, rung), trial.number, rung, images, last, group)  # the same rule for every trial
            for key, value in judged.constraints.items():
                _constrain(trial, key, value)
            if judged.stop:
                return _prune(trial, judged.stop)
    attach_trial_files(trial, export_form(config, spec.training, config.name), n_params, history, out)
    return (accuracy, n_params) if spec.pareto else accuracy


def _train_rung(trial: optuna.Trial, spec: StudySpec, config, split: Split, start: float, rung: int,
                deadline: float | None) -> list[dict]:
    """Train `config` on `split` (search/trial_training.py); in an accuracy study report every
    epoch and honour the pruner; stop (PRUNED, with the reason) when the search's time budget
    runs out."""

    def judge(metrics: dict) -> None:
        if spec.pareto:  # Optuna's report and should_prune need one objective
            return
        trial.report(metrics["val_acc"], metrics["epoch"])
        if may_prune(metrics["epoch"], settled_after(config), config.epochs) and trial.should_prune():
            _prune(trial, f"pruned by the {spec.pruner.kind} pruner after epoch {metrics['epoch']} (val acc {metrics['val_acc']:.2f}%)")

    try:
        # a Pareto rung is judged by its last OBJECTIVE_EPOCHS epochs alone; an accuracy study's pruner reads every epoch
        return train_in_trial(trial, config, split, started=start, deadline=deadline, on_epoch=judge,
                              evaluated_epochs=OBJECTIVE_EPOCHS if spec.pareto else None)
    except OutOfTime:
        _prune(trial, f"the search's time budget ran out during rung {rung} ({len(split.train_images):,} images)")


def _constrain(trial: optuna.Trial, key: str, value: float) -> None:
    """trial.set_constraint(key, value): > 0 is infeasible, and TPE learns the feasible region from
    it. A trial re-queued after its worker died already holds the same value (Optuna copies it),
    and Optuna's warning about it is noise."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The constraint value is ignored")
        trial.set_constraint(key, value)


def _prune(trial: optuna.Trial, reason: str) -> float:
    trial.set_user_attr("reason", reason)
    raise optuna.TrialPruned(reason)


class SurplusTrial(Exception):
    """Raised in a trial that several workers started together beyond the study's trial count."""


# ---------------------------------------------------------------- an accuracy study's pruning


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
