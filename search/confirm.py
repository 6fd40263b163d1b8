"""Confirmation: a search's candidates retrained at the export budget with more seeds.

A search ranks its trials on one seed at a low fidelity, which is partly a ranking of luck.
`confirm` retrains the candidates (the start configs' trials, then points of the Pareto front
spread along its size axis, or the top trials of an accuracy study) for the export epoch count
on the training images of the split that [confirm] subset says (all of them by default), once
per confirmation seed, and measures the final validation accuracy (the test set stays unseen).

Each (candidate, seed, epochs, images) run is a trial of a companion study, NAME.confirm, in
the same storage: Optuna hands each WAITING run to exactly one worker, marks a run
interrupted by Ctrl-C FAIL, and the next `confirm` enqueues again what has no result, so
confirmation resumes, runs under several workers and on PostgreSQL like the search. A run
whose loss diverges is kept as such and counts against its candidate. The dashboard lists
the companion study with every run; the mean ± std per candidate (every candidate ever
confirmed) is stored in the search study (user attribute "confirmed") and shown in its note
and by `report`.
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from dataclasses import replace
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from search.note import publish_best
from search.data import Split, load_mnist, load_split, resolve_data_dir
from search.device import cpu_threads, resolve_device
from search.errors import UsageError
from search.export import export_best, export_config
from search.pareto import promotion_order
from search.results import confirmed_rows, format_row, holds, in_region, within_noise
from search.storage import check_workers, fail_stale, load_existing_study, open_storage, output_folder, storage_of_existing, worker_id, worker_is_gone
from search.studyfile import OBJECTIVE_EPOCHS, Confirm, stored_spec
from search.teacher import teacher_for, usable_cache_dir
from search.console import log_line
from search.train import DivergedError, OutOfTime, train
from search.workers import run_in_workers
from space.config import config_from_dict, config_to_dict


def confirm_command(study_name: str, storage: str | None, top: int | None, seeds: int | None, max_seeds: int | None,
                    timeout: float | None, workers: int, out: Path | None, data_dir: str | None, device: str) -> None:
    """`confirm`: confirm a study's candidates (the study file's [confirm] settings unless given),
    print the table, write best.json (the best confirmed mean) into `out` (default: studies/NAME/)."""
    study = load_existing_study(study_name, storage)
    url = storage_of_existing(study_name, storage)
    check_workers(url, workers)  # before the output folder and the data
    spec = stored_spec(study)
    settings = spec.confirm
    seeds = seeds or settings.seeds
    max_seeds = max_seeds if max_seeds is not None else settings.max_seeds
    if max_seeds and max_seeds < seeds:
        raise UsageError(f"--max-seeds {max_seeds} is below the {seeds} seeds every candidate gets; pass --max-seeds >= {seeds} (or 0)")
    out = output_folder(out or Path("studies") / study_name, "--out")  # before hours of training, not after
    data = resolve_data_dir(data_dir)
    load_mnist(data, train=True)  # a data error before any run is enqueued
    timeout = timeout if timeout is not None else settings.timeout
    confirm(study, url, replace(settings, top=top or settings.top, seeds=seeds, max_seeds=max_seeds, timeout=timeout), resolve_device(device),
            data, workers)
    path = export_best(study, out)
    publish_best(study)
    print(f"best config (best confirmed mean) written to {path}")


def confirm(study: optuna.Study, url: str, settings: Confirm, device: torch.device, data_dir: Path, workers: int) -> dict[str, dict]:
    """Confirm `study`'s candidates (`settings`: how many, with how many seeds, on how many
    images) in this process or in `workers` processes sharing `url`: a first round of
    settings.seeds seeds each, then rounds of one more seed for the candidates whose mean is
    within noise of the study's target and that could still change the answer (see
    `in_question`), up to max_seeds. settings.timeout is a hard bound: a round starts only for
    the candidates (smallest first) whose runs are expected to end within it, and a run still
    training at it is stopped (FAIL; the next `confirm` trains it again). Store and print the
    mean ± std per candidate, and return them."""
    check_workers(url, workers)  # (for callers other than confirm_command)
    chosen = candidates(study, settings.top)
    if not chosen:
        raise UsageError(f"study {study.study_name!r} has no COMPLETE trial to confirm; run it longer first")
    spec = stored_spec(study)
    if any(export_config(study, t).distill for t in chosen):
        usable_cache_dir()  # its teachers are cached there: a folder that cannot be written fails now, not after an hour
    companion = open_companion(study)
    deadline = None if settings.timeout is None else time.time() + settings.timeout  # wall-clock: the workers are other processes
    wanted = {t.number: settings.seeds for t in chosen}  # smallest first
    summary: dict[str, dict] = summarize(study, companion)
    while wanted:
        if deadline is not None:
            fitting = fitting_round(study, companion, wanted, settings.subset, workers, deadline - time.time())
            if len(fitting) < len(wanted):
                log_line(f"time for {len(fitting)} of {len(wanted)} candidate(s) in this round (the smallest first): about "
                         f"{round_seconds(study, companion, wanted, settings.subset, workers):.0f} s for all, "
                         f"{max(deadline - time.time(), 0):.0f} s left of the confirmation's timeout {settings.timeout:g} s")
            wanted = fitting
            if not wanted:
                break
        runs = plan(study, companion, wanted, settings.subset)
        left = len(companion.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        log_line(f"confirming {len(wanted)} candidate(s) of {study.study_name!r} at the export budget ({spec.training.export_epochs} epochs "
                 f"on {settings.subset:,} training images) on {spec.training.validation:,} validation images: {left} of {len(runs)} run(s) to train "
                 f"(study {companion.study_name!r})")
        # One run left (an added seed): one process with all the threads, not an idle worker. `left`
        # counts every waiting run of the companion study (another confirm's too): at worst one idle worker.
        busy = min(workers, left)
        if busy <= 1:
            run_confirmations(companion, lambda: load_split(data_dir, device, validation=True, subset=settings.subset,
                                                            eval_subset=spec.training.validation), deadline)
        else:
            run_in_workers(confirm_worker, (study.study_name, url, str(device), data_dir, settings.subset, spec.training.validation,
                                            deadline), busy, cpu_threads(device, busy), companion)
        summary = summarize(study, companion)
        if deadline is not None and time.time() >= deadline:
            log_line(f"the confirmation's time budget ({settings.timeout:g} s) is spent; `confirm` trains what is left")
            break
        wanted = {row["trial"]: len(row["planned_seeds"]) + 1
                  for row in in_question(confirmed_rows(study), spec.region.target_acc, settings.max_seeds) if row["trial"] in wanted}
    rows = confirmed_rows(study)
    print(f"confirmed {len(rows)} candidate(s), smallest first:")
    for row in rows:
        print("  " + format_row(row))
    return summary


def confirm_worker(name: str, url: str, device: str, data_dir: Path, subset: int, validation: int, deadline: float | None,
                   index: int) -> None:
    """One of several confirmation worker processes."""
    companion = optuna.load_study(study_name=companion_name(name), storage=open_storage(url))
    run_confirmations(companion, lambda: load_split(data_dir, torch.device(device), validation=True, subset=subset, eval_subset=validation),
                      deadline, label=f"[worker {index}] ")


def companion_name(study_name: str) -> str:
    return f"{study_name}.confirm"


def candidates(study: optuna.Study, top: int) -> list[optuna.trial.FrozenTrial]:
    """`top` trials at most, chosen by one rule for every trial (a start config's trial too): an
    accuracy study's best; in a Pareto study, the trials in the region (docs/design.md) in the
    order successive halving promotes them (search/pareto.py): front by front, each front's
    two ends and then the points that spread it along the size axis first, so that
    confirmation answers "how small still holds" and not only "how accurate". Which of them
    are near the target shows at the export budget: the rounds of added seeds go there
    (`in_question`). A Pareto study's candidates are returned smallest first."""
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(study.directions) == 1:
        return sorted(finished, key=lambda t: -t.values[0])[:top]
    region = in_region(study, finished)
    order = promotion_order([(t.values[0], t.user_attrs["n_params"]) for t in region])
    return sorted((region[i] for i in order[:top]), key=lambda t: t.user_attrs["n_params"])


def in_question(rows: list[dict], target: float, max_seeds: int) -> list[dict]:
    """The confirmed candidates (smallest first) that one more seed could move across `target`
    and that could still be the answer: within noise of it (results.within_noise), below
    max_seeds, none diverged, and no larger than the smallest candidate already decided to
    reach it (a larger one cannot change "the smallest net that holds the target")."""
    if not target or not max_seeds:
        return []
    decided = [r for r in rows if holds(r) and r["mean"] >= target and not within_noise(r, target)]
    limit = min((r["n_params"] for r in decided), default=math.inf)
    return [r for r in rows if holds(r) and len(r["seeds"]) < max_seeds and within_noise(r, target) and r["n_params"] <= limit]


def expected_run_seconds(study: optuna.Study, companion: optuna.Study, number: int, images: int) -> float:
    """What one confirmation run of candidate `number` on `images` training images is expected to
    take: its longest finished run at that budget; before any, its last search rung's seconds
    scaled by the images and epochs (0 when neither was recorded)."""
    training = stored_spec(study).training
    runs = [t.user_attrs.get("seconds", 0.0) for t in companion.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("candidate") == number and t.user_attrs.get("budget") == {"epochs": training.export_epochs, "images": images}]
    if runs:
        return max(runs)
    rung = (study.get_trials(deepcopy=False)[number].user_attrs.get("rungs") or [{}])[-1]
    if "seconds" not in rung:
        return 0.0
    return rung["seconds"] * (images / rung["images"]) * (training.export_epochs / training.epochs)


def round_seconds(study: optuna.Study, companion: optuna.Study, wanted: dict[int, int], images: int, workers: int) -> float:
    """What a round that brings each candidate of `wanted` (trial number: seed count) to its seed
    count is expected to take: its longest expected run times the runs each worker trains in
    turn (at most: a round of fewer runs than workers gives each more threads)."""
    plans = study.user_attrs.get("confirm_plans", {})
    runs, longest = 0, 0.0
    for number, count in wanted.items():
        done = plans.get(str(number), {}).get("seeds", []) if plans.get(str(number), {}).get("images") == images else []
        if count > len(done):
            runs += count - len(done)
            longest = max(longest, expected_run_seconds(study, companion, number, images))
    return longest * math.ceil(runs / workers)


def fitting_round(study: optuna.Study, companion: optuna.Study, wanted: dict[int, int], images: int, workers: int,
                  seconds: float) -> dict[int, int]:
    """The first candidates of `wanted` (smallest first) whose round is expected to end within
    `seconds`, as many as fit: the question is how small a net still holds the target, so a run
    for a small candidate comes before one for a larger."""
    for count in range(len(wanted), 0, -1):
        first = dict(list(wanted.items())[:count])
        if round_seconds(study, companion, first, images, workers) <= seconds:
            return first
    return {}


def confirmation_seeds(study: optuna.Study, count: int) -> list[int]:
    """Seeds the search never used: the study's seed + 1, + 2, ..."""
    seed = stored_spec(study).seed
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


def plan(study: optuna.Study, companion: optuna.Study, wanted: dict[int, int], images: int) -> list[tuple[int, int]]:
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
        config = export_config(study, trial)
        budget = {"epochs": config.epochs, "images": images}
        earlier = plans.get(str(trial.number), {})
        same_budget = {k: earlier.get(k) for k in budget} == budget
        planned = sorted(set(confirmation_seeds(study, wanted[trial.number])) | set(earlier.get("seeds", []) if same_budget else []))
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


class NoRunLeft(Exception):
    """Raised in a trial a worker started after the last waiting run was taken by another."""


def confirm_objective(trial: optuna.Trial, split: Split, deadline: float | None = None) -> tuple[float, int]:
    """Train one (candidate, seed) run; its values are the final validation accuracy and the size.
    A run whose loss diverges is PRUNED with the reason in its "diverged" attribute: it counts
    against its candidate and is not retried (on the CPU it would diverge again)."""
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

    teacher, learned_from = teacher_for(config, split)
    if learned_from:
        trial.set_user_attr("teacher", learned_from)
    try:
        train(config, split, on_epoch=on_epoch, progress=f"trial {trial.user_attrs['candidate']} seed {trial.user_attrs['seed']}",
              teacher=teacher, deadline=deadline, evaluated_epochs=OBJECTIVE_EPOCHS)  # only the final epoch's counts
    except OutOfTime:  # Optuna marks the run FAIL (caught by run_confirmations); the next `confirm` enqueues it again
        trial.set_user_attr("reason", "the confirmation's time budget ran out")
        raise
    except DivergedError as e:
        trial.set_user_attr("diverged", str(e))
        trial.set_user_attr("reason", f"diverged: {e}")
        trial.set_user_attr("seconds", time.perf_counter() - start)
        raise optuna.TrialPruned(str(e)) from None
    except KeyboardInterrupt:  # Optuna marks the run FAIL and re-raises; the next `confirm` enqueues it again
        trial.set_user_attr("reason", "interrupted (Ctrl-C)")
        raise
    return history[-1]["val_acc"], trial.user_attrs["n_params"]


def run_confirmations(companion: optuna.Study, split_loader, deadline: float | None = None, label: str = "") -> None:
    """Take waiting runs one by one until none is left or `deadline` (time.time()) passes."""
    split = None

    def after_run(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        a = trial.user_attrs
        if trial.state == TrialState.COMPLETE:
            log_line(f"{label}confirm trial {a['candidate']:>4} seed {a['seed']}: final val acc {trial.values[0]:.2f}% "
                     f"({a['n_params']:,} params, {a['seconds']:.0f} s)")
        elif "diverged" in a:
            log_line(f"{label}confirm trial {a['candidate']:>4} seed {a['seed']}: DIVERGED ({a['diverged']}); "
                     f"counted against the candidate, not retried")
        elif "candidate" in a:
            log_line(f"{label}confirm trial {a['candidate']:>4} seed {a['seed']}: stopped, {a.get('reason', trial.state.name)}")

    while companion.get_trials(deepcopy=False, states=(TrialState.WAITING,)) and (deadline is None or time.time() < deadline):
        split = split or split_loader()
        companion.optimize(lambda trial: confirm_objective(trial, split, deadline), n_trials=1, catch=(NoRunLeft, OutOfTime),
                           callbacks=[after_run], gc_after_trial=False)


def summarize(study: optuna.Study, companion: optuna.Study) -> dict[str, dict]:
    """Mean ± std of the final validation accuracy of every candidate ever planned, at the
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
        summary[number] = {"n_params": next(iter(runs.values())).user_attrs["n_params"],
                           "mean": statistics.mean(accs.values()) if accs else None,
                           "std": statistics.stdev(accs.values()) if len(accs) > 1 else 0.0,
                           "seeds": sorted(accs), "planned_seeds": p["seeds"],
                           "diverged": {str(seed): t.user_attrs["diverged"] for seed, t in runs.items() if t.state != TrialState.COMPLETE},
                           "complete": len(runs) == len(p["seeds"]), "epochs": p["epochs"], "images": p["images"]}
    study.set_user_attr("confirmed", summary)
    return summary


