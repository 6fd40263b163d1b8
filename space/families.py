"""The model families, one module each under space/, all with one face:

- `Space`, a frozen dataclass of ranges and choices, and `space_from_dict(raw, where)` that
  reads a study file's [space] table into it (space/ranges.py);
- `suggest_params(trial, space, epochs)`: one point of the space, sampled define-by-run;
- `config_from_params(params, *, epochs, seed, name)`: a point as a RunConfig;
- `reference_point(space, epochs)`: the hand-made step-3 model as a point, or None where the
  space does not hold it;
- `point_from_config(config, space, epochs)`: a config file's net and recipe as a point of the
  space (a study file's `start`), or ConfigError saying why it is none;
- `teachers(space)`: the teacher config files its points may distill from;
- `FROM_TRAINING`: the recipe values the family takes from the study's [training] instead of
  searching them (a point carries them like any other value).
"""

from __future__ import annotations

from types import ModuleType

from space import blocks, step3

FAMILIES: dict[str, ModuleType] = {"step3": step3, "blocks": blocks}
RECIPE_IN_TRAINING = ("batch_size", "momentum", "weight_decay")  # [training] keys that a family may take or search
