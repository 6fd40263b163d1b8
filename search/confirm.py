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

This module runs the rounds: search/candidates.py chooses what each round confirms,
search/confirm_budget.py fits a round into the time budget, search/companion.py enqueues
its runs and sums them up, and search/confirm_runs.py trains them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from search.candidates import first_round, next_round
from search.companion import open_companion, plan, summarize
from search.confirm_budget import fitting_round, round_seconds
from search.confirm_runs import ConfirmJob, confirm_worker, run_confirmations
from search.console import log_line
from search.data import SearchSplit, load_images, resolve_data_dir
from search.device import cpu_threads, resolve_device
from search.errors import UsageError
from search.export import export_best, export_config
from search.note import publish_best
from search.results import best_trial, confirmed_rows, format_row
from search.storage import check_workers, load_existing_study, output_folder, storage_of_existing
from search.studyfile import StudySpec, stored_spec
from search.teacher import usable_cache_dir
from search.workers import run_in_workers
from space.datasets import DATASETS


@dataclass(frozen=True)
class ConfirmOptions:
    """`confirm`'s command line, typed: the study, the [confirm] settings it overrides (None: the study file's), the trials to
    confirm instead of the chosen ones, and where and how to train."""

    study: str
    storage: str | None = None
    top: int | None = None
    near: float | None = None
    near_loss: float | None = None
    seeds: int | None = None
    max_seeds: int | None = None
    timeout: float | None = None
    workers: int = 1
    out: Path | None = None  # default: studies/NAME/
    data_dir: str | None = None
    device: str = "auto"
    trials: tuple[int, ...] = ()


def confirm_command(options: ConfirmOptions) -> None:
    """`confirm`: confirm a study's candidates, print the table, write best.json (the best confirmed mean)."""
    study_name, storage, trials, workers = options.study, options.storage, list(options.trials), options.workers
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
    seeds = options.seeds or settings.seeds
    max_seeds = options.max_seeds if options.max_seeds is not None else settings.max_seeds
    if max_seeds and max_seeds < seeds:
        raise UsageError(f"--max-seeds {max_seeds} is below the {seeds} seeds every candidate gets; pass --max-seeds >= {seeds} (or 0)")
    out = output_folder(options.out or Path("studies") / study_name, "--out")  # before hours of training, not after
    data = resolve_data_dir(options.data_dir)
    load_images(data, train=True, dataset=DATASETS[spec.dataset])  # a data error before any run is enqueued
    near = options.near if options.near is not None else settings.near
    if near and not spec.region.target_acc:
        raise UsageError(f"--near {near:g}: study {study_name!r} has no [region] target_acc for the band to lie under; leave --near out")
    if near and (level := spec.region.answer_level).measure != "acc":
        raise UsageError(f"--near {near:g}: study {study_name!r} reads its answer at {level} ([region] answer_{level.measure}), "
                         f"which no accuracy band lies under; leave --near out")
    near_loss = options.near_loss if options.near_loss is not None else settings.near_loss
    if near_loss and len(study.directions) == 1:
        raise UsageError(f"--near-loss {near_loss:g}: study {study_name!r} is not a Pareto study, whose region the band lies over; leave --near-loss out")
    if near_loss and any("val_loss" not in t.user_attrs["rungs"][-1] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))):
        raise UsageError(f"--near-loss {near_loss:g}: study {study_name!r} was run before its rungs recorded the validation loss; "
                         f"leave --near-loss out")
    timeout = options.timeout if options.timeout is not None else settings.timeout
    spec = replace(spec, confirm=replace(settings, top=options.top or settings.top, near=near, near_loss=near_loss, seeds=seeds,
                                         max_seeds=max_seeds, timeout=timeout))
    rows = confirm(study, spec, url, resolve_device(options.device), data, workers, trials)
    best = best_trial(study, rows)
    path = export_best(study, best, spec.training, out)
    publish_best(study, spec, best, rows)
    print(f"best config (best confirmed mean) written to {path}")


