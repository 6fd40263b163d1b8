"""Confirmation: a search's candidates retrained at the export budget with more seeds.

A search ranks its trials on one seed at a low fidelity, which is partly a ranking of luck.
`confirm` retrains the candidates (the Pareto front's most accurate points, or the top
trials of an accuracy study) for the export epoch count on all 50,000 training images of
the split, once per confirmation seed, and measures the final validation accuracy (the test
set stays unseen).

Each (candidate, seed) run is a trial of a companion study, NAME.confirm, in the same
storage: Optuna hands each WAITING run to exactly one worker, marks a run interrupted by
Ctrl-C FAIL, and the next `confirm` enqueues again what has no result, so confirmation
resumes, runs under several workers and on PostgreSQL like the search. The dashboard lists
the companion study with every run; the mean ± std per candidate is stored in the search
study (user attribute "confirmed") and shown in its note and by `report`.
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import replace

import optuna
from optuna.trial import TrialState

from search.data import Split
from search.storage import fail_stale, worker_id, worker_is_gone
from search.study import export_config
from search.train import log_line, train
from space.config import config_from_dict, config_to_dict


def companion_name(study_name: str) -> str:
    return f"{study_name}.confirm"


def candidates(study: optuna.Study, top: int) -> list[optuna.trial.FrozenTrial]:
    """The `top` most accurate trials of the Pareto front (a Pareto study), or of all COMPLETE
    trials (an accuracy study); over-limit trials are never COMPLETE."""
    if len(study.directions) > 1:
        pool = study.best_trials  # Optuna's front: feasible COMPLETE trials only
    else:
        pool = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(pool, key=lambda t: (-t.values[0], t.user_attrs["n_params"]))[:top]


def confirmation_seeds(study: optuna.Study, count: int) -> list[int]:
    """Seeds the search never used: the study's seed + 1, + 2, ..."""
    seed = study.user_attrs["spec"]["seed"]
    return [seed + 1 + i for i in range(count)]


def open_companion(study: optuna.Study) -> optuna.Study:
    """The study holding `study`'s confirmation runs, created on first use."""
    companion = optuna.create_study(study_name=companion_name(study.study_name), storage=study._storage,
                                    directions=["maximize", "minimize"], load_if_exists=True)
    if not companion.metric_names:
        with warnings.catch_warnings():  # Optuna marks metric names experimental; the dashboard shows them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            companion.set_metric_names(["final val acc %", "params"])
    return companion


def plan(study: optuna.Study, companion: optuna.Study, top: int, seeds: int) -> list[tuple[int, int]]:
    """Enqueue every (candidate, seed) run that has no result, is not waiting and is not running
    in a live worker; returns all runs of the plan. Runs of dead local workers are marked FAIL."""
    runs = companion.get_trials(deepcopy=False)
    stale = [t for t in runs if t.state == TrialState.RUNNING and worker_is_gone(t)]
    fail_stale(companion, stale, by="confirm")
    held = {(t.user_attrs.get("candidate"), t.user_attrs.get("seed")) for t in runs
            if t.state in (TrialState.COMPLETE, TrialState.WAITING) or (t.state == TrialState.RUNNING and t not in stale)}
    wanted = []
    for trial in candidates(study, top):
        config = export_config(study, trial)
        for seed in confirmation_seeds(study, seeds):
            wanted.append((trial.number, seed))
            if (trial.number, seed) not in held:
                seeded = replace(config, seed=seed, name=f"{config.name}-seed{seed}")
                companion.enqueue_trial({}, user_attrs={"candidate": trial.number, "seed": seed, "n_params": trial.user_attrs["n_params"],
                                                        "config": config_to_dict(seeded)})
    study.set_user_attr("confirm_plan", [list(run) for run in wanted])
    return wanted


class NoRunLeft(Exception):
    """Raised in a trial a worker started after the last waiting run was taken by another."""


