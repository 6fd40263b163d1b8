"""Export of a study's best trial: best.json in the reference config format."""

from __future__ import annotations

from pathlib import Path

import optuna

from search.study import best_trial, export_config
from space.config import save_config


def export_best(study: optuna.Study, out: Path) -> Path:
    """Write the best trial's config, ready for `summary` and `reproduce`, to out/best.json."""
    trial = best_trial(study)
    config = export_config(study, trial)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "best.json"
    save_config(config, path)
    return path
