"""`run`: a study file's study, run or resumed to its trial count, then (when the study file
says so) confirmed, exported as best.json and summed up in the dashboard's note."""

from __future__ import annotations

from pathlib import Path

from search.data import N_VAL, resolve_data_dir
from search.errors import TargetMissed
from search.export import export_best, export_target
from search.results import best_trial, confirmed_rows, format_row, holds, undecided_lines
from search.storage import check_workers, default_storage, fail_stale, heartbeat_enabled, mask_password, open_storage, output_folder, stale_trials
from search.studyfile import load_study_spec, start_points
from space.config import DEFAULT_MAX_PARAMS
from space.families import FAMILIES


def run_command(study_file: Path, *, name: str | None = None, trials: int | None = None, max_params: int | None = None,
                seed: int | None = None, epochs: int | None = None, subset: int | None = None, timeout: float | None = None,
                storage: str | None = None, out: Path | None = None, workers: int = 1, fail_stale_trials: bool = False,
                data_dir: str | None = None, device: str = "auto") -> None:
    """`run`: the study of `study_file` (its fields overridden by the options given), in storage
    `storage` (default: OUT/study.db, or OUT/journal.log for several workers) with its outputs
    in `out` (default: studies/NAME/), on `workers` processes."""
    options = {"name": ("--study", name), "trials": ("--trials", trials), "max_params": ("--max-params", max_params),
               "seed": ("--seed", seed), "training.epochs": ("--epochs", epochs), "training.subset": ("--subset", subset),
               "timeout": ("--timeout", timeout)}
    spec = load_study_spec(study_file, {field: option for field, option in options.items() if option[1] is not None})
    starts = start_points(spec)  # read on every run, so that a bad one answers before anything is written
    if storage:
        check_workers(storage, workers)  # before the output folder exists
    out = output_folder(out or Path("studies") / spec.name, "--out")
    url = storage or default_storage(out, workers)
    # torch and the training modules only now: a bad study file or option answers at once
    from search.confirm import confirm
    from search.data import load_mnist, load_split
    from search.device import cpu_threads, resolve_device
    from search.loop import run_search, trial_line
    from search.note import publish_best
    from search.study import create_or_resume, requeue_lost
    from search.teacher import teacher

    torch_device = resolve_device(device)
    data = resolve_data_dir(data_dir)
    split = None
    if workers == 1:  # the data before the study: a data error leaves the study as it was
        split = load_split(data, torch_device, validation=True, subset=spec.training.subset, eval_subset=spec.training.validation)
    else:
        load_mnist(data, train=True)  # the same check; each worker then loads its own copy
    teachers = FAMILIES[spec.family].teachers(spec.space)
    if teachers and split is None:
        split = load_split(data, torch_device, validation=True, subset=spec.training.subset, eval_subset=spec.training.validation)
    for path in teachers:  # trained (or loaded) now, on its own line, not inside a trial
        teacher(path, split)
    study, created = create_or_resume(spec, open_storage(url, (spec.heartbeat_interval, spec.grace_period)), url, starts)
    stale = [] if heartbeat_enabled(study._storage) else stale_trials(study)  # RDB heartbeats re-queue dead workers' trials
    for trial in stale:
        print(f"trial {trial.number} is RUNNING but its worker {trial.user_attrs['worker']} is gone"
              + ("; marking it FAIL" if fail_stale_trials else "; rerun with --fail-stale to mark it FAIL"))
    if stale and fail_stale_trials:
        fail_stale(study, stale)
    for lost in requeue_lost(study, spec, starts):
        print(f"the enqueued trial {lost!r} was lost to a crash (FAIL); enqueued again")
    checked_on = f" (evaluated on {spec.training.validation:,} validation images)" if spec.training.validation < N_VAL else ""
    print(f"study {spec.name!r} ({spec.family} family): {spec.trials} trials, {spec.training.epochs} epochs on {spec.training.subset:,} "
          f"training images a trial{checked_on}, limit {spec.max_params:,} params, device {torch_device}, {workers} worker(s), storage {mask_password(url)}",
          flush=True)
    run_search(spec, study, created, url, out, torch_device, data, split, spec.timeout, workers, cpu_threads(torch_device, workers))
    if not any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
        print("no trial has completed yet, so there is no best.json; rerun to go on")
        return
    if spec.confirm.after_run:
        confirm(study, url, spec.confirm, torch_device, data, workers)
    best = best_trial(study)
    path = export_best(study, out)
    publish_best(study)
    if spec.region.target_acc and confirmed_rows(study):  # the answer to the study's question, when it has one
        try:
            target_path, row = export_target(study, out, spec.region.target_acc)
            print(f"smallest confirmed config reaching {spec.region.target_acc:g} % validation accuracy: {format_row(row)}; "
                  f"written to {target_path}")
            for line in undecided_lines(confirmed_rows(study), row, spec.region.target_acc, study.study_name, spec.confirm.max_seeds):
                print(line)
        except TargetMissed as e:
            print(str(e))
    print(f"best: {trial_line(best)}" + (" (best confirmed mean)" if any(holds(r) for r in confirmed_rows(study)) else ""))
    limit = "" if spec.max_params == DEFAULT_MAX_PARAMS else f" --max-params {spec.max_params}"
    print(f"best config: {path}  (python -m search reproduce {path} --seeds 1 2 3{limit})")
    default_place = not storage and out == Path("studies") / spec.name
    ours = f"python -m search dashboard --study {spec.name}" + ("" if default_place else f" --storage {mask_password(url)} --artifacts {out}")
    print(f"dashboard: {ours}   (or: optuna-dashboard {mask_password(url)} --artifact-dir {out / 'artifacts'})")
