"""The few places where this tool reaches into Optuna's private attributes, each for a need its
public API does not meet. They live here alone, so that an Optuna release that changes them
breaks one module, and tests/test_optuna_internals.py says so at once instead of a study
failing hours into a run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage object `study` was opened with (a companion study shares it; the dashboard serves it)."""
    return study._storage


def set_trial_user_attr(study: optuna.Study, trial: optuna.trial.FrozenTrial, key: str, value: Any) -> None:
    """A user attribute on a trial that no live process runs (a dead worker's): Optuna's public
    Trial object exists only inside the process running the trial."""
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def reseed_tpe(sampler: optuna.samplers.TPESampler, seed: int) -> None:
    """Both random states of a TPE sampler (its own and its random sampler's for the startup
    trials) reseeded: Optuna seeds them only when the sampler is made."""
    sampler._rng.rng.seed(seed)
    sampler._random_sampler._rng.rng.seed(seed)


class TrialsView:
    """`study` as a sampler sees it when it holds only the trials `keep` accepts: Optuna's samplers
    read a study's trials through its private `_get_trials`, and offer no public way to model a
    part of them (search/sampler.py: one TPE model per value of the spread parameter)."""

    def __init__(self, study: optuna.Study, keep: Callable[[optuna.trial.FrozenTrial], bool]) -> None:
        self._study = study
        self._keep = keep

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, *args: Any, **kwargs: Any) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self._study._get_trials(*args, **kwargs) if self._keep(t)]

    def get_trials(self, *args: Any, **kwargs: Any) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self._study.get_trials(*args, **kwargs) if self._keep(t)]

    @property
    def trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.get_trials()
