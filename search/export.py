"""Export of a study's trials in the reference config format: best.json (the best confirmed
mean, else the search's best trial) and, for a target accuracy, the smallest confirmed config
that reaches it."""

from __future__ import annotations

from pathlib import Path

import optuna

from search.confirm import best_trial, confirmed_rows, format_row, target_row
from search.errors import TargetMissed, UsageError
from search.study import export_config
from space.config import save_config


def export_best(study: optuna.Study, out: Path) -> Path:
    """Write the best trial's config, ready for `summary` and `reproduce`, to out/best.json."""
    return _write(study, best_trial(study), out / "best.json")


def export_target(study: optuna.Study, out: Path, target: float) -> tuple[Path, dict]:
    """Write the smallest confirmed config whose mean validation accuracy reaches `target` (%) to
    out/target-TARGET.json; TargetMissed names the one that comes closest."""
    rows = confirmed_rows(study)
    if not rows:
        raise UsageError(f"study {study.study_name!r} has no confirmed candidate yet; run python -m search confirm --study {study.study_name}")
    row, closest = target_row(rows, target)
    if row is None:
        raise TargetMissed(f"no confirmed config of {study.study_name!r} reaches {target:g} %; closest: {format_row(closest)}")
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == row["trial"])
    return _write(study, trial, out / f"target-{target:g}.json"), row


def _write(study: optuna.Study, trial: optuna.trial.FrozenTrial, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_config(export_config(study, trial), path)
    return path
