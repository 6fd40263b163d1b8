"""Which trials confirmation takes: the first candidates of a study, then, round by round, the
candidates one more seed could move across the target and the unconfirmed trials whose size
lies where the answer is still open, and, with time left and nothing in question, the region's
other trials smaller than the answer; with [confirm] near, only trials near the target, with
[confirm] near_loss only those whose last-rung loss is near the region's lowest (and, for the
time left, those first). Reads
trials and confirmed rows; trains nothing."""

from __future__ import annotations

import math

import optuna
from optuna.trial import TrialState

from search.answer import ANSWER_SEEDS, Level, answer_seeds_wanted, in_question, open_sizes, target_row
from search.pareto import promotion_order, rank_score
from search.results import in_region
from search.studyfile import Confirm


def near_target(trials: list[optuna.trial.FrozenTrial], level: Level, near: float,
                near_loss: float = 0.0) -> list[optuna.trial.FrozenTrial]:
    """Those of these COMPLETE Pareto trials (a region) whose result at the last rung is at most `near` points
    under `level` ([confirm] near, the answer's level, an accuracy), and whose last-rung loss is at most
    `near_loss` times the lowest of them ([confirm] near_loss); all of them without either: a trial
    further out does not reach the answer's level at the export budget, by the gains measured from the
    last rung to the export budget (docs/results.md, "Confirmation near the target", "A band on the loss")."""
    if near_loss and trials:
        lowest = min(last_rung_loss(t) for t in trials)
        trials = [t for t in trials if last_rung_loss(t) <= near_loss * lowest]
    if not (level and near and level.measure == "acc"):  # (a loss level has no band in points: the study file refuses `near` with it)
        return trials
    return [t for t in trials if t.values[0] >= level.value - near]


def last_rung_loss(trial: optuna.trial.FrozenTrial) -> float:
    """The validation loss of a COMPLETE Pareto trial's last rung result (its record: search/halving.py)."""
    return trial.user_attrs["rungs"][-1]["val_loss"]


def in_promotion_order(trials: list[optuna.trial.FrozenTrial], rank: str) -> list[optuna.trial.FrozenTrial]:
    """These COMPLETE Pareto trials in search/pareto.py's promotion order of their last rung's results,
    ranked as [fidelity] rank says (`rank`): by "accuracy", the trial's first value, which is its last
    rung's `val_acc`; by "loss", that rung's recorded loss."""
    scores = [t.values[0] if rank == "accuracy" else rank_score(t.user_attrs["rungs"][-1], rank) for t in trials]
    return [trials[i] for i in promotion_order([(s, t.user_attrs["n_params"]) for s, t in zip(scores, trials)])]


def candidates(study: optuna.Study, top: int, floor: float, level: Level = Level(0.0), near: float = 0.0,
               rank: str = "accuracy", near_loss: float = 0.0) -> list[optuna.trial.FrozenTrial]:
    """`top` trials at most, chosen by one rule for every trial (a start config's trial too), in
    the order confirmation takes them: an accuracy study's best, the best first; in a Pareto
    study, the trials in the region (`floor`: [region] floor; docs/design.md) in the order successive halving promotes
    them (search/pareto.py): front by front, each front's two ends and then the points that
    spread it along the size axis, so that confirmation answers "how small still holds" and not
    only "how accurate" (`rank`: [fidelity] rank). Which of them are near the target shows at the export budget: the later
    rounds go there (`in_question`, `near_the_answer`). With `near` ([confirm] near) only the
    trials of the region near `level` are taken (`near_target`), or, when none is, its most
    accurate one, so that the answer can say how far the closest falls short; with `near_loss` ([confirm]
    near_loss) only those whose last-rung loss lies near the region's lowest."""
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(study.directions) == 1:
        return sorted(finished, key=lambda t: -t.values[0])[:top]
    region = near_target(in_region(study, finished, floor), level, 0.0, near_loss)  # (the loss band first: the fallback lies in it)
    band = near_target(region, level, near) or sorted(region, key=lambda t: (-t.values[0], t.values[1]))[:1]  # none near: the closest
    return in_promotion_order(band, rank)[:top]


