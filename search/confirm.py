"""Confirmation: a search's finalists judged at the export budget with more seeds.

A search ranks its trials on one seed at a lower fidelity, which is partly a ranking of luck.
`confirm` retrains the candidates (in a Pareto study the region's trials in promotion order:
its fronts, spread along the size axis; the top trials of an accuracy study) for the export
epoch count on the training images of the split that [confirm] subset says (all of them by
default), once per confirmation seed, and measures the final validation accuracy (the test set
stays unseen). Later rounds add seeds where they decide the answer and confirm more trials
where it is still open (see `confirm`).

Each (candidate, seed, epochs, images) run is a trial of a companion study, NAME.confirm, in
the same storage: Optuna hands each WAITING run to exactly one worker, marks a run
interrupted by Ctrl-C or by the time budget FAIL, and the next `confirm` enqueues again what
has no result, so confirmation resumes, runs under several workers and on PostgreSQL like the
search. A run whose loss diverges is kept as such and counts against its candidate. The
dashboard lists the companion study with every run; the mean ± std per candidate (every
candidate ever confirmed) is stored in the search study (user attribute "confirmed") and shown
in its note and by `report`.
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
                    timeout: float | None, workers: int, out: Path | None, data_dir: str | None, device: str,
                    trials: list[int] | None = None) -> None:
    """`confirm`: confirm a study's candidates (the study file's [confirm] settings unless given;
    `trials`: these trials instead of the chosen ones), print the table, write best.json (the
    best confirmed mean) into `out` (default: studies/NAME/)."""
    study = load_existing_study(study_name, storage)
    if trials:
        complete = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
        missing = [n for n in trials if n not in complete]
        if missing:
            raise UsageError(f"--trial {missing[0]}: study {study_name!r} has no COMPLETE trial {missing[0]} (only COMPLETE trials are "
                             f"candidates; see them with python -m search report --study {study_name})")
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
            data, workers, trials)
    path = export_best(study, out)
    publish_best(study)
    print(f"best config (best confirmed mean) written to {path}")


def confirm(study: optuna.Study, url: str, settings: Confirm, device: torch.device, data_dir: Path, workers: int,
            trials: list[int] | None = None) -> dict[str, dict]:
    """Confirm `study`'s candidates (`settings`: how many, with how many seeds, on how many
    images; `trials`: these instead of `candidates`) in this process or in `workers` processes
    sharing `url`, in rounds: first settings.seeds seeds each, then, while there is time, one
    more seed for each candidate in question (`in_question`, the smallest first) and the first
    seeds of the COMPLETE trials of the region whose size lies where the answer is still open
    (`near_the_answer`), so the later rounds concentrate on the target. settings.timeout is a hard
    bound: a round starts only for the runs (in the round's order) expected to end within it, and
    a run still training at it is stopped (FAIL; the next `confirm` trains it again). Store and
    print the mean ± std per candidate, and return them."""
    check_workers(url, workers)  # (for callers other than confirm_command)
    trials_by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    chosen = candidates(study, settings.top) if not trials else [trials_by_number[n] for n in trials]
    if not chosen:
        raise UsageError(f"study {study.study_name!r} has no COMPLETE trial to confirm; run it longer first")
    spec = stored_spec(study)
    if any(export_config(study, t).distill for t in chosen):
        usable_cache_dir()  # its teachers are cached there: a folder that cannot be written fails now, not after an hour
    companion = open_companion(study)
    deadline = None if settings.timeout is None else time.time() + settings.timeout  # wall-clock: the workers are other processes
    wanted = {t.number: settings.seeds for t in chosen}  # the first round in the candidates' order: the front's ends first
    summary: dict[str, dict] = summarize(study, companion)
    while wanted:
        if deadline is not None:
            fitting = fitting_round(study, companion, wanted, settings.subset, workers, deadline - time.time())
            if len(fitting) < len(wanted):
                log_line(f"time for {len(fitting)} of {len(wanted)} candidate(s) in this round (in its order): about "
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
        rows = [r for r in confirmed_rows(study) if (r["epochs"], r["images"]) == (spec.training.export_epochs, settings.subset)]
        wanted = {row["trial"]: len(row["planned_seeds"]) + 1 for row in in_question(rows, spec.region.target_acc, settings.max_seeds)}
        if not trials:  # (an explicit list of trials is all the user asked for)
            wanted |= {t.number: settings.seeds for t in near_the_answer(study, rows, spec.region.target_acc) if t.number not in wanted}
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
    """`top` trials at most, chosen by one rule for every trial (a start config's trial too), in
    the order confirmation takes them: an accuracy study's best, the best first; in a Pareto
    study, the trials in the region (docs/design.md) in the order successive halving promotes
    them (search/pareto.py): front by front, each front's two ends and then the points that
    spread it along the size axis, so that confirmation answers "how small still holds" and not
    only "how accurate". Which of them are near the target shows at the export budget: the later
    rounds go there (`in_question`, `near_the_answer`)."""
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(study.directions) == 1:
        return sorted(finished, key=lambda t: -t.values[0])[:top]
    region = in_region(study, finished)
    return [region[i] for i in promotion_order([(t.values[0], t.user_attrs["n_params"]) for t in region])[:top]]


def in_question(rows: list[dict], target: float, max_seeds: int) -> list[dict]:
    """The confirmed candidates (smallest first) that one more seed could move across `target`
    and that could still be the answer: within noise of it (results.within_noise), below
    max_seeds, none diverged, and no larger than the smallest candidate already decided to
    reach it (a larger one cannot change "the smallest net that holds the target")."""
    if not target or not max_seeds:
        return []
    limit = min((r["n_params"] for r in rows if decided_to_reach(r, target)), default=math.inf)
    return [r for r in rows if holds(r) and len(r["seeds"]) < max_seeds and within_noise(r, target) and r["n_params"] <= limit]


def decided_to_reach(row: dict, target: float) -> bool:
    return holds(row) and row["mean"] >= target and not within_noise(row, target)


def near_the_answer(study: optuna.Study, rows: list[dict], target: float) -> list[optuna.trial.FrozenTrial]:
    """The COMPLETE trials of a Pareto study's region, not yet confirmed, whose size lies where the
    answer is still open: below the smallest candidate decided to reach `target`, and above the
    largest smaller one decided to fall short of it; in promotion order. None while no candidate
    is decided to reach the target (then the answer is "none yet", and its seeds decide it), and
    none without a target or in an accuracy study."""
    above = min((r["n_params"] for r in rows if decided_to_reach(r, target)), default=None) if target else None
    if above is None or len(study.directions) == 1:
        return []
    below = max((r["n_params"] for r in rows if holds(r) and r["mean"] < target and not within_noise(r, target)
                 and r["n_params"] < above), default=0)
    confirmed = {r["trial"] for r in rows}
    region = [t for t in in_region(study, study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
              if t.number not in confirmed and below < t.user_attrs["n_params"] < above]
    return [region[i] for i in promotion_order([(t.values[0], t.user_attrs["n_params"]) for t in region])]


def expected_run_seconds(study: optuna.Study, companion: optuna.Study, number: int, images: int) -> float | None:
    """What one confirmation run of candidate `number` on `images` training images is expected to
    take: its longest finished run at that budget; before any, its last search rung's training
    seconds scaled by the images and epochs, plus its evaluation seconds (the same 3 epochs are
    scored); None when neither was recorded."""
    training = stored_spec(study).training
    runs = [t.user_attrs.get("seconds", 0.0) for t in companion.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("candidate") == number and t.user_attrs.get("budget") == {"epochs": training.export_epochs, "images": images}]
    if runs:
        return max(runs)
    rung = (study.get_trials(deepcopy=False)[number].user_attrs.get("rungs") or [{}])[-1]
    if "seconds" not in rung:
        return None
    trained = rung.get("train_seconds", rung["seconds"])  # (a rung recorded before its training seconds were: all of it)
    return trained * (images / rung["images"]) * (training.export_epochs / training.epochs) + (rung["seconds"] - trained)


def runs_to_train(study: optuna.Study, companion: optuna.Study, number: int, count: int, images: int) -> int:
    """How many runs bringing candidate `number` to `count` seeds at `images` training images would
    train: the seeds planned (this count's and any earlier plan's at that budget) without a
    result (COMPLETE, or diverged) in `companion`."""
    export_epochs = stored_spec(study).training.export_epochs
    earlier = study.user_attrs.get("confirm_plans", {}).get(str(number), {})
    planned = set(confirmation_seeds(study, count)) | (set(earlier.get("seeds", [])) if earlier.get("images") == images else set())
    done = {run_key(t.user_attrs) for t in companion.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if t.state == TrialState.COMPLETE or "diverged" in t.user_attrs}
    return sum((number, seed, export_epochs, images) not in done for seed in planned)


def round_seconds(study: optuna.Study, companion: optuna.Study, wanted: dict[int, int], images: int, workers: int) -> float:
    """What a round that brings each candidate of `wanted` (trial number: seed count) to its seed
    count is expected to take on `workers` processes: its runs in the round's order, each taken by
    the first process free (as the workers take waiting runs); a run of unknown length is taken
    as the longest known one."""
    known = {number: expected_run_seconds(study, companion, number, images) for number in wanted}
    longest = max((s for s in known.values() if s is not None), default=0.0)
    free = [0.0] * max(workers, 1)
    for number, count in wanted.items():
        for _ in range(runs_to_train(study, companion, number, count, images)):
            first = free.index(min(free))
            free[first] += known[number] if known[number] is not None else longest
    return max(free)


def fitting_round(study: optuna.Study, companion: optuna.Study, wanted: dict[int, int], images: int, workers: int,
                  seconds: float) -> dict[int, int]:
    """The first candidates of `wanted`, in its order, whose round is expected to end within
    `seconds`, as many as fit."""
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
    if split.train_images.device.type == "cpu":  # the CPU's numbers depend on the thread count (and with it the layout: search/train.py)
        trial.set_user_attr("threads", torch.get_num_threads())
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


