"""The family contract (space/families.py, `Family`), run over every entry of FAMILIES: a family
that lacks a function, or whose functions do not fit together, fails here and not when a study
first takes that path."""

from __future__ import annotations

import optuna
import pytest

from space.config import ConfigError, RunConfig, check_shapes, count_params
from space.families import FAMILIES, RECIPE_IN_TRAINING, Family


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_keeps_the_contract(name):
    family = FAMILIES[name]
    assert isinstance(family, Family)
    assert set(family.FROM_TRAINING) <= set(RECIPE_IN_TRAINING)
    space = family.space_from_dict({})
    assert isinstance(space, family.Space)
    assert isinstance(family.teachers(space), tuple)
    fixed = {key: value for key, value in (("batch_size", 128), ("momentum", 0.9), ("weight_decay", 0.0)) if key in family.FROM_TRAINING}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    # its hand-made net, where the space holds one (None is allowed): enqueued, as a study enqueues it, suggested back and built
    reference = family.reference_point(space, 15)
    if reference is not None:
        study.enqueue_trial(reference)
        point = family.suggest_params(study.ask(), space, 15)
        shared = [key for key in reference if key in point]
        assert shared and {key: point[key] for key in shared} == {key: reference[key] for key in shared}
        config = family.config_from_params({**fixed, **point}, epochs=15, seed=1, name="reference")
        assert isinstance(config, RunConfig) and config.epochs == 15 and config.seed == 1
        check_shapes(config.layers, config.dataset)
        if name in ("step3", "blocks"):
            assert count_params(config) == 7_944  # both hold the hand-made step 3
        # a config file reads back as the point that builds it, or is refused in one line (the step-3 family takes none)
        try:
            again = family.point_from_config(config, space, 15)
        except ConfigError as e:
            assert "\n" not in str(e)
        else:
            assert family.config_from_params({**fixed, **again}, epochs=15, seed=1, name="reference") == config
    # a sampled point is one the family builds, whose shape it checks
    sampled = family.config_from_params({**fixed, **family.suggest_params(study.ask(), space, 15)}, epochs=15, seed=2, name="sampled")
    assert isinstance(sampled, RunConfig) and count_params(sampled) > 0
