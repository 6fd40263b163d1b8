"""A study in its storage: created from a study file (settings stored, the hand-made model as
its first trial) or resumed with the same settings, its trials left RUNNING by dead workers
reported (or failed), the points it starts with enqueued again when a crash lost them. Its sampler and pruner: search/sampler.py."""

from __future__ import annotations

import time
import warnings
from typing import Any

import optuna

from search.errors import UsageError
from search.sampler import make_pruner
from search.stale import fail_stale, stale_trials
from search.storage import has_heartbeat, mask_password, open_storage
from search.studyfile import OBJECTIVE_EPOCHS, StudySpec, changed_settings, spec_to_dict, stored_spec


def open_study(spec: StudySpec, url: str, firsts: list[tuple[dict[str, Any], dict[str, str]]],
               fail_stale_trials: bool) -> tuple[optuna.Study, bool]:
    """`run`'s study: created or resumed (create_or_resume) in the storage at `url`, its trials left
    RUNNING by dead workers reported (and marked FAIL with `fail_stale_trials`: run --fail-stale), and the
    points it starts with (`firsts`: studyfile.first_points) that a crash lost enqueued again (requeue_lost)."""
    study, created = create_or_resume(spec, open_storage(url, (spec.heartbeat_interval, spec.grace_period)), url, firsts)
    stale = [] if has_heartbeat(url) else stale_trials(study)  # RDB heartbeats re-queue dead workers' trials
    for trial in stale:
        print(f"trial {trial.number} is RUNNING but its worker {trial.user_attrs['worker']} is gone"
              + ("; marking it FAIL" if fail_stale_trials else "; rerun with --fail-stale to mark it FAIL"))
    if stale and fail_stale_trials:
        fail_stale(study, stale)
    for lost in requeue_lost(study, firsts):
        print(f"the enqueued trial {lost!r} was lost to a crash (FAIL); enqueued again")
    return study, created


def create_or_resume(spec: StudySpec, storage: optuna.storages.BaseStorage, url: str,
                     firsts: list[tuple[dict[str, Any], dict[str, str]]]) -> tuple[optuna.Study, bool]:
    """The study named spec.name in `storage`: (study, True) when this call created it, with the
    settings stored and the points it starts with (`firsts`: studyfile.first_points, the
    hand-made reference first) enqueued; (study, False) when it existed with the same
    settings (what may change, such as the trial count, is stored anew; see requeue_lost for
    an enqueued trial that a crash left FAIL)."""
    pruner = make_pruner(spec.pruner)
    try:
        study = optuna.create_study(study_name=spec.name, storage=storage, directions=directions(spec), pruner=pruner)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=spec.name, storage=storage, pruner=pruner)
        deadline = time.monotonic() + 30
        while "spec" not in study.user_attrs and time.monotonic() < deadline:  # its creator, elsewhere, is still writing it
            time.sleep(0.2)
        stored = stored_spec(study) if "spec" in study.user_attrs else None
        changed = ["no settings of this tool stored"] if stored is None else changed_settings(stored, spec)
        if changed:
            raise UsageError(f"study {spec.name!r} in {mask_password(url)} was created from different settings "
                             f"({'; '.join(changed)}); restore the study file, or start a new study with --study NEW_NAME") from None
        if stored != spec:  # `confirm` and `report` read the settings back
            study.set_user_attr("spec", spec_to_dict(spec))
        return study, False
    # The hand-made model is trial 0, the number to beat. The points are enqueued before the spec
    # is stored: workers elsewhere wait for the spec, so none can take a trial number first.
    for point, attrs in firsts:
        study.enqueue_trial(point, user_attrs=attrs)
    study.set_user_attr("objective", f"mean validation accuracy (%) over the last {OBJECTIVE_EPOCHS} epochs"
                        + (", and the parameter count" if spec.pareto else ""))
    with warnings.catch_warnings():  # Optuna marks metric names experimental; the dashboard shows them
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([f"val acc % (mean of last {OBJECTIVE_EPOCHS} epochs)"] + (["params"] if spec.pareto else []))
    study.set_user_attr("spec", spec_to_dict(spec))
    return study, True


def requeue_lost(study: optuna.Study, firsts: list[tuple[dict[str, Any], dict[str, str]]]) -> list[str]:
    """Enqueue again the points a study starts with (`firsts`: studyfile.first_points) whose every
    trial a crash left FAIL (a journal file has no heartbeat to re-queue it); returns what was enqueued. A
    study made before trials carried "enqueued" knows its reference as trial 0 and its start
    configs by "start"."""
    trials = study.get_trials(deepcopy=False)
    requeued = []
    for point, attrs in firsts:
        mine = [t for t in trials if t.user_attrs.get("enqueued", t.user_attrs.get("start")) == attrs["enqueued"]
                or (attrs["enqueued"] == "reference" and t.number == 0 and "enqueued" not in t.user_attrs)]
        if mine and all(t.state == optuna.trial.TrialState.FAIL for t in mine):
            study.enqueue_trial(point, user_attrs=attrs)
            requeued.append(attrs["enqueued"])
    return requeued


def directions(spec: StudySpec) -> list[str]:
    return ["maximize", "minimize"] if spec.pareto else ["maximize"]