def confirm(study: optuna.Study, spec: StudySpec, url: str, device: torch.device, data_dir: Path, workers: int,
            trials: list[int] | None = None) -> list[dict]:
    """Confirm `study`'s candidates (spec.confirm: how many, with how many seeds, on how many
    images; `trials`: these instead of `candidates`) in this process or in `workers` processes
    sharing `url`, in rounds (with spec.confirm.near, only candidates near the target: see
    `candidates`): first spec.confirm.seeds seeds each, then, while there is time, what
    `next_round` takes: one more seed for each candidate in question and the first seeds of the
    region's trials whose size lies where the answer is still open (with `trials`: one more seed for
    those of them in question, nothing else), so the later rounds
    concentrate on the target; under a timeout, a round with nothing in question takes the
    region's other trials smaller than the answer, one per worker a round, while they fit. spec.confirm.timeout is a
    hard bound: a round starts only for the runs (in the round's order) expected to end within
    it, and a run still training at it is stopped (FAIL; the next `confirm` trains it again).
    A trial whose runs another process is training (a round that comes again with nothing to
    train) is left to it, and the rounds go on without it.
    Store and print the mean ± std per candidate, and return them (`confirmed_rows`). Every
    level confirmation reads is the one the answer is read at ([region] answer_elastic_loss, answer_loss, else
    answer_acc, else target_acc): what `run` exports and what an "undecided" line of `export` asks about, so the
    seeds go where they decide the answer. [region] target_acc, when the answer is read apart from it, steers the
    search alone (the last rung's bound): seeds added near it went to nets above the answer's
    level (docs/results.md, "Seeds near the answer's level")."""
    settings, floor = spec.confirm, spec.region.floor
    level = spec.region.answer_level
    check_workers(url, workers)  # (for callers other than confirm_command)
    if trials:
        trials_by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        chosen, why = [trials_by_number[n] for n in trials], None
    else:
        chosen, why = first_round(study, settings, level, floor, spec.fidelity.rank)
    if not chosen:
        raise UsageError(f"study {study.study_name!r} has no COMPLETE trial to confirm; run it longer first")
    if why:
        log_line(why)
    if any(export_config(t, spec.training, study.study_name).distill for t in chosen):
        usable_cache_dir()  # its teachers are cached there: a folder that cannot be written fails now, not after an hour
    companion = open_companion(study)
    deadline = None if settings.timeout is None else time.time() + settings.timeout  # wall-clock: the workers are other processes
    data = SearchSplit(data_dir, str(device), settings.subset, spec.training.validation, spec.dataset)
    wanted = {t.number: settings.seeds for t in chosen}  # the first round in the candidates' order: the front's ends first
    summarize(study, companion)  # (plans of an earlier confirm, finished since)
    last_round: dict[int, int] = {}
    elsewhere: set[int] = set()  # trials whose runs another process (a `confirm` beside this one) is training: left to it
    while wanted:
        if deadline is not None:
            fitting = fitting_round(study, spec, companion, wanted, settings.subset, workers, deadline - time.time())
            if len(fitting) < len(wanted):
                log_line(f"time for {len(fitting)} of {len(wanted)} candidate(s) in this round (in its order): about "
                         f"{round_seconds(study, spec, companion, wanted, settings.subset, workers):.0f} s for all, "
                         f"{max(deadline - time.time(), 0):.0f} s left of the confirmation's timeout {settings.timeout:g} s")
            wanted = fitting
            if not wanted:
                break
        runs = plan(study, spec, companion, wanted, settings.subset)
        waiting = len(companion.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
        if not waiting and wanted == last_round:  # the same round again and nothing to train: another process trains its runs
            elsewhere |= set(wanted)
            log_line(f"the runs of trial(s) {', '.join(map(str, wanted))} are being trained by another process (a `confirm` beside "
                     f"this one): left to it (run `confirm` again once it has ended)")
        else:
            last_round = wanted
            to_train = (f"{waiting} of {len(runs)} run(s) to train" if waiting else
                        f"none of its {len(runs)} run(s) to train (each has a result, or another process trains it)")
            log_line(f"confirming {len(wanted)} candidate(s) of {study.study_name!r} at the export budget ({spec.training.export_epochs} "
                     f"epochs on {settings.subset:,} training images) on {spec.training.validation:,} validation images: {to_train} "
                     f"(study {companion.study_name!r})")
            # One run left (an added seed): one process with all the threads, not an idle worker. `waiting`
            # counts every waiting run of the companion study (another confirm's too): at worst one idle worker.
            busy = min(workers, waiting)
            if busy <= 1:
                run_confirmations(companion, data.load, deadline)
            else:
                run_in_workers(confirm_worker, ConfirmJob(study.study_name, url, data, deadline), busy, cpu_threads(device, busy), companion)
            summarize(study, companion)
            if deadline is not None and time.time() >= deadline:
                log_line(f"the confirmation's time budget ({settings.timeout:g} s) is spent; `confirm` trains what is left")
                break
        rows = [r for r in confirmed_rows(study) if (r["epochs"], r["images"]) == (spec.training.export_epochs, settings.subset)]
        wanted, why = next_round(study, rows, settings, level, floor, elsewhere, set(trials) if trials else None, workers,
                                 deadline is not None, spec.fidelity.rank)
        if why:
            log_line(why)
    rows = confirmed_rows(study)
    print(f"confirmed {len(rows)} candidate(s), smallest first:")
    for row in rows:
        print("  " + format_row(row))
    return rows
