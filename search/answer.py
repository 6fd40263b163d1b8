"""What the confirmed seeds say of a target accuracy: the answer (the smallest confirmed
candidate whose mean reaches the target), and whether the seeds decide it. A candidate's mean
is decided when the target lies outside its interval (mean ± two standard errors); the
candidates whose interval holds the target are named, with the command that decides them; the
candidates one more seed could move across it are in question, and the sizes between the
decided ones are where the answer is still open; and a candidate with a diverged run is never
chosen (`holds`). Pure rules over `results.confirmed_rows`, for every reader of them: `export`,
the best trial, `report`, and confirmation's later rounds (search/candidates.py)."""

from __future__ import annotations

import math

SEED_SPREAD = 0.07  # accuracy points: the least seed-to-seed spread assumed (two or three seeds can agree by chance); the
# measured standard deviation of the final validation accuracy over seeds at the export budget is 0.01-0.13, typically 0.07
# (docs/results.md)


def holds(row: dict) -> bool:
    """A candidate can be chosen (best.json, --target-acc) only when none of its runs diverged."""
    return not row.get("diverged") and row["mean"] is not None


def interval(row: dict) -> tuple[float, float]:
    """About 95 % of where a candidate's true mean lies: its mean ± two standard errors (the spread of
    its seeds, at least SEED_SPREAD)."""
    half = 2 * max(row["std"], SEED_SPREAD) / math.sqrt(len(row["seeds"]))
    return row["mean"] - half, row["mean"] + half


def within_noise(row: dict, target: float) -> bool:
    """Whether `target` lies within the candidate's interval: its seeds do not yet say on which side it is."""
    low, high = interval(row)
    return low <= target <= high


def decided_to_reach(row: dict, target: float) -> bool:
    """Whether the candidate's seeds say it reaches `target`: its mean does, and its interval lies above it."""
    return holds(row) and row["mean"] >= target and not within_noise(row, target)


def target_row(rows: list[dict], target: float) -> tuple[dict | None, dict | None]:
    """(the smallest confirmed candidate whose mean reaches `target`, None) or (None, the one that
    comes closest); a candidate with a diverged run is never chosen."""
    eligible = [r for r in rows if holds(r)]
    reaching = [r for r in eligible if r["mean"] >= target]
    if reaching:
        return min(reaching, key=lambda r: (r["n_params"], -r["mean"])), None
    return None, max(eligible, key=lambda r: r["mean"], default=None)


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
            loss = f" (mean final validation loss {row['loss']:.4f})" if row.get("loss") is not None else ""
            lines.append(f"undecided: trial {row['trial']} ({row['n_params']:,} params, {side}) holds {row['mean']:.2f} ± "
                         f"{row['std']:.2f} % over {len(row['seeds'])} seed(s){loss}; its interval {low:.2f}-{high:.2f} % includes the "
                         f"target {target:g} %: more seeds decide it (python -m search confirm --study {study_name} --trial "
                         f"{row['trial']} --max-seeds {more})")
    return lines


def in_question(rows: list[dict], target: float, max_seeds: int) -> list[dict]:
    """The confirmed candidates (smallest first) that one more seed could move across `target`
    and that could still be the answer: within noise of it (`within_noise`), below
    max_seeds, none diverged, and no larger than the smallest candidate already decided to
    reach it (a larger one cannot change "the smallest net that holds the target")."""
    if not target or not max_seeds:
        return []
    limit = min((r["n_params"] for r in rows if decided_to_reach(r, target)), default=math.inf)
    return [r for r in rows if holds(r) and len(r["seeds"]) < max_seeds and within_noise(r, target) and r["n_params"] <= limit]


def open_sizes(rows: list[dict], target: float) -> tuple[float, float] | None:
    """The sizes between which the answer is still open: above the largest candidate decided to fall
    short of `target` that is smaller than the smallest decided to reach it, and below that one;
    None while no candidate is decided to reach it (or without a target)."""
    above = min((r["n_params"] for r in rows if decided_to_reach(r, target)), default=None) if target else None
    if above is None:
        return None
    below = max((r["n_params"] for r in rows if holds(r) and r["mean"] < target and not within_noise(r, target)
                 and r["n_params"] < above), default=0)
    return below, above