def confirm_objective(trial: optuna.Trial, split: Split) -> tuple[float, int]:
    """Train one (candidate, seed) run; its values are the final validation accuracy and the size."""
    if "candidate" not in trial.user_attrs:
        trial.set_user_attr("reason", "no confirmation run was left to take")
        raise NoRunLeft()
    trial.set_user_attr("worker", worker_id())
    config = config_from_dict(trial.user_attrs["config"])
    history: list[dict] = []
    start = time.perf_counter()

    def on_epoch(metrics: dict) -> None:
        history.append(metrics)
        trial.set_user_attr("epochs", history)
        trial.set_user_attr("seconds", time.perf_counter() - start)

    try:
        train(config, split, on_epoch=on_epoch, progress=f"trial {trial.user_attrs['candidate']} seed {trial.user_attrs['seed']}")
    except KeyboardInterrupt:  # Optuna marks the run FAIL and re-raises; the next `confirm` enqueues it again
        trial.set_user_attr("reason", "interrupted (Ctrl-C)")
        raise
    return history[-1]["val_acc"], trial.user_attrs["n_params"]


def run_confirmations(companion: optuna.Study, split_loader, label: str = "") -> None:
    """Take waiting runs one by one until none is left."""
    split = None

    def after_run(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            a = trial.user_attrs
            log_line(f"{label}confirm trial {a['candidate']:>4} seed {a['seed']}: final val acc {trial.values[0]:.2f}% "
                     f"({a['n_params']:,} params, {a['seconds']:.0f} s)")

    while companion.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        split = split or split_loader()
        companion.optimize(lambda trial: confirm_objective(trial, split), n_trials=1, catch=(NoRunLeft,),
                           callbacks=[after_run], gc_after_trial=False)


def summarize(study: optuna.Study, companion: optuna.Study) -> dict[str, dict]:
    """Mean ± std of the final validation accuracy per candidate of the plan, stored in `study`
    (user attribute "confirmed", keyed by trial number) and returned."""
    plan = [tuple(run) for run in study.user_attrs.get("confirm_plan", [])]
    results: dict[int, dict[int, float]] = {}
    sizes: dict[int, int] = {}
    for t in companion.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        results.setdefault(t.user_attrs["candidate"], {})[t.user_attrs["seed"]] = t.values[0]
        sizes[t.user_attrs["candidate"]] = t.user_attrs["n_params"]
    summary = {}
    for number in dict.fromkeys(n for n, _ in plan):
        planned = [seed for n, seed in plan if n == number]
        accs = [results.get(number, {})[seed] for seed in planned if seed in results.get(number, {})]
        if accs:
            summary[str(number)] = {"n_params": sizes[number], "mean": statistics.mean(accs),
                                    "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                                    "seeds": [s for s in planned if s in results[number]], "planned_seeds": planned,
                                    "complete": len(accs) == len(planned)}
    study.set_user_attr("confirmed", summary)
    return summary


def confirmed_rows(study: optuna.Study) -> list[dict]:
    """The fully confirmed candidates (every planned seed done), smallest first."""
    rows = [{"trial": int(n), **e} for n, e in study.user_attrs.get("confirmed", {}).items() if e["complete"]]
    return sorted(rows, key=lambda r: (r["n_params"], -r["mean"]))


def target_row(rows: list[dict], target: float) -> tuple[dict | None, dict | None]:
    """(the smallest confirmed candidate whose mean reaches `target`, None) or (None, the one that comes closest)."""
    reaching = [r for r in rows if r["mean"] >= target]
    if reaching:
        return min(reaching, key=lambda r: (r["n_params"], -r["mean"])), None
    return None, max(rows, key=lambda r: r["mean"], default=None)


def format_row(row: dict) -> str:
    return (f"trial {row['trial']} ({row['n_params']:,} params): {row['mean']:.2f} ± {row['std']:.2f} % mean final validation "
            f"accuracy over seeds {', '.join(map(str, row['seeds']))}")
