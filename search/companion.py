"""The companion study NAME.confirm, which holds a confirmation's runs: each run (candidate,
seed, epochs, images) one trial, enqueued by `plan` and merged into the search study's
"confirm_plans"; `summarize` stores the results per candidate (mean ± std) in the search
study as "confirmed". One trial a run lets Optuna hand each run to one worker, mark an
interrupted one FAIL, and show them all in the dashboard."""

from __future__ import annotations

import statistics
import warnings
from dataclasses import replace

import optuna
from optuna.trial import TrialState

from search.export import export_config
from search.optuna_internals import storage_of
from search.stale import fail_stale, worker_is_gone
from search.studyfile import StudySpec
from space.config import config_to_dict


def companion_name(study_name: str) -> str:
    return f"{study_name}.confirm"


def open_companion(study: optuna.Study) -> optuna.Study:
    """The study holding `study`'s confirmation runs, created on first use."""
    companion = optuna.create_study(study_name=companion_name(study.study_name), storage=storage_of(study),
                                    directions=["maximize", "minimize"], load_if_exists=True)
    if not companion.metric_names:
        with warnings.catch_warnings():  # Optuna marks metric names experimental; the dashboard shows them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            companion.set_metric_names(["final val acc %", "params"])
    return companion


def confirmation_seeds(spec: StudySpec, count: int) -> list[int]:
    """Seeds the search never used: the study's seed + 1, + 2, ..."""
    return [spec.seed + 1 + i for i in range(count)]


def plan(study: optuna.Study, spec: StudySpec, companion: optuna.Study, wanted: dict[int, int], images: int) -> list[tuple[int, int]]:
    """Enqueue every (candidate, seed) run for the candidates in `wanted` (trial number: seed
    count) at this budget (the export epochs, `images` training images) that has no result, is
    not waiting and is not running in a live worker; returns all runs of the plan. Runs of dead
    local workers are marked FAIL. A run is identified by all that decides its result
    (candidate, seed, epochs, images), so a changed budget never reuses another budget's
    results. The plan is merged into the study's "confirm_plans" (one entry per candidate ever
    confirmed, its seeds only ever added to), so a later, smaller `confirm` keeps the earlier
    candidates and their seeds."""
    runs = companion.get_trials(deepcopy=False)
    stale = [t for t in runs if t.state == TrialState.RUNNING and worker_is_gone(t)]
    fail_stale(companion, stale, by="confirm")
    held = {run_key(t.user_attrs) for t in runs
            if t.state in (TrialState.COMPLETE, TrialState.WAITING) or (t.state == TrialState.PRUNED and "diverged" in t.user_attrs)
            or (t.state == TrialState.RUNNING and t not in stale)}
    plans = dict(study.user_attrs.get("confirm_plans", {}))
    planned_runs = []
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for trial in (trials[number] for number in wanted):
        config = export_config(trial, spec.training, study.study_name)
        budget = {"epochs": config.epochs, "images": images}
        earlier = plans.get(str(trial.number), {})
        same_budget = {k: earlier.get(k) for k in budget} == budget
        planned = sorted(set(confirmation_seeds(spec, wanted[trial.number])) | set(earlier.get("seeds", []) if same_budget else []))
        plans[str(trial.number)] = {"seeds": planned, **budget}
        for seed in planned:
            planned_runs.append((trial.number, seed))
            attrs = {"candidate": trial.number, "seed": seed, "budget": budget}
            if run_key(attrs) not in held:
                seeded = replace(config, seed=seed, name=f"{config.name}-seed{seed}")
                companion.enqueue_trial({}, user_attrs={**attrs, "n_params": trial.user_attrs["n_params"], "config": config_to_dict(seeded)})
    study.set_user_attr("confirm_plans", plans)
    return planned_runs


def run_key(attrs: dict) -> tuple:
    """What decides a confirmation run's result: (candidate, seed, epochs, training images); the
    validation images are a study setting, which no resumed study can change."""
    budget = attrs.get("budget", {})
    return attrs.get("candidate"), attrs.get("seed"), budget.get("epochs"), budget.get("images")


def summarize(study: optuna.Study, companion: optuna.Study) -> dict[str, dict]:
    """Mean ± std of the final validation accuracy, loss and elastic loss of every candidate ever planned, at the
    budget of its plan, stored in `study` (user attribute "confirmed", keyed by trial number)
    and returned. Diverged runs are listed per seed with their reason; the mean is over the
    others."""
    plans = study.user_attrs.get("confirm_plans", {})
    finished: dict[tuple, optuna.trial.FrozenTrial] = {}
    for t in companion.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if t.state == TrialState.COMPLETE or "diverged" in t.user_attrs:
            finished[run_key(t.user_attrs)] = t
    summary = {}
    for number, p in plans.items():
        runs = {seed: finished[key] for seed in p["seeds"] if (key := (int(number), seed, p["epochs"], p["images"])) in finished}
        if not runs:
            continue
        accs = {seed: t.values[0] for seed, t in runs.items() if t.state == TrialState.COMPLETE}
        final = [(t.user_attrs.get("epochs") or [{}])[-1] for t in runs.values() if t.state == TrialState.COMPLETE]
        summary[number] = {"n_params": next(iter(runs.values())).user_attrs["n_params"],
                           "mean": statistics.mean(accs.values()) if accs else None,
                           "std": statistics.stdev(accs.values()) if len(accs) > 1 else 0.0,
                           # the final validation loss ranks nets of one size better than their accuracy does (docs/results.md,
                           # "Found or chosen"), and the loss under elastic distortion a little better again ("What validation can see"):
                           # a study can read its answer on either ([region] answer_loss, answer_elastic_loss)
                           **mean_and_std(final, "val_loss", "loss"), **mean_and_std(final, "val_elastic_loss", "elastic_loss"),
                           "seeds": sorted(accs), "planned_seeds": p["seeds"],
                           "diverged": {str(seed): t.user_attrs["diverged"] for seed, t in runs.items() if t.state != TrialState.COMPLETE},
                           "complete": len(runs) == len(p["seeds"]), "epochs": p["epochs"], "images": p["images"]}
    study.set_user_attr("confirmed", summary)
    return summary


def mean_and_std(final: list[dict], key: str, name: str) -> dict[str, float | None]:
    """{name: the mean of `key` over the runs' final epochs, name_std: its standard deviation}, both None
    unless every run recorded it (a run of an older version of the tool may not have)."""
    values = [epoch.get(key) for epoch in final]
    if not values or None in values:
        return {name: None, f"{name}_std": None}
    return {name: statistics.mean(values), f"{name}_std": statistics.stdev(values) if len(values) > 1 else 0.0}
