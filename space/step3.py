"""The step-3 family: the hand-made model's topology with searched widths, regularisation,
schedule, learning rate and augmentation (batch size, momentum and weight decay are fixed by
the study's [training]).

A point of the space is a plain dict of parameter values named as the dashboard shows
them (`conv1_width`, `lr`, ...); `config_from_params` turns it into a RunConfig, and the
hand-made reference is one such point (`REFERENCE_PARAMS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna

from space.config import MAX_DROPOUT, N_CLASSES, ConfigError, Augment, Conv, GlobalAvgPool, LogSoftmax, MaxPool, Optimizer, RunConfig, Scheduler
from space.ranges import Rules, parse_space

WIDTHS = ("conv1", "conv2", "transition", "conv3", "conv4", "conv5")
FLOAT_RANGES = ("dropout", "lr", "gamma", "rotation", "brightness", "contrast")
RULES = Rules(integers=WIDTHS, log_scale=("lr", "gamma"),
              bounds={**{w: (1, math.inf) for w in WIDTHS}, "dropout": (0.0, MAX_DROPOUT), "lr": (0.0, math.inf), "gamma": (0.0, 1.0),
                      "rotation": (0.0, 180.0), "brightness": (0.0, 0.99), "contrast": (0.0, 0.99)})
FROM_TRAINING = ("batch_size", "momentum", "weight_decay")  # the recipe values this family takes from [training]

# The hand-made step-3 model as a point of this space (studies/reference/step3.json).
REFERENCE_PARAMS = {
    "conv1_width": 10, "conv2_width": 15, "transition_width": 10, "conv3_width": 16, "conv4_width": 16, "conv5_width": 16,
    "dropout": 0.05, "lr": 0.2, "step_size": 6, "gamma": 0.1, "rotation": 7.0, "brightness": 0.1, "contrast": 0.1,
}


@dataclass(frozen=True)
class Space:
    """Inclusive [low, high] ranges. StepLR's step size always ranges over 1..epochs."""

    conv1: tuple[int, int] = (4, 32)
    conv2: tuple[int, int] = (4, 32)
    transition: tuple[int, int] = (4, 32)
    conv3: tuple[int, int] = (4, 32)
    conv4: tuple[int, int] = (4, 32)
    conv5: tuple[int, int] = (4, 32)
    dropout: tuple[float, float] = (0.0, 0.2)
    lr: tuple[float, float] = (0.01, 0.5)
    gamma: tuple[float, float] = (0.05, 0.5)
    rotation: tuple[float, float] = (0.0, 15.0)
    brightness: tuple[float, float] = (0.0, 0.3)
    contrast: tuple[float, float] = (0.0, 0.3)


def space_from_dict(raw: Any, where: str = "space") -> Space:
    """Validate the [space] table of a study file (raises ConfigError)."""
    return parse_space(raw, Space, RULES, where)


def reference_point(space: Space, epochs: int) -> dict[str, Any] | None:
    """The hand-made reference as a point of `space` (its step size scaled from 15 epochs to
    `epochs`), or None when the space does not contain it."""
    point = {**REFERENCE_PARAMS, "step_size": max(1, round(REFERENCE_PARAMS["step_size"] * epochs / 15))}
    for w in WIDTHS:
        low, high = getattr(space, w)
        if not low <= point[f"{w}_width"] <= high:
            return None
    for name in FLOAT_RANGES:
        low, high = getattr(space, name)
        if not low <= point[name] <= high:
            return None
    return point


def point_from_config(config: RunConfig, space: Space, epochs: int) -> dict[str, Any]:
    """Start configs are for the blocks family, whose space holds any net of stages of convs."""
    raise ConfigError("the step3 family takes no start configs (its trial 0 is the hand-made model); use family = \"blocks\"")


def suggest_params(trial: optuna.Trial, space: Space, epochs: int) -> dict[str, Any]:
    """Sample one point of `space`; parameter names are stable (the dashboard shows them)."""
    params: dict[str, Any] = {f"{w}_width": trial.suggest_int(f"{w}_width", *getattr(space, w)) for w in WIDTHS}
    params["dropout"] = trial.suggest_float("dropout", *space.dropout)
    params["lr"] = trial.suggest_float("lr", *space.lr, log=True)
    params["step_size"] = trial.suggest_int("step_size", 1, epochs)
    params["gamma"] = trial.suggest_float("gamma", *space.gamma, log=True)
    for name in ("rotation", "brightness", "contrast"):
        params[name] = trial.suggest_float(name, *getattr(space, name))
    return params


def config_from_params(params: dict[str, Any], *, epochs: int, seed: int = 1, name: str = "") -> RunConfig:
    """The step-3 topology with the widths and hyper-parameters of `params`; batch size,
    momentum and weight decay come from the study's [training] (FROM_TRAINING), else 128, 0.9, 0."""
    w = {name: params[f"{name}_width"] for name in WIDTHS}
    block = dict(kernel=3, bn=True, relu=True, dropout=True)
    layers = (
        Conv(w["conv1"], **block), Conv(w["conv2"], **block), Conv(w["transition"], kernel=1), MaxPool(2),
        Conv(w["conv3"], **block), Conv(w["conv4"], **block), Conv(w["conv5"], **block),
        GlobalAvgPool(), Conv(N_CLASSES, kernel=1), LogSoftmax(),
    )
    return RunConfig(
        layers=layers, dropout=params["dropout"],
        optimizer=Optimizer(lr=params["lr"], momentum=params.get("momentum", 0.9), weight_decay=params.get("weight_decay", 0.0)),
        scheduler=Scheduler(step_size=params["step_size"], gamma=params["gamma"]),
        epochs=epochs, batch_size=params.get("batch_size", 128),
        augment=Augment(rotation=params["rotation"], interpolation="nearest", brightness=params["brightness"], contrast=params["contrast"]),
        seed=seed, name=name,
    )


def teachers(space: Space) -> tuple[str, ...]:
    """The teacher config files a study of `space` may distill from: this family does not distill."""
    return ()
