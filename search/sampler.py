"""How a study chooses and stops its trials: TPE seeded from the study, never from the process
(so the same command on the same study goes on the same way, and processes running at once
propose different points), and an accuracy study's median pruner."""

from __future__ import annotations

import hashlib
from typing import Any

import optuna

from search.optuna_internals import TrialsView, reseed_tpe
from search.studyfile import Pruner, StudySpec, spread_values


def trial_seed(study_seed: int, number: int) -> int:
    """The random seed of trial `number` of a study seeded `study_seed`."""
    return int(hashlib.sha256(f"{study_seed}:{number}".encode()).hexdigest()[:8], 16)


class StudyTPE(optuna.samplers.TPESampler):
    """Multivariate TPE as a study runs it.

    `reseed`: its random draws for trial N come from (the study's seed, N). No two trials share a
    number, so processes that start trials at the same moment (several `run` commands on one
    storage, here or on other machines) never share a random state, and the same study resumed
    samples the same way every time.

    `spread`: a parameter whose values the trials take in turn (trial N the (N mod k)-th of its k
    values), each value with a TPE model of its own, made of the trials that share it, and its
    own random start of `n_startup_trials` (so k of them in all). One model of all trials kept
    92-99 % of a run's trained trials to one stage count, the one its first proposals had
    (docs/results.md, "A young rung and the sampler's start"; with the spread: "One model per
    stage count"); the rungs, not the sampler, then decide how much training each value gets.
    What TPE samples one parameter at a time (a trial that starts before any has finished, a
    parameter outside the relative search space) still comes from all trials. The value comes from the trial's number alone: a trial enqueued with
    another value keeps its own, and its other parameters come from the turn's model."""

    def __init__(self, study_seed: int, reseed: bool, spread: str, n_startup_trials: int = 10, **kwargs: Any) -> None:
        super().__init__(seed=study_seed, n_startup_trials=n_startup_trials, **kwargs)
        self._study_seed = study_seed
        self._reseed = reseed
        self._spread = spread
        self._startup_trials = n_startup_trials

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self._reseed:
            reseed_tpe(self, trial_seed(self._study_seed, trial.number))  # Optuna offers no public way to seed them per trial
        super().before_trial(study, trial)

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        search_space: dict[str, optuna.distributions.BaseDistribution]) -> dict[str, Any]:
        if self._spread not in search_space:
            return super().sample_relative(study, trial, search_space)
        values = spread_values(search_space[self._spread])
        value = values[trial.number % len(values)]
        rest = {name: d for name, d in search_space.items() if name != self._spread}
        # TPE reads the view as a study of this value's trials alone (it uses only what TrialsView filters or passes on)
        view = TrialsView(study, lambda t: t.params.get(self._spread) == value)
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        if len(view.get_trials(deepcopy=False, states=states)) < self._startup_trials:  # this value's random start
            draw = optuna.samplers.RandomSampler(seed=trial_seed(self._study_seed, trial.number))
            params = {name: draw.sample_independent(study, trial, name, d) for name, d in rest.items()}
        else:
            params = super().sample_relative(view, trial, rest)
        return params | {self._spread: value}


def seed_sampler(study: optuna.Study, spec: StudySpec, url: str, first: bool, index: int = 0) -> None:
    """TPE, seeded from the study, never from the process: the process that created the study
    uses the study's seed as TPE's seed (a spread value's random start is drawn from the trial's
    number in every process); every later start (a resumed run, worker
    `index` of several, a run on another machine) reseeds TPE at each trial from the study's
    seed and the trial's number (StudyTPE's `reseed`). So the same command on the same study
    continues the same way, while processes running at once propose different points, even
    when they start at the same moment and see the same trials."""
    # multivariate: Optuna 5's TPE is multivariate by default for one objective only, independent
    # for two; the blocks family's fixed-length encoding (no conditional parameters) lets it model
    # every parameter jointly in both. group=True splits the space by the parameters that occur
    # together, which the fixed-length encoding makes one group. constant_liar (Optuna's default) counts other processes' running trials as bad ones and
    # re-reads every trial for every parameter, most of a refused trial's cost. Only a journal
    # file or an RDB server lets several processes run trials at once; on SQLite this process's
    # own trial is the only one running, so the liar would change nothing there.
    options = {"multivariate": True, "group": spec.tpe_group, "constant_liar": not url.startswith("sqlite"),
               "n_startup_trials": spec.tpe_startup_trials}
    study.sampler = StudyTPE(spec.seed, reseed=not (first and index == 0), spread=spec.tpe_spread, **options)


def make_pruner(pruner: Pruner) -> optuna.pruners.BasePruner:
    """Median pruning after `startup_trials` completed trials (Optuna's MedianPruner counts COMPLETE ones)."""
    if pruner.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=pruner.startup_trials, n_warmup_steps=0)
    return optuna.pruners.NopPruner()
