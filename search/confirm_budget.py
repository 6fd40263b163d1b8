"""The time budget of a confirmation round: what each run of a candidate is expected to take
(its longest finished run, else its last search rung scaled to the export budget), what a round
of runs takes on the workers, and how many of a round's candidates, in its order, fit the
seconds left."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from search.companion import confirmation_seeds, run_key
from search.studyfile import OBJECTIVE_EPOCHS, StudySpec, Training
from search.train import ELASTIC_DRAWS


def expected_run_seconds(study: optuna.Study, training: Training, companion: optuna.Study, number: int, images: int) -> float | None:
    """What one confirmation run of candidate `number` on `images` training images is expected to
    take: its longest finished run at that budget; before any, its last search rung's training
    seconds scaled by the images and epochs, plus its evaluation seconds (the same 3 epochs are
    scored) and as many again for each elastic draw the final model is scored on; None when neither
    was recorded."""
    runs = [t.user_attrs.get("seconds", 0.0) for t in companion.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("candidate") == number and t.user_attrs.get("budget") == {"epochs": training.export_epochs, "images": images}]
    if runs:
        return max(runs)
    rung = (study.get_trials(deepcopy=False)[number].user_attrs.get("rungs") or [{}])[-1]
    if "seconds" not in rung:
        return None
    trained = rung.get("train_seconds", rung["seconds"])  # (a rung recorded before its training seconds were: all of it)
    evaluations = (OBJECTIVE_EPOCHS + ELASTIC_DRAWS) / OBJECTIVE_EPOCHS
    return trained * (images / rung["images"]) * (training.export_epochs / training.epochs) + (rung["seconds"] - trained) * evaluations


def runs_to_train(study: optuna.Study, spec: StudySpec, companion: optuna.Study, number: int, count: int, images: int) -> int:
    """How many runs bringing candidate `number` to `count` seeds at `images` training images would
    train: the seeds planned (this count's and any earlier plan's at that budget) without a
    result (COMPLETE, or diverged) in `companion`."""
    export_epochs = spec.training.export_epochs
    earlier = study.user_attrs.get("confirm_plans", {}).get(str(number), {})
    planned = set(confirmation_seeds(spec, count)) | (set(earlier.get("seeds", [])) if earlier.get("images") == images else set())
    done = {run_key(t.user_attrs) for t in companion.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            if t.state == TrialState.COMPLETE or "diverged" in t.user_attrs}
    return sum((number, seed, export_epochs, images) not in done for seed in planned)


def round_seconds(study: optuna.Study, spec: StudySpec, companion: optuna.Study, wanted: dict[int, int], images: int, workers: int) -> float:
    """What a round that brings each candidate of `wanted` (trial number: seed count) to its seed
    count is expected to take on `workers` processes: its runs in the round's order, each taken by
    the first process free (as the workers take waiting runs); a run of unknown length is taken
    as the longest known one."""
    known = {number: expected_run_seconds(study, spec.training, companion, number, images) for number in wanted}
    longest = max((s for s in known.values() if s is not None), default=0.0)
    free = [0.0] * max(workers, 1)
    for number, count in wanted.items():
        for _ in range(runs_to_train(study, spec, companion, number, count, images)):
            first = free.index(min(free))
            free[first] += known[number] if known[number] is not None else longest
    return max(free)


def fitting_round(study: optuna.Study, spec: StudySpec, companion: optuna.Study, wanted: dict[int, int], images: int, workers: int,
                  seconds: float) -> dict[int, int]:
    """The first candidates of `wanted`, in its order, whose round is expected to end within
    `seconds`, as many as fit."""
    for count in range(len(wanted), 0, -1):
        first = dict(list(wanted.items())[:count])
        if round_seconds(study, spec, companion, first, images, workers) <= seconds:
            return first
    return {}
