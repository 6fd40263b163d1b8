"""What a study has found: its front in the region, its confirmed candidates (mean ± std per
candidate, stored by search/confirm.py), the best trial, and the smallest candidate that
reaches a target. Read by `export`, `report`, the dashboard's note and `run`; needs no torch."""

from __future__ import annotations

import math

import optuna
from optuna.trial import TrialState

from search.errors import UsageError
from search.pareto import front_indices


def front_in_region(study: optuna.Study, floor: float) -> list[optuna.trial.FrozenTrial]:
    """A Pareto study's front (Optuna's: feasible COMPLETE trials) within its region."""
    return in_region(study, study.best_trials, floor)


def in_region(study: optuna.Study, trials: list[optuna.trial.FrozenTrial], floor: float) -> list[optuna.trial.FrozenTrial]:
    """Those of `trials` at most `floor` ([region] floor) points below the study's best COMPLETE
    result (a trial in the region when it ended can fall out of it as better ones arrive)."""
    best = max((t.values[0] for t in study.best_trials), default=None)
    if not floor or best is None:
        return trials
    return [t for t in trials if t.values[0] >= best - floor]


def front(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The non-dominated ones of these COMPLETE Pareto trials (accuracy up, size down)."""
    return [trials[i] for i in front_indices([(t.values[0], t.values[1]) for t in trials])]


def confirmed_rows(study: optuna.Study) -> list[dict]:
    """The fully confirmed candidates (every planned seed done), smallest first; those with a
    diverged run are listed too (see `holds`)."""
    # (a study confirmed before runs were keyed by their budget has neither budget nor divergence recorded)
    rows = [{"trial": int(n), "diverged": {}, "epochs": None, "images": None, **e}
            for n, e in study.user_attrs.get("confirmed", {}).items() if e["complete"]]
    return sorted(rows, key=lambda r: (r["n_params"], -(r["mean"] or 0)))


SEED_SPREAD = 0.07  # accuracy points: the least seed-to-seed spread assumed (two or three seeds can agree by chance); the
# measured standard deviation of the final validation accuracy over seeds at the export budget is 0.01-0.13, typically 0.07
# (docs/results.md)


def interval(row: dict) -> tuple[float, float]:
    """About 95 % of where a candidate's true mean lies: its mean ± two standard errors (the spread of
    its seeds, at least SEED_SPREAD)."""
    half = 2 * max(row["std"], SEED_SPREAD) / math.sqrt(len(row["seeds"]))
    return row["mean"] - half, row["mean"] + half


def within_noise(row: dict, target: float) -> bool:
    """Whether `target` lies within the candidate's interval: its seeds do not yet say on which side it is."""
    low, high = interval(row)
    return low <= target <= high


def undecided_lines(rows: list[dict], answer: dict, target: float, study_name: str, max_seeds: int) -> list[str]:
    """Lines naming each candidate whose interval holds `target` and that could change the answer
    `answer` (the smallest confirmed candidate reaching it): the answer itself, and any smaller one
    below the target (more seeds could lift it over); none when the answer is decided."""
    lines = []
    for row in rows:
        mine = row["trial"] == answer["trial"]
        if holds(row) and within_noise(row, target) and (mine or (row["n_params"] < answer["n_params"] and row["mean"] < target)):
            low, high = interval(row)
            more = max(max_seeds, len(row["seeds"]) + 2)
            side = "the answer" if mine else "smaller, below the target"
            lines.append(f"undecided: trial {row['trial']} ({row['n_params']:,} params, {side}) holds {row['mean']:.2f} ± "
                         f"{row['std']:.2f} % over {len(row['seeds'])} seed(s); its interval {low:.2f}-{high:.2f} % includes the "
                         f"target {target:g} %: more seeds decide it (python -m search confirm --study {study_name} --trial "
                         f"{row['trial']} --max-seeds {more})")
    return lines


def holds(row: dict) -> bool:
    """A candidate can be chosen (best.json, --target-acc) only when none of its runs diverged."""
    return not row.get("diverged") and row["mean"] is not None


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


def target_row(rows: list[dict], target: float) -> tuple[dict | None, dict | None]:
    """(the smallest confirmed candidate whose mean reaches `target`, None) or (None, the one that
    comes closest); a candidate with a diverged run is never chosen."""
    eligible = [r for r in rows if holds(r)]
    reaching = [r for r in eligible if r["mean"] >= target]
    if reaching:
        return min(reaching, key=lambda r: (r["n_params"], -r["mean"])), None
    return None, max(eligible, key=lambda r: r["mean"], default=None)


def budget(row: dict) -> str:
    if row["epochs"] is None:
        return "budget not recorded"
    return f"{row['epochs']} epochs on {row['images']:,} training images"


def format_row(row: dict) -> str:
    text = f"trial {row['trial']} ({row['n_params']:,} params): "
    if row["seeds"]:
        text += (f"{row['mean']:.2f} ± {row['std']:.2f} % mean final validation accuracy over seeds {', '.join(map(str, row['seeds']))}")
    diverged = row.get("diverged", {})
    if diverged:
        text += ("; " if row["seeds"] else "") + "DIVERGED on seed " + ", ".join(f"{s} ({why})" for s, why in diverged.items())
    return text + f" ({budget(row)})"
