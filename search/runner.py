"""`run`: a study file's study, run or resumed to its trial count, then (when the study file
says so) confirmed, exported as best.json and summed up in the dashboard's note."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from search.answer import holds
from search.data import resolve_data_dir
from search.export import export_answer, export_best
from search.results import best_trial, confirmed_rows
from search.storage import check_workers, default_storage, mask_password, output_folder
from search.studyfile import first_points, load_study_spec
from space.config import DEFAULT_MAX_PARAMS
from space.datasets import DATASETS
from space.families import FAMILIES


@dataclass(frozen=True)
class RunOptions:
    """`run`'s command line, typed: the study file and the fields it overrides (None: the file's),
    where the study and its outputs go, and how it runs."""

    study_file: Path
    name: str | None = None
    trials: int | None = None
    max_params: int | None = None
    seed: int | None = None
    epochs: int | None = None
    subset: int | None = None
    timeout: float | None = None
    storage: str | None = None  # default: OUT/study.db, or OUT/journal.log for several workers
    out: Path | None = None  # default: studies/NAME/
    workers: int = 1
    fail_stale: bool = False
    data_dir: str | None = None
    device: str = "auto"


def run_command(options: RunOptions) -> None:
    """`run`: the study of the study file (its fields overridden by the options given), run or resumed to its trial
    count on options.workers processes, then confirmed, exported and summed up as its file says."""
    overrides = {"name": ("--study", options.name), "trials": ("--trials", options.trials),
                 "max_params": ("--max-params", options.max_params), "seed": ("--seed", options.seed),
                 "training.epochs": ("--epochs", options.epochs), "training.subset": ("--subset", options.subset),
                 "timeout": ("--timeout", options.timeout)}
    spec = load_study_spec(options.study_file, {field: option for field, option in overrides.items() if option[1] is not None})
    firsts = first_points(spec)  # read on every run, so that a bad start config answers before anything is written
    storage, workers = options.storage, options.workers
    if storage:
        check_workers(storage, workers)  # before the output folder exists
    out = output_folder(options.out or Path("studies") / spec.name, "--out")
    url = storage or default_storage(out, workers)
    # torch and the training modules only now: a bad study file or option answers at once
    from search.confirm import confirm
    from search.data import SearchSplit, load_images
    from search.device import cpu_threads, resolve_device
    from search.loop import SearchJob, run_search, trial_line
    from search.note import publish_best
    from search.study import open_study
    from search.teacher import teacher

    torch_device = resolve_device(options.device)
    data = resolve_data_dir(options.data_dir)
    search_data = SearchSplit(data, str(torch_device), spec.training.subset, spec.training.validation, spec.dataset)
    teachers = FAMILIES[spec.family].teachers(spec.space)
    # the data before the study: a data error leaves the study as it was (several workers each load their own copy)
    split = search_data.load() if workers == 1 or teachers else None
    if split is None:
        load_images(data, train=True, dataset=DATASETS[spec.dataset])
    for path in teachers:  # trained (or loaded) now, on its own line, not inside a trial
        teacher(path, split)
    study, created = open_study(spec, url, firsts, options.fail_stale)
    checked_on = f" (evaluated on {spec.training.validation:,} validation images)" if spec.training.validation < DATASETS[spec.dataset].validation_size else ""
    print(f"study {spec.name!r} ({spec.family} family): {spec.trials} trials, {spec.training.epochs} epochs on {spec.training.subset:,} "
          f"training images a trial{checked_on}, limit {spec.max_params:,} params, device {torch_device}, {workers} worker(s), storage {mask_password(url)}",
          flush=True)
    deadline = None if spec.timeout is None else time.time() + spec.timeout  # wall-clock: the workers are other processes
    run_search(study, SearchJob(spec, url, out, search_data, deadline, created), split, workers, cpu_threads(torch_device, workers))
    if not any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
        bound = (f" (a trial completes only within {spec.region.near_target:g} points under target_acc {spec.region.target_acc:g}% "
                 f"at the last rung: [region] near_target)") if spec.region.near_target else ""
        print(f"no trial has completed yet{bound}, so there is no best.json; rerun to go on")
        return
    rows = confirm(study, spec, url, torch_device, data, workers) if spec.confirm.after_run else confirmed_rows(study)
    best = best_trial(study, rows)
    path = export_best(study, best, spec.training, out)
    answer = export_answer(study, spec, rows, out)  # the answer to the study's question, when it has one
    publish_best(study, spec, best, rows)
    print(f"best: {trial_line(best)}" + (" (best confirmed mean)" if any(holds(r) for r in rows) else ""))
    limit = "" if spec.max_params == DEFAULT_MAX_PARAMS else f" --max-params {spec.max_params}"
    print(f"best config: {path}  (python -m search reproduce {path} --seeds 1 2 3{limit})")
    if answer:  # the file the study's question is answered by, which best.json (the most accurate) often is not
        print(f"answer config: {answer}  (python -m search reproduce {answer} --seeds 1 2 3 4 5{limit})")
    default_place = not storage and out == Path("studies") / spec.name
    ours = f"python -m search dashboard --study {spec.name}" + ("" if default_place else f" --storage {mask_password(url)} --artifacts {out}")
    print(f"dashboard: {ours}   (or: optuna-dashboard {mask_password(url)} --artifact-dir {out / 'artifacts'})")
