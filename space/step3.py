"""The sampled space: the step-3 topology with searched widths, regularisation, schedule,
learning rate and augmentation.

A point of the space is a plain dict of parameter values named as the dashboard shows
them (`conv1_width`, `lr`, ...); `config_from_params` turns it into a RunConfig, and the
hand-made reference is one such point (`REFERENCE_PARAMS`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

import optuna

from space.config import Augment, ConfigError, Conv, GlobalAvgPool, LogSoftmax, MaxPool, Optimizer, RunConfig, Scheduler, check

WIDTHS = ("conv1", "conv2", "transition", "conv3", "conv4", "conv5")
FLOAT_RANGES = ("dropout", "lr", "gamma", "rotation", "brightness", "contrast")
LOG_SCALE = ("lr", "gamma")
UPPER_BOUNDS = {"dropout": 0.99, "gamma": 1.0, "rotation": 180.0, "brightness": 0.99, "contrast": 0.99}

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
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table, got {json.dumps(raw)}")
    known = [f.name for f in fields(Space)]
    ranges = {}
    for key, value in raw.items():
        name = f"{where}.{key}"
        check(key in known, name, f"unknown key (expected one of: {', '.join(known)})")
        integer = key in WIDTHS
        ok = isinstance(value, list) and len(value) == 2 and all(
            isinstance(v, int if integer else (int, float)) and not isinstance(v, bool) for v in value)
        check(ok, name, f"must be [low, high] with two {'integers' if integer else 'numbers'}, got {json.dumps(value)}")
        low, high = value
        check(low <= high, name, f"low must be <= high, got [{low}, {high}]")
        if integer:
            check(low >= 1, name, f"widths must be >= 1, got [{low}, {high}]")
        else:
            check(low > 0 if key in LOG_SCALE else low >= 0, name, f"low must be {'> 0 (log scale)' if key in LOG_SCALE else '>= 0'}, got {low}")
            check(high <= UPPER_BOUNDS.get(key, float("inf")), name, f"high must be <= {UPPER_BOUNDS.get(key)}, got {high}")
        ranges[key] = (low, high) if integer else (float(low), float(high))
    return Space(**ranges)


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


def config_from_params(params: dict[str, Any], *, epochs: int, batch_size: int = 128, momentum: float = 0.9,
                       weight_decay: float = 0.0, seed: int = 1, name: str = "") -> RunConfig:
    """The step-3 topology with the widths and hyper-parameters of `params`."""
    w = {name: params[f"{name}_width"] for name in WIDTHS}
    block = dict(kernel=3, bn=True, relu=True, dropout=True)
    layers = (
        Conv(w["conv1"], **block), Conv(w["conv2"], **block), Conv(w["transition"], kernel=1), MaxPool(2),
        Conv(w["conv3"], **block), Conv(w["conv4"], **block), Conv(w["conv5"], **block),
        GlobalAvgPool(), Conv(10, kernel=1), LogSoftmax(),
    )
    return RunConfig(
        layers=layers, dropout=params["dropout"],
        optimizer=Optimizer(lr=params["lr"], momentum=momentum, weight_decay=weight_decay),
        scheduler=Scheduler(step_size=params["step_size"], gamma=params["gamma"]),
        epochs=epochs, batch_size=batch_size,
        augment=Augment(rotation=params["rotation"], interpolation="nearest", brightness=params["brightness"], contrast=params["contrast"]),
        seed=seed, name=name,
    )
