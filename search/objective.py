"""The Optuna objective, as in optuna-examples: suggest a point of the family's space, build
its config, refuse it before any training when its shape is impossible or it is over the
parameter limit, train, report the validation accuracy after every epoch and honour
`should_prune` (see `may_prune`).

A Pareto study (accuracy up, parameters down) cannot report or prune in Optuna; it trains
its trials by successive halving instead: rung by rung on more images, going on only while
the trial ranks in the top 1/eta of its rung (search/pareto.py) and, with a [region] floor,
stays within that many points of the best result there. A trial that stops early is PRUNED,
without values, so every COMPLETE trial, and so the front the sampler and the dashboard see,
is measured at the same budget and lies in the region; one below the region is also
infeasible for the sampler (constraint "below_region" > 0), as one over the limit is, and so,
slightly, is one stopped by successive halving ("stopped_early", graded by how far it got), so
that TPE, which cannot rank a trial without values, ranks these by how near they came.
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
from search.pareto import promoted, promotion_order
from search.storage import worker_id, worker_is_gone
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
        history = _train_rung(trial, spec, config, replace(split, train_images=split.train_images[:images],
                                                           train_labels=split.train_labels[:images]), start, rung, deadline)
        accuracy = statistics.mean(m["val_acc"] for m in history[-OBJECTIVE_EPOCHS:])
        # what the rung measured, kept for the ranking statistics `report` compares with confirmed accuracy
        rungs.append({"rung": rung, "images": images, "val_acc": accuracy, "final_val_acc": history[-1]["val_acc"],
                      "train_loss_sum": sum(m["train_loss"] for m in history), "seconds": time.perf_counter() - rung_start,
                      "train_seconds": sum(images / m["images_per_s"] for m in history)})  # (the rest: scoring, building)
        last = rung + 1 == len(subsets)
        if spec.pareto:
            trial.set_user_attr("rungs", rungs)
            stop = _halving_verdict(trial, spec, rung, images, accuracy, n_params, last)  # the same rule for every trial
            if stop:
                return _prune(trial, stop)
    attach_trial_files(trial, export_form(config, spec.training, config.name), n_params, history, out)
    return (accuracy, n_params) if spec.pareto else accuracy


def no_time_for_rung(rungs: list[dict], images: int, deadline: float | None, now: float) -> str | None:
    """Why the next rung (on `images` images) must not start, or None: it is expected to take the
    last rung's training seconds times the ratio of images plus the rest of its seconds (scoring
    the same validation images), and to end before `deadline`."""
    if not rungs or deadline is None:
        return None
    last = rungs[-1]
    trained = last.get("train_seconds", last["seconds"])
    needed = trained * images / last["images"] + (last["seconds"] - trained)
    if now + needed <= deadline:
        return None
    return (f"no time left for rung {len(rungs)} ({images:,} images): about {needed:.0f} s needed, "
            f"{max(deadline - now, 0):.0f} s left of the search's time budget")


def _halving_verdict(trial: optuna.Trial, spec: StudySpec, rung: int, images: int, accuracy: float, n_params: int,
                     last: bool) -> str | None:
    """Whether a Pareto trial stops after `rung` (the reason) or goes on (None): below the region
    (more than [region] floor points under the best result there), or, before the last rung,
    not promoted by successive halving. With a region, the trial's constraint "below_region"
    is set where it ends: > 0 (how far below) makes it infeasible for the sampler."""
    peers = rung_results(trial.study.get_trials(deepcopy=False), rung)
    floor = rung_floor(spec, rung)
    below = max(p["val_acc"] for p in peers) - floor - accuracy  # > 0: below the region
    if floor and below > 0:
        _constrain(trial, "below_region", below)
        return (f"below the region at rung {rung} ({images:,} images): val acc {accuracy:.2f}% is more than "
                f"{floor:g} points below the best result there")
    points, mine = [(p["val_acc"], p["n_params"]) for p in peers], [p["number"] for p in peers].index(trial.number)
    promoted_here = last or promoted(points, mine, spec.fidelity.eta)
    if floor and (last or not promoted_here):
        _constrain(trial, "below_region", below)  # <= 0: in the region
    if promoted_here:
        return None
    # How far from the end it stopped, for the sampler: a trial without values is one TPE cannot rank, but an infeasible one
    # it ranks by this sum, so a trial stopped at a later rung, or better placed at its rung, counts as nearer the good ones
    # (scaled to stay below every other constraint: a point below the region or over the limit counts as worse).
    order = promotion_order(points)
    _constrain(trial, "stopped_early", STOPPED_SCALE * (spec.fidelity.rungs - 1 - rung + order.index(mine) / max(len(order) - 1, 1)))
    rule = (f"the best of the {len(peers)} results there" if len(peers) < spec.fidelity.eta  # promoted(): the best so far
            else f"in the top 1/{spec.fidelity.eta} of the {len(peers)} results there")
    return f"stopped at rung {rung} ({images:,} images): val acc {accuracy:.2f}% with {n_params:,} params is not {rule}"


def rung_floor(spec: StudySpec, rung: int) -> float:
    """[region] floor at the last rung, and one floor wider for each rung below it (3, 6 and 9
    points on three rungs): on fewer images a small net's accuracy lags the best by more than
    it will at the export budget (measured: a 4,338-parameter net 2.9 points behind the best at
    1,851 images, 0.1 behind at 16,666: docs/results.md), and a fixed floor stopped such nets at
    the first rung."""
    return spec.region.floor * (spec.fidelity.rungs - rung)


STOPPED_SCALE = 0.001  # "stopped_early" lies in (0, 0.001 x rungs]; "below_region" and the limit's violations are larger


def rung_results(trials: list[optuna.trial.FrozenTrial], rung: int) -> list[dict]:
    """Every trial's result at `rung`, with its size and number. A trial re-queued after its worker
    died carries a copy of the FAIL original's attributes: the original is counted out (the copy's
    own rungs are reset when it starts)."""
    return [t.user_attrs["rungs"][rung] | {"n_params": t.user_attrs["n_params"], "number": t.number}
            for t in trials if t.state != optuna.trial.TrialState.FAIL and len(t.user_attrs.get("rungs", [])) > rung]


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


# ---------------------------------------------------------------- pruning and fidelity


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


def rung_subsets(spec: StudySpec) -> list[int]:
    """Training images of each rung, smallest first; the last is the study's subset."""
    f = spec.fidelity
    return [spec.training.subset // f.eta ** (f.rungs - 1 - k) for k in range(f.rungs)]
