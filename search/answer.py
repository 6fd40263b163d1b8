"""What the confirmed seeds say of the level the answer is read at: the answer (the smallest
confirmed candidate whose mean reaches it), and whether the seeds decide it. The level is a
mean final validation accuracy (at least), or a mean final validation loss, clean or under elastic
distortion (at most): `Level`. A
candidate's mean is decided when the level lies outside its interval (mean ± two standard
errors); the candidates whose interval holds the level are named, with the command that decides
them, and so is an answer on fewer than ANSWER_SEEDS seeds (at most max_seeds); the candidates
one more seed could move across it are in question, and the sizes between the decided ones are
where the answer is still open; and a candidate with a diverged run is
never chosen (`holds`). Pure rules over `results.confirmed_rows`, for every reader of them:
`export`, the best trial, `report`, and confirmation's later rounds (search/candidates.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

SEED_SPREAD = 0.07  # accuracy points: the least seed-to-seed spread assumed (two or three seeds can agree by chance); the
# measured standard deviation of the final validation accuracy over seeds at the export budget is 0.01-0.13, typically 0.07
# (docs/results.md)
LOSS_SPREAD = 0.0011  # the same for the final validation loss: the median standard deviation over seeds of the 26 candidates
# with two or more seeds in the eight runs of docs/results.md, "Found or chosen" (quartiles 0.0006 and 0.0015)
ANSWER_SEEDS = 3  # the seeds an answer stands on: while its time lasts, confirmation brings the answer to this many (at most
# max_seeds), and export names an answer on fewer. One seed far from the level is "decided" by the interval alone: fc-s0's
# answer was, at 0.0225 on one seed, with 10 of the confirmation's 23 minutes unused (docs/results.md, "An answer on three seeds")
ELASTIC_LOSS_SPREAD = 0.0009  # the same for the validation loss under elastic distortion: LOSS_SPREAD times the ratio of the
# two spreads measured on the same runs, 0.00058 to 0.00074 (seeds 1 and 2 of 11 small nets, docs/results.md, "Its seed-to-seed spread")
MAX_LOSS_LEVEL = 2.3  # a mean cross-entropy above ln 10 (2.30) is worse than guessing among ten classes: a level over it is a typo


# measure: (the confirmed row's mean, its standard deviation over seeds, the least spread assumed, what it is)
MEASURES = {"acc": ("mean", "std", SEED_SPREAD, "validation accuracy"),
            "loss": ("loss", "loss_std", LOSS_SPREAD, "validation loss"),
            "elastic_loss": ("elastic_loss", "elastic_loss_std", ELASTIC_LOSS_SPREAD, "elastic validation loss")}


@dataclass(frozen=True)
class Level:
    """The level the answer is read at: a mean final validation accuracy (%) of at least `value`
    ("acc"), or a mean final validation loss of at most `value`, on the clean images ("loss") or
    under elastic distortion ("elastic_loss", search/train.py: evaluate_elastic); 0: none."""
    value: float
    measure: str = "acc"

    def __post_init__(self) -> None:
        if self.measure not in MEASURES:
            raise ValueError(f"a level's measure is one of {', '.join(map(repr, MEASURES))}, not {self.measure!r}")

    def __bool__(self) -> bool:
        return bool(self.value)

    def __str__(self) -> str:
        return f"{self.value:g} % validation accuracy" if self.measure == "acc" else f"{MEASURES[self.measure][3]} {self.value:g}"

    def of(self, row: dict) -> float | None:
        """The candidate's mean of this level's measure (None: not recorded, as in a study confirmed before it was)."""
        return row.get(MEASURES[self.measure][0])

    def std_of(self, row: dict) -> float:
        """The standard deviation over the candidate's seeds of this level's measure (0 when not recorded)."""
        return row.get(MEASURES[self.measure][1]) or 0.0

    @property
    def least_spread(self) -> float:
        """The least seed-to-seed spread assumed for this measure (SEED_SPREAD, LOSS_SPREAD, ELASTIC_LOSS_SPREAD)."""
        return MEASURES[self.measure][2]

    def reached_by(self, mean: float) -> bool:
        return mean >= self.value if self.measure == "acc" else mean <= self.value

    def better_first(self, row: dict) -> float:
        """A sort key that puts the candidate with the better mean of this measure first."""
        return -self.of(row) if self.measure == "acc" else self.of(row)

    def file_name(self) -> str:
        return f"target-{self.value:g}.json" if self.measure == "acc" else f"target-{self.measure.replace('_', '-')}-{self.value:g}.json"


def holds(row: dict) -> bool:
    """A candidate can be chosen (best.json, the answer to a level) only when none of its runs diverged."""
    return not row.get("diverged") and row["mean"] is not None


def interval(row: dict, level: Level) -> tuple[float, float]:
    """About 95 % of where a candidate's true mean of `level`'s measure lies: its mean ± two standard
    errors (the spread of its seeds, at least the measure's least spread: SEED_SPREAD, LOSS_SPREAD, ELASTIC_LOSS_SPREAD)."""
    mean = level.of(row)
    assert mean is not None, "a candidate without this level's measure has no interval: ask `within_noise`"
    spread = max(level.std_of(row), level.least_spread)
    half = 2 * spread / math.sqrt(len(row["seeds"]))
    return mean - half, mean + half


def interval_text(row: dict, level: Level) -> str:
    """The candidate's interval as the lines that name it print it: "LO-HI %" for an accuracy, "LO-HI" for a loss."""
    low, high = interval(row, level)
    return f"{low:.2f}-{high:.2f} %" if level.measure == "acc" else f"{low:.4f}-{high:.4f}"


def within_noise(row: dict, level: Level) -> bool:
    """Whether `level` lies within the candidate's interval: its seeds do not yet say on which side it is."""
    if level.of(row) is None:
        return False
    low, high = interval(row, level)
    return low <= level.value <= high


def reaches(row: dict, level: Level) -> bool:
    """Whether the candidate can be chosen and its mean reaches `level`."""
    return holds(row) and level.of(row) is not None and level.reached_by(level.of(row))


def decided_to_reach(row: dict, level: Level) -> bool:
    """Whether the candidate's seeds say it reaches `level`: its mean does, and its interval lies beyond it."""
    return reaches(row, level) and not within_noise(row, level)


def decided_to_miss(row: dict, level: Level) -> bool:
    """Whether the candidate's seeds say it falls short of `level`."""
    return holds(row) and level.of(row) is not None and not level.reached_by(level.of(row)) and not within_noise(row, level)


def target_row(rows: list[dict], level: Level) -> tuple[dict | None, dict | None]:
    """(the smallest confirmed candidate whose mean reaches `level`, None) or (None, the one that
    comes closest); a candidate with a diverged run (or without the level's measure) is never chosen."""
    reaching = [r for r in rows if reaches(r, level)]
    if reaching:
        return min(reaching, key=lambda r: (r["n_params"], level.better_first(r))), None
    eligible = [r for r in rows if holds(r) and level.of(r) is not None]
    return None, min(eligible, key=level.better_first, default=None)


def undecided_lines(rows: list[dict], answer: dict, level: Level, study_name: str, max_seeds: int) -> list[str]:
    """Lines naming each candidate whose interval holds `level` and that could change the answer
    `answer` (the smallest confirmed candidate reaching it): the answer itself, and any smaller one
    short of the level (more seeds could carry it over); and the answer when it stands on fewer than
    ANSWER_SEEDS seeds (at most `max_seeds`, which confirmation brings it to while its time lasts); none
    when the answer is decided on enough seeds."""
    lines = []
    for row in rows:
        mine = row["trial"] == answer["trial"]
        if within_noise(row, level) and holds(row) and (mine or (row["n_params"] < answer["n_params"] and not reaches(row, level))):
            more = max(max_seeds, len(row["seeds"]) + 2)
            side = "the answer" if mine else "smaller, short of the target"
            if level.measure == "acc":
                held = f"{row['mean']:.2f} ± {row['std']:.2f} %"
                other = f" (mean final validation loss {row['loss']:.4f})" if row.get("loss") is not None else ""
            else:
                held = f"{level.of(row):.4f} ± {level.std_of(row):.4f}"
                other = f" (mean final validation accuracy {row['mean']:.2f} %)"
            lines.append(f"undecided: trial {row['trial']} ({row['n_params']:,} params, {side}) holds {held} over {len(row['seeds'])} "
                         f"seed(s){other}; its interval {interval_text(row, level)} includes the target ({level}): more seeds decide it "
                         f"(python -m search confirm --study {study_name} --trial {row['trial']} --max-seeds {more})")
        elif mine and len(row["seeds"]) < (wanted := answer_seed_count(max_seeds)):  # (confirmation's time ran out before them)
            lines.append(f"few seeds: trial {row['trial']} ({row['n_params']:,} params, the answer) stands on {len(row['seeds'])} seed(s), "
                         f"an answer on {wanted} (python -m search confirm --study {study_name} --trial {row['trial']} --seeds {wanted})")
    return lines


def answer_seed_count(max_seeds: int) -> int:
    """The seeds an answer stands on in a study of `max_seeds`: ANSWER_SEEDS, at most max_seeds (0: no seeds are added)."""
    return min(ANSWER_SEEDS, max_seeds)


def answer_seeds_wanted(answer: dict | None, max_seeds: int) -> int:
    """The seed count confirmation brings `answer` (the smallest candidate reaching the level: `target_row`)
    to (`answer_seed_count`) when fewer are planned for it; 0 when none are wanted."""
    wanted = answer_seed_count(max_seeds)
    return wanted if answer is not None and len(answer["planned_seeds"]) < wanted else 0


@dataclass(frozen=True)
class Reading:
    """What the confirmed candidates say at a level, read once for `export` to print: the answer
    (None: none reaches the level), the closest when none does, the lines to print beside the
    answer (its undecided neighbours, the candidates the level cannot read), and, when none
    reaches it, the hint that more seeds could still decide the closest ("" otherwise)."""

    answer: dict | None
    closest: dict | None
    lines: list[str]
    hint: str


def read_answer(rows: list[dict], level: Level, study_name: str, max_seeds: int) -> Reading:
    """The answer to `level` in the confirmed candidates `rows` (`target_row`), with what must be said beside it."""
    answer, closest = target_row(rows, level)
    lines = undecided_lines(rows, answer, level, study_name, max_seeds) if answer else []
    if missing := unread(rows, answer, level):
        lines.append(f"not read at {level}: trial(s) {', '.join(str(r['trial']) for r in missing)} (confirmed before the "
                     f"{MEASURES[level.measure][3]} was recorded; a new study confirms them on it)")
    hint = (f"; undecided: its interval {interval_text(closest, level)} includes the target (python -m search confirm --study {study_name} "
            f"--trial {closest['trial']} --max-seeds {len(closest['seeds']) + 2})") if closest and within_noise(closest, level) else ""
    return Reading(answer, closest, lines, hint)


def unread(rows: list[dict], answer: dict | None, level: Level) -> list[dict]:
    """The candidates that can be chosen but have no mean of `level`'s measure (a study confirmed before
    the level's measure was recorded), smaller than `answer` (any size without one): the level cannot
    read them, and their earlier runs are reused, so only a new study confirms them on it."""
    limit = answer["n_params"] if answer else math.inf
    return [r for r in rows if holds(r) and level.of(r) is None and r["n_params"] < limit]


def in_question(rows: list[dict], level: Level, max_seeds: int) -> list[dict]:
    """The confirmed candidates (smallest first) that one more seed could move across `level`
    and that could still be the answer: within noise of it (`within_noise`), below
    max_seeds, none diverged, and no larger than the smallest candidate already decided to
    reach it (a larger one cannot change "the smallest net that holds the target")."""
    if not level or not max_seeds:
        return []
    limit = min((r["n_params"] for r in rows if decided_to_reach(r, level)), default=math.inf)
    return [r for r in rows if holds(r) and len(r["seeds"]) < max_seeds and within_noise(r, level) and r["n_params"] <= limit]


def open_sizes(rows: list[dict], level: Level) -> tuple[float, float] | None:
    """The sizes between which the answer is still open: above the largest candidate decided to fall
    short of `level` that is smaller than the smallest decided to reach it, and below that one;
    None while no candidate is decided to reach it (or without a level)."""
    above = min((r["n_params"] for r in rows if decided_to_reach(r, level)), default=None) if level else None
    if above is None:
        return None
    below = max((r["n_params"] for r in rows if decided_to_miss(r, level) and r["n_params"] < above), default=0)
    return below, above
