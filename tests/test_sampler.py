"""The study's sampler (search/sampler.py): a spread parameter's values taken in turn, each with a TPE model of its own."""

from __future__ import annotations

import optuna
import pytest

from search.sampler import StudyTPE, spread_values

BEST_X = {2: 0.1, 3: 0.5, 4: 0.9}  # each value of "stages" has its own best x


def spread_study(n_trials: int) -> optuna.Study:
    study = optuna.create_study(sampler=StudyTPE(0, reseed=True, spread="stages", n_startup_trials=5, multivariate=True))
    study.optimize(lambda t: (t.suggest_float("x", 0.0, 1.0) - BEST_X[t.suggest_int("stages", 2, 4)]) ** 2, n_trials=n_trials)
    return study


def test_a_spread_parameters_values_are_taken_in_turn_each_with_its_own_model():
    study = spread_study(75)
    # trial 0 samples at random (no finished trial yet, so no space to model); from trial 1 on, trial N takes value N mod 3
    assert [t.params["stages"] for t in study.trials[1:]] == [[2, 3, 4][t.number % 3] for t in study.trials[1:]]
    for stages, best in BEST_X.items():
        late = [t.params["x"] for t in study.trials[45:] if t.params["stages"] == stages]
        distance = {other: sum(abs(x - b) for x in late) / len(late) for other, b in BEST_X.items()}
        # each value's model found its own best x (0.10-0.14 away on average, 0.29-0.73 from the others')
        assert distance[stages] < 0.15 and distance[stages] == min(distance.values()), (stages, distance)
    assert [t.params for t in spread_study(20).trials] == [t.params for t in study.trials[:20]]  # the same every time


def test_spread_values_are_an_integer_range_or_choices():
    assert spread_values(optuna.distributions.IntDistribution(2, 4)) == [2, 3, 4]
    assert spread_values(optuna.distributions.CategoricalDistribution(["gap_conv", "conv_gap"])) == ["gap_conv", "conv_gap"]
    with pytest.raises(ValueError, match="an integer or a choice"):
        spread_values(optuna.distributions.FloatDistribution(0.0, 1.0))
