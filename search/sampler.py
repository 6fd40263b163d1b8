"""How a study chooses and stops its trials: TPE seeded from the study, never from the process
(so the same command on the same study goes on the same way, and processes running at once
propose different points), and an accuracy study's median pruner."""

from __future__ import annotations

import hashlib
from typing import Any

import optuna

from search.optuna_internals import reseed_tpe
from search.studyfile import Pruner, StudySpec


class TrialSeededTPE(optuna.samplers.TPESampler):
    """TPE whose random draws for trial N come from (the study's seed, N). No two trials share a
    number, so processes that start trials at the same moment (several `run` commands on one
    storage, here or on other machines) never share a random state, and the same study resumed
    samples the same way every time."""

    def __init__(self, study_seed: int, **kwargs: Any) -> None:
        super().__init__(seed=study_seed, **kwargs)
        self._study_seed = study_seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        seed = int(hashlib.sha256(f"{self._study_seed}:{trial.number}".encode()).hexdigest()[:8], 16)
        reseed_tpe(self, seed)  # Optuna offers no public way to seed them per trial
        super().before_trial(study, trial)


def seed_sampler(study: optuna.Study, spec: StudySpec, url: str, first: bool, index: int = 0) -> None:
    """TPE, seeded from the study, never from the process: the process that created the study
    uses the study's seed as a plain TPESampler seed; every later start (a resumed run, worker
    `index` of several, a run on another machine) reseeds TPE at each trial from the study's
    seed and the trial's number (TrialSeededTPE). So the same command on the same study
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
    if first and index == 0:
        study.sampler = optuna.samplers.TPESampler(seed=spec.seed, **options)
    else:
        study.sampler = TrialSeededTPE(spec.seed, **options)


def make_pruner(pruner: Pruner) -> optuna.pruners.BasePruner:
    """Median pruning after `startup_trials` completed trials (Optuna's MedianPruner counts COMPLETE ones)."""
    if pruner.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=pruner.startup_trials, n_warmup_steps=0)
    return optuna.pruners.NopPruner()