def near_the_answer(study: optuna.Study, rows: list[dict], sizes: tuple[float, float] | None, level: Level, floor: float,
                    near: float = 0.0, rank: str = "accuracy", near_loss: float = 0.0) -> list[optuna.trial.FrozenTrial]:
    """The COMPLETE trials of a Pareto study's region, not yet confirmed by `rows`, whose size lies
    where the answer is still open (`sizes`: answer.open_sizes of `rows`: above the largest
    candidate decided to fall short of `level`, below the smallest decided to reach it); in
    promotion order. None while no candidate is decided to reach the target (`sizes` None: the
    answer is "none yet", and its seeds decide it), and none in an accuracy study; with `near`,
    only those near the target, with `near_loss` those near the region's lowest loss (`near_target`)."""
    if sizes is None or len(study.directions) == 1:
        return []
    return unconfirmed_between(study, rows, level, floor, near, *sizes, rank=rank, near_loss=near_loss)


def left_to_confirm(study: optuna.Study, rows: list[dict], answer: dict | None, level: Level, floor: float,
                    near: float = 0.0, rank: str = "accuracy", near_loss: float = 0.0) -> list[optuna.trial.FrozenTrial]:
    """The COMPLETE trials of a Pareto study's region not yet confirmed by `rows` and smaller than
    `answer` (answer.target_row of `rows`: the smallest candidate whose mean reaches `level`, as
    `export` chooses; of any size while there is none), in promotion order: where confirmation's time goes once no candidate is
    in question (a larger trial cannot change the answer). Unlike `near_the_answer` it does not
    stop at a smaller candidate decided to fall short: across shapes, size does not order accuracy,
    and the last rung ranks nets within 0.3 points of each other little better than chance (the
    seed-1 run of 42f70bb confirmed five nets at 98.95-99.06 % and left five smaller or as small
    ones unconfirmed that hold 99.07-99.22 %: docs/results.md, "Time left to the region's other trials").
    With `near`, only those near the target (`near_target`); with `near_loss`, those near the region's lowest loss
    first, then the rest of them by their last-rung loss, the lowest first: the band orders time that would otherwise go
    unused, it does not leave it unused (el-s0 left 5 of its 23 minutes while its only two COMPLETE nets of <= 5,000
    params lay at 1.44-1.45 x, just outside 1.4: docs/results.md, "The pair with the answer read on the elastic loss").
    None in an accuracy study."""
    if len(study.directions) == 1:
        return []
    above = answer["n_params"] if answer else math.inf
    region = in_region(study, study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), floor)  # read once: both lists agree
    band = {t.number for t in near_target(region, level, near, near_loss)}  # (without near_loss: all of near_target's)
    confirmed = {r["trial"] for r in rows}
    left = [t for t in near_target(region, level, near) if t.number not in confirmed and t.user_attrs["n_params"] < above]
    return (in_promotion_order([t for t in left if t.number in band], rank)
            + sorted((t for t in left if t.number not in band), key=last_rung_loss))


def unconfirmed_between(study: optuna.Study, rows: list[dict], level: Level, floor: float, near: float, below: float,
                        above: float, rank: str = "accuracy", near_loss: float = 0.0) -> list[optuna.trial.FrozenTrial]:
    """The COMPLETE trials of the region (within the bands of `near_target`) that no row confirms, of more than
    `below` and fewer than `above` parameters, in promotion order."""
    confirmed = {r["trial"] for r in rows}
    region = [t for t in near_target(in_region(study, study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), floor), level, near, near_loss)
              if t.number not in confirmed and below < t.user_attrs["n_params"] < above]
    return in_promotion_order(region, rank)


