"""Optuna's private attributes, used in search/optuna_internals.py alone: this fails at once when
an Optuna release changes them."""

from __future__ import annotations

import optuna

from search.optuna_internals import reseed_tpe, set_trial_user_attr, storage_of


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
