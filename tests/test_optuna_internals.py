"""Optuna's private attributes, used in search/optuna_internals.py alone: this fails at once when
an Optuna release changes them."""

from __future__ import annotations

import optuna

from search.optuna_internals import TrialsView, reseed_tpe, set_trial_user_attr, storage_of


def test_the_private_attributes_this_tool_uses_still_work():
    study = optuna.create_study()
    assert isinstance(storage_of(study), optuna.storages.BaseStorage)
    assert storage_of(study).get_study_id_from_name(study.study_name) == study._study_id
    trial = study.ask()
    frozen = study.trials[trial.number]
    set_trial_user_attr(study, frozen, "reason", "its worker died")
    assert study.trials[trial.number].user_attrs["reason"] == "its worker died"
    study.tell(trial, 1.0)
    # two TPE samplers reseeded alike draw alike, from their random startup sampler and from TPE itself
    draws = []
    for sampler_seed in (1, 2):
        sampler = optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=2)
        seeded = optuna.create_study(sampler=sampler)
        values = []
        for _ in range(4):
            reseed_tpe(sampler, 7)
            t = seeded.ask()
            values.append(t.suggest_float("x", 0.0, 1.0))
            seeded.tell(t, values[-1])
        draws.append(values)
    assert draws[0] == draws[1]


def test_a_trials_view_is_what_tpe_models():
    # TPE reads a study's trials through its private _get_trials: a view that keeps some of them is a study of those alone
    study = optuna.create_study()
    for i in range(12):
        study.enqueue_trial({"kind": "a" if i < 11 else "b", "x": i / 12})
        trial = study.ask()
        trial.suggest_categorical("kind", ["a", "b"])
        study.tell(trial, trial.suggest_float("x", 0.0, 1.0))
    only_b = TrialsView(study, lambda t: t.params["kind"] == "b")
    assert [t.number for t in only_b._get_trials(deepcopy=False, states=None)] == [11] == [t.number for t in only_b.trials]
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=10)
    space = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    number = study.ask().number
    frozen = study.trials[number]  # the trial TPE samples for
    assert sampler.sample_relative(study, frozen, space) != {}  # 12 finished trials: TPE models them
    assert sampler.sample_relative(only_b, frozen, space) == {}  # 1 in the view: still its random start
