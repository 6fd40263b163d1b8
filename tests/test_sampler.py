"""The study's sampler (search/sampler.py): a spread parameter's values taken in turn, each with a TPE model of its own."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from search.sampler import StudyTPE
from search.studyfile import load_study_spec, spread_values
from space.config import ConfigError

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
    assert [t.params for t in spread_study(40).trials] == [t.params for t in study.trials[:40]]  # the same every time


def test_spread_values_are_an_integer_range_or_choices():
    assert spread_values(optuna.distributions.IntDistribution(2, 4)) == [2, 3, 4]
    assert spread_values(optuna.distributions.CategoricalDistribution(["gap_conv", "conv_gap"])) == ["gap_conv", "conv_gap"]
    assert spread_values(optuna.distributions.FloatDistribution(0.0, 1.0)) == []  # no spread parameter


def test_two_objectives_constraints_and_a_running_trial_of_another_value():
    # the shipped file's path: Pareto directions, constraints, the constant liar, one model per value, the first process unseeded per trial
    sampler = StudyTPE(1, reseed=False, spread="stages", n_startup_trials=3, multivariate=True, group=True, constant_liar=True)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    running = None
    for n in range(40):
        trial = study.ask()
        stages, x = trial.suggest_int("stages", 2, 4), trial.suggest_float("x", 0.0, 1.0)
        trial.set_constraint("over", 1.0 if x > 0.9 else 0.0)
        if n == 20:
            running = trial  # left running: the liar counts it in its own value's model only
            continue
        study.tell(trial, [x - abs(x - BEST_X[stages]), x])
    assert running is not None and study.trials[20].state == optuna.trial.TrialState.RUNNING
    assert [t.params["stages"] for t in study.trials[1:]] == [[2, 3, 4][t.number % 3] for t in study.trials[1:]]


def test_without_the_parameter_in_the_space_it_is_plain_tpe():
    spread = optuna.create_study(sampler=StudyTPE(3, reseed=True, spread="stages", n_startup_trials=3))
    plain = optuna.create_study(sampler=StudyTPE(3, reseed=True, spread="", n_startup_trials=3))
    for study in (spread, plain):
        study.optimize(lambda t: t.suggest_float("x", 0.0, 1.0) ** 2, n_trials=12)
    assert [t.params for t in spread.trials] == [t.params for t in plain.trials]


SHIPPED = Path(__file__).parent.parent / "studies" / "pareto-cpu.toml"


LOG_WIDTHS = ('width_scale = "linear"', 'width_scale = "log"')
AS_SHIPPED = ("", "")


@pytest.mark.parametrize("spread,stages,scale,why", [
    ("width", "[2, 4]", AS_SHIPPED, "no parameter (s1_c1_width is one)"),
    ("s1_c1_width", "[2, 4]", AS_SHIPPED, "29 values"),
    ("s1_c1_width", "[2, 4]", LOG_WIDTHS, "log-scaled: its values are not taken in turn"),
    ("dropout", "[2, 4]", AS_SHIPPED, "a float"),
    ("stages", "[3, 3]", AS_SHIPPED, "one value: not a parameter at all"),
])
def test_tpe_spread_names_a_parameter_of_a_few_values(tmp_path, spread, stages, scale, why):
    text = SHIPPED.read_text().replace('tpe_spread = "s1_convs"', f'tpe_spread = "{spread}"').replace("stages = [2, 4]", f"stages = {stages}")
    assert scale[0] in text
    (tmp_path / "study.toml").write_text(text.replace(*scale))
    with pytest.raises(ConfigError, match=f"tpe_spread: must name a linear integer range or a choice parameter .*got '{spread}'"):
        load_study_spec(tmp_path / "study.toml")
    assert load_study_spec(SHIPPED).tpe_spread == "s1_convs"


@pytest.mark.parametrize("within,why", [("width", "no parameter"), ("s1_c1_width", "29 values"), ("dropout", "a float")])
def test_fidelity_within_names_a_parameter_of_a_few_values(tmp_path, within, why):
    text = SHIPPED.read_text().replace('within = "s1_convs"', f'within = "{within}"')
    (tmp_path / "study.toml").write_text(text)
    with pytest.raises(ConfigError, match=f"fidelity.within: must name a linear integer range or a choice parameter .*got '{within}'"):
        load_study_spec(tmp_path / "study.toml")
    (tmp_path / "study.toml").write_text(text.replace(f'within = "{within}"', 'within = "stages"'))
    assert load_study_spec(tmp_path / "study.toml").fidelity.within == "stages"  # the shipped file's space has it
    assert load_study_spec(SHIPPED).fidelity.within == load_study_spec(SHIPPED).tpe_spread == "s1_convs"
