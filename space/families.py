"""The model families, one module each under space/, all with one face (`Family`):

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

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from space import blocks, step3

if TYPE_CHECKING:
    import optuna

    from space.config import RunConfig


@runtime_checkable
class Family(Protocol):
    """The face every family module shows (a module satisfies it by its names; tests/test_families.py
    runs the contract over every entry of FAMILIES)."""

    Space: type
    FROM_TRAINING: tuple[str, ...]

    def space_from_dict(self, raw: Any, where: str = "space") -> Any: ...

    def suggest_params(self, trial: optuna.Trial, space: Any, epochs: int) -> dict[str, Any]: ...

    def config_from_params(self, params: dict[str, Any], *, epochs: int, seed: int = 1, name: str = "") -> RunConfig: ...

    def reference_point(self, space: Any, epochs: int) -> dict[str, Any] | None: ...

    def point_from_config(self, config: RunConfig, space: Any, epochs: int) -> dict[str, Any]: ...

    def teachers(self, space: Any) -> tuple[str, ...]: ...


FAMILIES: dict[str, Family] = {"step3": step3, "blocks": blocks}  # each module is its family
RECIPE_IN_TRAINING = ("batch_size", "momentum", "weight_decay")  # [training] keys that a family may take or search
