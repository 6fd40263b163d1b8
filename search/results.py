"""What a study has found: its front in the region, its confirmed candidates (mean ± std per
candidate, stored by search/confirm.py) and the best trial. What the confirmed seeds say of a
level (an accuracy or a loss) is search/answer.py's. Read by `export`, `report`, the dashboard's note and
`run`; needs no torch."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from search.answer import holds
from search.errors import UsageError
from search.pareto import below_region, front_indices


def front_in_region(study: optuna.Study, floor: float) -> list[optuna.trial.FrozenTrial]:
    """A Pareto study's front (Optuna's: feasible COMPLETE trials) within its region."""
    return in_region(study, study.best_trials, floor)


def in_region(study: optuna.Study, trials: list[optuna.trial.FrozenTrial], floor: float) -> list[optuna.trial.FrozenTrial]:
    """Those of `trials` at most `floor` ([region] floor) points below the study's best COMPLETE
    result (a trial in the region when it ended can fall out of it as better ones arrive)."""
    best = max((t.values[0] for t in study.best_trials), default=None)
    if best is None:
        return trials
    return [t for t in trials if below_region(t.values[0], best, floor) <= 0]


def front(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The non-dominated ones of these COMPLETE Pareto trials (accuracy up, size down)."""
    return [trials[i] for i in front_indices([(t.values[0], t.values[1]) for t in trials])]


def confirmed_rows(study: optuna.Study) -> list[dict]:
    """The fully confirmed candidates (every planned seed done), smallest first; those with a
    diverged run are listed too (see `answer.holds`)."""
    # (a study confirmed before runs were keyed by their budget has neither budget nor divergence recorded, nor, before
    # 2026-12-05, the validation loss, nor, before 2026-12-07, the elastic one)
    rows = [{"trial": int(n), "diverged": {}, "epochs": None, "images": None, "loss": None, "loss_std": None, "elastic_loss": None,
             "elastic_loss_std": None, **e}
            for n, e in study.user_attrs.get("confirmed", {}).items() if e["complete"]]
    return sorted(rows, key=lambda r: (r["n_params"], -(r["mean"] or 0)))


def best_trial(study: optuna.Study, rows: list[dict]) -> optuna.trial.FrozenTrial:
    """The candidate with the best confirmed mean among `rows` (the study's `confirmed_rows`: every
    planned seed done, none diverged) when there is one; else the best trial of the search (of a
    Pareto study: the most accurate point of its front)."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        raise UsageError(f"study {study.study_name!r} has no COMPLETE trial yet; run it longer (python -m search run ...)")
    confirmed = {r["trial"]: r["mean"] for r in rows if holds(r)}
    if confirmed:
        return study.get_trials(deepcopy=False)[max(confirmed, key=confirmed.get)]
    if len(study.directions) > 1:
        return max(study.best_trials, key=lambda t: (t.values[0], -t.values[1]))
    return study.best_trial


def budget(row: dict) -> str:
    if row["epochs"] is None:
        return "budget not recorded"
    return f"{row['epochs']} epochs on {row['images']:,} training images"


def format_row(row: dict) -> str:
    text = f"trial {row['trial']} ({row['n_params']:,} params): "
    if row["seeds"]:
        text += (f"{row['mean']:.2f} ± {row['std']:.2f} % mean final validation accuracy over seeds {', '.join(map(str, row['seeds']))}")
        if row.get("loss") is not None:
            text += f"; mean final validation loss {row['loss']:.4f}"
        if row.get("elastic_loss") is not None:
            text += f", elastic {row['elastic_loss']:.4f}"
    diverged = row.get("diverged", {})
    if diverged:
        text += ("; " if row["seeds"] else "") + "DIVERGED on seed " + ", ".join(f"{s} ({why})" for s, why in diverged.items())
    return text + f" ({budget(row)})"