def first_round(study: optuna.Study, settings: Confirm, level: Level, floor: float,
                rank: str = "accuracy") -> tuple[list[optuna.trial.FrozenTrial], str | None]:
    """The candidates of confirmation's first round (`candidates`), and, in a Pareto study with
    [confirm] near or near_loss, a line for each band saying which trials it took (None without either)."""
    chosen = candidates(study, settings.top, floor, level, settings.near, rank, settings.near_loss)
    if not chosen or len(study.directions) == 1:
        return chosen, None
    lines = []
    if settings.near_loss:
        listed = ", ".join(f"trial {t.number} ({last_rung_loss(t):.4f})" for t in chosen)
        lines.append(f"candidates: the region's trials whose last-rung loss is at most {settings.near_loss:g} times its lowest "
                     f"([confirm] near_loss): {listed}")
    if settings.near and level and level.measure == "acc":
        band = f"at most {settings.near:g} points under the target ({level.value:g} %) at the last rung ([confirm] near)"
        listed = ", ".join(f"trial {t.number} ({t.values[0]:.2f} %)" for t in chosen)
        lines.append(f"candidates: the region's trials {band}: {listed}" if near_target(chosen, level, settings.near) else
                     f"candidates: none of the region's trials is {band}; its most accurate only: {listed}")
    return chosen, "\n".join(lines) or None


def next_round(study: optuna.Study, rows: list[dict], settings: Confirm, level: Level, floor: float, skip: set[int],
               only: set[int] | None, workers: int, timed: bool, rank: str = "accuracy") -> tuple[dict[int, int], str | None]:
    """What confirmation's next round takes (trial number: seed count), leaving out the trials in
    `skip` (another process trains them), and a line to say why when it is the time left's
    choice: one more seed for each candidate of `rows` in question (`in_question`, the smallest
    first; with `only`, the trials the user chose (`confirm --trial`), those of them alone);
    unless the user chose the trials, the seeds the answer still lacks to stand on
    ANSWER_SEEDS (`answer_seeds_wanted`, all in one round) and the first seeds of the region's unconfirmed trials
    where the answer is still open (`near_the_answer`); and when nothing else is wanted and the
    round is `timed`, the region's other trials smaller than the answer (`left_to_confirm`), one
    per worker a round, so that one that comes out near the target gets its seeds in the next
    round, before the others."""
    # what the seeds say of the target, read once (search/answer.py): who is in question, where the answer is open, the answer
    in_doubt, sizes = in_question(rows, level, settings.max_seeds), open_sizes(rows, level)
    answer = target_row(rows, level)[0] if level else None
    wanted = {row["trial"]: len(row["planned_seeds"]) + 1 for row in in_doubt
              if row["trial"] not in skip and (only is None or row["trial"] in only)}
    if only is not None:  # (an explicit list of trials is all the user asked for)
        return wanted, None
    why = None
    if (count := answer_seeds_wanted(answer, settings.max_seeds)) and answer["trial"] not in skip:  # an answer stands on ANSWER_SEEDS
        wanted[answer["trial"]] = max(wanted.get(answer["trial"], 0), count)
        why = f"the answer, trial {answer['trial']} ({answer['n_params']:,} params), on {count} seeds: an answer stands on {ANSWER_SEEDS}"
    wanted |= {t.number: settings.seeds for t in near_the_answer(study, rows, sizes, level, floor, settings.near, rank, settings.near_loss)
               if t.number not in wanted and t.number not in skip}
    if wanted or not timed:
        return wanted, why
    unconfirmed = [t for t in left_to_confirm(study, rows, answer, level, floor, settings.near, rank, settings.near_loss)
                   if t.number not in skip]
    wanted = {t.number: settings.seeds for t in unconfirmed[:max(workers, 1)]}
    if not wanted:
        return wanted, None
    order = (f"those within [confirm] near_loss ({settings.near_loss:g} x the lowest) first, in promotion order, then the others by "
             f"their last-rung loss" if settings.near_loss else "in promotion order")
    return wanted, (f"nothing in question and time left: {len(wanted)} of the region's {len(unconfirmed)} unconfirmed trial(s) "
                    f"smaller than the answer, {order} (one per worker a round)")
