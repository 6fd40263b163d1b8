"""Export: a study's trials in the reference config format. `export_form` turns a trial's
config into a full run (the study's export epochs, the schedule scaled to match);
best.json is the best confirmed mean, else the search's best trial; for a level (a target
accuracy, or a validation loss), the smallest confirmed config that reaches it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import optuna

from search.errors import TargetMissed, UsageError
from search.answer import MEASURES, Level, read_answer
from search.results import best_trial, confirmed_rows, format_row
from search.storage import load_existing_study, mask_password, output_folder
from search.studyfile import StudySpec, Training, stored_spec
from space.config import RunConfig, config_from_dict, save_config


def export_command(study_name: str, storage: str | None, out: Path | None, level: Level | None) -> None:
    """`export`: write best.json into `out` (default: studies/NAME/) and the answer to the
    study's question (`export_answer`); with `level`, only the smallest confirmed config
    reaching that level (TargetMissed, exit 1, when none does)."""
    study = load_existing_study(study_name, storage)
    spec, rows = stored_spec(study), confirmed_rows(study)
    best = best_trial(study, rows)  # a study with nothing to export is refused before any folder is made
    out = output_folder(out or Path("studies") / study_name, "--out")
    if level is None:
        print(f"best config written to {export_best(study, best, spec.training, out)}")
        if spec.region.answer_level and not rows:
            print(f"the study's target, {spec.region.answer_level}, has no confirmed candidate to answer it yet: "
                  f"python -m search confirm --study {study_name}" + (f" --storage {mask_password(storage)}" if storage else ""))
        export_answer(study, spec, rows, out)
    else:
        export_target(study, spec, rows, out, level)


def export_answer(study: optuna.Study, spec: StudySpec, rows: list[dict], out: Path) -> Path | None:
    """The smallest of the confirmed candidates `rows` (the study's `confirmed_rows`) reaching the
    study's answer level ([region] answer_elastic_loss, answer_loss, else answer_acc, else target_acc) as
    target-elastic-loss-LOSS.json, target-loss-LOSS.json or target-ACC.json, when the study has a target
    and confirmed candidates; a target none of them reaches is said, not raised (the answer is "none yet").
    Returns the file written, if any."""
    level = spec.region.answer_level
    if not level or not rows:
        return None
    try:
        return export_target(study, spec, rows, out, level)
    except TargetMissed as e:
        print(str(e))
        return None


def export_target(study: optuna.Study, spec: StudySpec, rows: list[dict], out: Path, level: Level) -> Path:
    """Write the smallest of the confirmed candidates `rows` whose mean reaches `level` to
    out/target-ACC.json (or target-loss-LOSS.json, target-elastic-loss-LOSS.json), with the lines the reading adds (search/answer.py,
    `read_answer`); TargetMissed names the one that comes closest."""
    if not rows:
        raise UsageError(f"study {study.study_name!r} has no confirmed candidate yet; run python -m search confirm --study {study.study_name}")
    reading = read_answer(rows, level, study.study_name, spec.confirm.max_seeds)
    if reading.answer is None:
        for line in reading.lines:
            print(line)
        closest = format_row(reading.closest) if reading.closest else (
            "none (every confirmed candidate diverged)" if level.measure == "acc" else
            f"none (every confirmed candidate diverged or has no {MEASURES[level.measure][3]} recorded)")
        raise TargetMissed(f"no confirmed config of {study.study_name!r} reaches {level}; closest: {closest}{reading.hint}")
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == reading.answer["trial"])
    path = _write(study, trial, spec.training, out / level.file_name())
    print(f"smallest confirmed config reaching {level}: {format_row(reading.answer)}; written to {path}")
    for line in reading.lines:
        print(line)
    return path


def trial_config(trial: optuna.trial.FrozenTrial) -> RunConfig:
    """The config trial `trial` was trained with."""
    return config_from_dict(trial.user_attrs["config"])


def export_config(trial: optuna.trial.FrozenTrial, training: Training, study_name: str) -> RunConfig:
    """The trial's config for a full run of its study's `training` settings (see `export_form`)."""
    return export_form(trial_config(trial), training, f"{study_name}-trial{trial.number}")


def export_form(config: RunConfig, training: Training, name: str) -> RunConfig:
    """`config` as a full run: the study's export epoch count, the step size scaled by
    export_epochs / epochs (a whole number: the study file is refused otherwise), so the learning
    rate drops as many times and at the same fractions of training as in the trial."""
    factor, remainder = divmod(training.export_epochs, training.epochs)
    if remainder:  # a study stored before that check existed
        raise UsageError(f"export_epochs {training.export_epochs} is not a multiple of the trials' {training.epochs} epochs, "
                         f"so the exported schedule would differ from the searched one; start a new study with a multiple")
    scheduler = config.scheduler  # OneCycleLR spans all of training by itself: its fractions stay
    if scheduler.kind == "step":
        scheduler = replace(scheduler, step_size=scheduler.step_size * factor)
    return replace(config, epochs=training.export_epochs, scheduler=scheduler, name=name)


def export_best(study: optuna.Study, best: optuna.trial.FrozenTrial, training: Training, out: Path) -> Path:
    """Write the best trial's config (`best_trial`), ready for `summary` and `reproduce`, to out/best.json."""
    return _write(study, best, training, out / "best.json")


def _write(study: optuna.Study, trial: optuna.trial.FrozenTrial, training: Training, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_config(export_config(trial, training, study.study_name), path)
    return path
