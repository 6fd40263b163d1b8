"""The blocks family: stages of 3x3 convolutions, max-pooling between stages, a choice of
heads, and the training recipe (optimizer, schedule, label smoothing, batch size,
augmentation), all searched.

A network has 2-4 stages. Stage s has 1-3 convs (`s{s}_c{j}_width`, kernel `s{s}_c{j}_kernel`
when more than one kernel size is offered), each followed by BatchNorm and ReLU, with the
stage's padding (`s{s}_padding`, 0 or 1). Every stage but the last may end in a plain 1x1
transition conv (`s{s}_transition`, `s{s}_transition_width`) and is followed by a 2x2
max-pool. The head (`head`) is "gap_conv" (global average pool, then a 1x1 conv to 10),
"conv_gap" (a 1x1 conv to 10, then global average pool) or "conv_reduce" (one conv whose
kernel is the whole remaining map, to 10). Dropout (`dropout`) follows every stage conv
(`dropout_at` = "every_conv") or the last conv of each stage ("stage_end"). `bias` puts a
bias on every conv (off by default: BatchNorm follows). Widths share one range.

A point is a plain dict of parameter values named as the dashboard shows them;
`config_from_params` turns it into a RunConfig in the usual layer-list format, so summary,
reproduce, export and the dashboard work unchanged. The encoding has a fixed length: every
parameter of the space is sampled in every trial (`s4_c3_width` in a 2-stage net too,
`adam_lr` beside `sgd_lr`, `warmup` beside `step_size`), and a point's config reads only those
that apply; so no parameter is conditional, and multivariate TPE models them all jointly.
A point's geometry may be invalid (a 4-stage net without padding shrinks below a 3x3 kernel):
`check_shapes` finds that before anything is built.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import optuna

from space.config import (MAX_DROPOUT, MAX_ELASTIC_SIGMA, N_CLASSES, OPTIMIZERS, SCHEDULES, TRAIN_IMAGES, Augment, ConfigError, Conv, Distill, Elastic,
                          GlobalAvgPool, Layer, LogSoftmax, MaxPool, Optimizer, RunConfig, Scheduler, config_to_dict)
from space.ranges import Rules, parse_space

HEADS = ("gap_conv", "conv_gap", "conv_reduce")
WIDTH_SCALES = ("linear", "log")  # "log": a width is a scale, so 4 -> 5 is as large a step as 24 -> 30
DROPOUT_PLACES = ("every_conv", "stage_end")
MAX_STAGES, MAX_CONVS = 4, 3
FROM_TRAINING: tuple[str, ...] = ()  # the whole recipe is searched: [training] fixes none of it

@dataclass(frozen=True)
class Space:
    """Inclusive [low, high] ranges, and tuples of the choices offered (RULES.choices)."""

    stages: tuple[int, int] = (2, 4)
    convs: tuple[int, int] = (1, 3)  # per stage
    width: tuple[int, int] = (4, 32)  # every conv of a stage, and the transitions
    width_scale: str = "linear"  # the scale every width is sampled and modelled on: one of WIDTH_SCALES
    kernel: tuple[int, ...] = (3,)
    padding: tuple[int, ...] = (0, 1)  # per stage
    transition: tuple[bool, ...] = (False, True)  # per stage but the last
    head: tuple[str, ...] = HEADS
    bias: tuple[bool, ...] = (False,)
    dropout: tuple[float, float] = (0.0, 0.2)
    dropout_at: tuple[str, ...] = DROPOUT_PLACES
    optimizer: tuple[str, ...] = OPTIMIZERS
    sgd_lr: tuple[float, float] = (0.01, 0.5)
    adam_lr: tuple[float, float] = (0.0005, 0.02)
    momentum: tuple[float, float] = (0.8, 0.95)
    weight_decay: tuple[float, float] = (0.0, 0.0005)
    schedule: tuple[str, ...] = SCHEDULES
    gamma: tuple[float, float] = (0.05, 0.5)
    warmup: tuple[float, float] = (0.1, 0.5)
    label_smoothing: tuple[float, float] = (0.0, 0.1)
    batch_size: tuple[int, ...] = (64, 128, 256)
    rotation: tuple[float, float] = (0.0, 15.0)
    translate: tuple[float, float] = (0.0, 0.1)
    scale: tuple[float, float] = (0.0, 0.1)
    brightness: tuple[float, float] = (0.0, 0.3)
    contrast: tuple[float, float] = (0.0, 0.3)
    # The recipe options, as lists of the values to try; 0 is off, and off alone is the default.
    ema: tuple[float, ...] = (0.0,)  # the weights' moving average: decays per step
    elastic_alpha: tuple[float, ...] = (0.0,)  # elastic distortion: its alpha (torchvision's ElasticTransform)
    elastic_sigma: tuple[float, ...] = (4.0,)  # ... and its smoothing, in pixels
    distill_weight: tuple[float, ...] = (0.0,)  # distillation: the weight of the teacher's soft targets
    distill_temperature: tuple[float, ...] = (4.0,)
    teacher: tuple[str, ...] = ("studies/reference/teacher.json",)  # the teacher's config file


RULES = Rules(
    integers=("stages", "convs", "width"),
    log_scale=("sgd_lr", "adam_lr", "gamma"),
    bounds={"stages": (1, MAX_STAGES), "convs": (1, MAX_CONVS), "width": (1, 1024), "dropout": (0.0, MAX_DROPOUT),
            "momentum": (0.0, 0.99), "gamma": (0.0, 1.0), "warmup": (0.01, 0.99), "label_smoothing": (0.0, 0.5),
            "rotation": (0.0, 180.0), "translate": (0.0, 0.5), "scale": (0.0, 0.99), "brightness": (0.0, 0.99),
            "contrast": (0.0, 0.99), "sgd_lr": (0.0, 10.0), "adam_lr": (0.0, 1.0), "weight_decay": (0.0, 1.0)},
    choices={"kernel": int, "padding": int, "transition": bool, "head": str, "bias": bool, "dropout_at": str, "optimizer": str,
             "schedule": str, "batch_size": int, "ema": float, "elastic_alpha": float, "elastic_sigma": float,
             "distill_weight": float, "distill_temperature": float, "teacher": str},
    allowed={"kernel": (lambda v: v in (1, 3, 5, 7), "1, 3, 5 or 7"), "padding": (lambda v: v in (0, 1, 2, 3), "0, 1, 2 or 3"),
             "head": (lambda v: v in HEADS, ", ".join(HEADS)), "dropout_at": (lambda v: v in DROPOUT_PLACES, ", ".join(DROPOUT_PLACES)),
             "optimizer": (lambda v: v in OPTIMIZERS, ", ".join(OPTIMIZERS)), "schedule": (lambda v: v in SCHEDULES, ", ".join(SCHEDULES)),
             "batch_size": (lambda v: 1 <= v <= TRAIN_IMAGES, f"1..{TRAIN_IMAGES:,} (MNIST's training set)"),
             "ema": (lambda v: 0 <= v < 1, "in [0, 1)"), "elastic_alpha": (lambda v: 0 <= v <= 1000, "in [0, 1000]"),
             "elastic_sigma": (lambda v: 0 < v <= MAX_ELASTIC_SIGMA, f"in (0, {MAX_ELASTIC_SIGMA:g}]"),
             "distill_weight": (lambda v: 0 <= v <= 1, "in [0, 1]"), "distill_temperature": (lambda v: 0 < v <= 100, "in (0, 100]"),
             "teacher": (lambda v: v.strip() != "", "a config file's path")},
    settings={"width_scale": WIDTH_SCALES},
)


def space_from_dict(raw: Any, where: str = "space") -> Space:
    """Validate the [space] table of a blocks study file (raises ConfigError)."""
    return parse_space(raw, Space, RULES, where)


# ---------------------------------------------------------------- sampling


def _choose(trial: optuna.Trial, name: str, choices: tuple) -> Any:
    """A categorical parameter, suggested only when there is a choice (a fixed value is not a parameter)."""
    return trial.suggest_categorical(name, list(choices)) if len(choices) > 1 else choices[0]


def _float(trial: optuna.Trial, name: str, bounds: tuple[float, float], log: bool = False) -> float:
    low, high = bounds
    return trial.suggest_float(name, low, high, log=log) if low < high else low


def suggest_params(trial: optuna.Trial, space: Space, epochs: int) -> dict[str, Any]:
    """Sample one point of `space` in a fixed-length encoding: every parameter is suggested in
    every trial, also where it does not apply (the widths of a stage the net does not have, the
    Adam learning rate of an SGD trial, the warm-up of a StepLR trial), so that TPE models all
    of them jointly instead of sampling those that exist only in some trials at random;
    `config_from_params` reads only those that apply. A choice with one value is no parameter."""
    p: dict[str, Any] = {"stages": trial.suggest_int("stages", *space.stages)}
    log_width = space.width_scale == "log"
    for s in range(1, space.stages[1] + 1):  # as many stages and convs as the space's largest net has
        p[f"s{s}_convs"] = trial.suggest_int(f"s{s}_convs", *space.convs)
        for j in range(1, space.convs[1] + 1):
            p[f"s{s}_c{j}_width"] = trial.suggest_int(f"s{s}_c{j}_width", *space.width, log=log_width)
            p[f"s{s}_c{j}_kernel"] = _choose(trial, f"s{s}_c{j}_kernel", space.kernel)
        p[f"s{s}_padding"] = _choose(trial, f"s{s}_padding", space.padding)
        if s < space.stages[1]:
            p[f"s{s}_transition"] = _choose(trial, f"s{s}_transition", space.transition)
            if True in space.transition:
                p[f"s{s}_transition_width"] = trial.suggest_int(f"s{s}_transition_width", *space.width, log=log_width)
    p["head"] = _choose(trial, "head", space.head)
    p["bias"] = _choose(trial, "bias", space.bias)
    p["dropout"] = _float(trial, "dropout", space.dropout)
    p["dropout_at"] = _choose(trial, "dropout_at", space.dropout_at)
    p["optimizer"] = _choose(trial, "optimizer", space.optimizer)
    if set(space.optimizer) & {"sgd", "nesterov"}:
        p["sgd_lr"] = _float(trial, "sgd_lr", space.sgd_lr, log=True)
        p["momentum"] = _float(trial, "momentum", space.momentum)
    if set(space.optimizer) & {"adam", "adamw"}:
        p["adam_lr"] = _float(trial, "adam_lr", space.adam_lr, log=True)
    p["weight_decay"] = _float(trial, "weight_decay", space.weight_decay)
    p["schedule"] = _choose(trial, "schedule", space.schedule)
    if "step" in space.schedule:
        p["step_size"] = trial.suggest_int("step_size", 1, epochs)
        p["gamma"] = _float(trial, "gamma", space.gamma, log=True)
    if "onecycle" in space.schedule:
        p["warmup"] = _float(trial, "warmup", space.warmup)
    p["label_smoothing"] = _float(trial, "label_smoothing", space.label_smoothing)
    p["batch_size"] = _choose(trial, "batch_size", space.batch_size)
    for name in ("rotation", "translate", "scale", "brightness", "contrast"):
        p[name] = _float(trial, name, getattr(space, name))
    p["ema"] = _choose(trial, "ema", space.ema)
    p["elastic_alpha"] = _choose(trial, "elastic_alpha", space.elastic_alpha)
    p["elastic_sigma"] = _choose(trial, "elastic_sigma", space.elastic_sigma)
    p["distill_weight"] = _choose(trial, "distill_weight", space.distill_weight)
    p["distill_temperature"] = _choose(trial, "distill_temperature", space.distill_temperature)
    p["teacher"] = _choose(trial, "teacher", space.teacher)
    return p


# ---------------------------------------------------------------- points as configs


def layers_from_params(p: dict[str, Any]) -> tuple[Layer, ...]:
    """The layer list of point `p`, in the config format (no shape check: see check_shapes)."""
    layers: list[Layer] = []
    bias = p["bias"]
    for s in range(1, p["stages"] + 1):
        n = p[f"s{s}_convs"]
        for j in range(1, n + 1):
            dropout = p["dropout_at"] == "every_conv" or j == n
            layers.append(Conv(p[f"s{s}_c{j}_width"], kernel=p[f"s{s}_c{j}_kernel"], padding=p[f"s{s}_padding"], bias=bias,
                               bn=True, relu=True, dropout=dropout))
        if s < p["stages"]:
            if p[f"s{s}_transition"]:
                layers.append(Conv(p[f"s{s}_transition_width"], kernel=1, bias=bias))
            layers.append(MaxPool(2))
    if p["head"] == "gap_conv":
        layers += [GlobalAvgPool(), Conv(N_CLASSES, kernel=1, bias=bias)]
    elif p["head"] == "conv_gap":
        layers += [Conv(N_CLASSES, kernel=1, bias=bias), GlobalAvgPool()]
    else:
        layers.append(Conv(N_CLASSES, kernel=_map_size(layers), bias=bias))
    return tuple(layers) + (LogSoftmax(),)


def _map_size(layers: list[Layer]) -> int:
    """Height of the (square) feature map after `layers` (at least 1: check_shapes reports the rest)."""
    size = 28
    for layer in layers:
        if isinstance(layer, Conv):
            size = size + 2 * layer.padding - layer.kernel + 1
        elif isinstance(layer, MaxPool):
            size //= layer.kernel
    return max(size, 1)


def config_from_params(params: dict[str, Any], *, epochs: int, seed: int = 1, name: str = "") -> RunConfig:
    """The network and recipe of point `params` (a dict from `suggest_params`, or written by hand)."""
    p = params
    if p["optimizer"] in ("sgd", "nesterov"):
        optimizer = Optimizer(lr=p["sgd_lr"], momentum=p["momentum"], weight_decay=p["weight_decay"], kind=p["optimizer"])
    else:
        optimizer = Optimizer(lr=p["adam_lr"], weight_decay=p["weight_decay"], kind=p["optimizer"])
    if p["schedule"] == "step":
        scheduler = Scheduler(step_size=p["step_size"], gamma=p["gamma"])
    else:
        scheduler = Scheduler(kind="onecycle", warmup=p["warmup"])
    elastic = Elastic(p["elastic_alpha"], p["elastic_sigma"]) if p.get("elastic_alpha", 0) > 0 else None
    augment = Augment(rotation=p["rotation"], translate=p["translate"], scale=p["scale"], brightness=p["brightness"], contrast=p["contrast"],
                      elastic=elastic)
    distill = Distill(p["teacher"], p["distill_weight"], p["distill_temperature"]) if p.get("distill_weight", 0) > 0 else None
    return RunConfig(layers=layers_from_params(p), dropout=p["dropout"], optimizer=optimizer, scheduler=scheduler, epochs=epochs,
                     batch_size=p["batch_size"], augment=augment, seed=seed, name=name, label_smoothing=p["label_smoothing"],
                     ema=p.get("ema", 0.0), distill=distill)


# ---------------------------------------------------------------- hand-made nets as points

# The hand-made step-3 model (studies/reference/step3.json, 7,944 parameters) with its recipe.
STEP3_PARAMS: dict[str, Any] = {
    "stages": 2,
    "s1_convs": 2, "s1_c1_width": 10, "s1_c1_kernel": 3, "s1_c2_width": 15, "s1_c2_kernel": 3, "s1_padding": 0,
    "s1_transition": True, "s1_transition_width": 10,
    "s2_convs": 3, "s2_c1_width": 16, "s2_c1_kernel": 3, "s2_c2_width": 16, "s2_c2_kernel": 3, "s2_c3_width": 16, "s2_c3_kernel": 3,
    "s2_padding": 0,
    "head": "gap_conv", "bias": False, "dropout": 0.05, "dropout_at": "every_conv",
    "optimizer": "sgd", "sgd_lr": 0.2, "momentum": 0.9, "weight_decay": 0.0,
    "schedule": "step", "step_size": 6, "gamma": 0.1, "label_smoothing": 0.0, "batch_size": 128,
    "rotation": 7.0, "translate": 0.0, "scale": 0.0, "brightness": 0.1, "contrast": 0.1,
}

# The same net with the one-cycle recipe measured best at the export budget (docs/results.md,
# "Start configs": 99.52 against 99.42 % test), for a space that offers no StepLR.
STEP3_ONECYCLE_PARAMS: dict[str, Any] = {
    **{k: v for k, v in STEP3_PARAMS.items() if k not in ("step_size", "gamma")},
    "dropout": 0.0, "optimizer": "nesterov", "schedule": "onecycle", "warmup": 0.2,
    "rotation": 7.0, "translate": 0.05, "scale": 0.05, "brightness": 0.0, "contrast": 0.0,
}

# A public hand-made 4,838-parameter net: per stage two 3x3 convs with padding 1 (widths 4, 8,
# 16), conv biases, max-pool between stages, a 1x1 conv to 10 then global average pooling.
# Its layers with our step-3 recipe; its author's recipe was Adam with a one-cycle schedule.
NET4838_PARAMS: dict[str, Any] = {
    **{k: v for k, v in STEP3_PARAMS.items() if not k.startswith(("s1_", "s2_"))},
    "stages": 3, "head": "conv_gap", "bias": True,
    **{f"s{s}_{key}": value for s, width in ((1, 4), (2, 8), (3, 16))
       for key, value in (("convs", 2), ("c1_width", width), ("c1_kernel", 3), ("c2_width", width), ("c2_kernel", 3), ("padding", 1))},
    "s1_transition": False, "s2_transition": False,
}


def reference_point(space: Space, epochs: int) -> dict[str, Any] | None:
    """The hand-made step-3 model as a point of `space` (its step size scaled from 15 epochs to
    `epochs`): with its own StepLR recipe where the space holds it, else with the one-cycle recipe
    (studies/reference/step3-onecycle.json) for a space that fixes that recipe; None when the
    space holds neither. (Enqueued as a whole: Optuna ignores the values of parameters a trial
    never suggests, such as a kernel size with one choice.)"""
    own = {**STEP3_PARAMS, "step_size": max(1, round(STEP3_PARAMS["step_size"] * epochs / 15))}
    return next((point for point in (own, STEP3_ONECYCLE_PARAMS) if outside_space(point, space) is None), None)


def outside_space(point: dict[str, Any], space: Space) -> str | None:
    """The first value of `point` that `space` does not offer, as "key = value (offered: ...)";
    None when every value is offered (step_size always is: it ranges over 1..epochs)."""
    for key, value in point.items():
        family = key.rsplit("_", 1)[-1] if re.fullmatch(r"s\d+_.+", key) else key  # s2_c1_width: a width
        if key == "step_size":
            continue
        offered = getattr(space, family, None)
        if offered is None:
            return f"{key} (not a parameter of the space)"
        if family in RULES.choices:
            ok = value in offered
        else:
            ok = offered[0] <= value <= offered[1]
        if not ok:
            return f"{key} = {value!r} (offered: {list(offered)})"
    return None


def point_from_config(config: RunConfig, space: Space, epochs: int) -> dict[str, Any]:
    """The point of `space` whose config is `config` (its step size scaled from the config's
    epochs to `epochs`): the inverse of config_from_params. Raises ConfigError when `config` is
    no net of this family (the point read off its layers must rebuild exactly its config) or
    holds a value that `space` does not offer."""
    p: dict[str, Any] = {}
    stages: list[list[Layer]] = [[]]
    for layer in config.layers:
        if isinstance(layer, MaxPool):
            stages.append([])
        elif not isinstance(layer, LogSoftmax):
            stages[-1].append(layer)
    p["stages"] = len(stages)
    convs = [layer for layer in config.layers if isinstance(layer, Conv)]
    p["bias"] = bool(convs) and convs[0].bias
    every_conv = False
    for s, layers in enumerate(stages, start=1):
        body = [layer for layer in layers if isinstance(layer, Conv) and layer.bn]
        rest = [layer for layer in layers if not (isinstance(layer, Conv) and layer.bn)]
        p[f"s{s}_convs"] = len(body)
        for j, conv in enumerate(body, start=1):
            p[f"s{s}_c{j}_width"], p[f"s{s}_c{j}_kernel"] = conv.out, conv.kernel
            every_conv |= conv.dropout and j < len(body)
        p[f"s{s}_padding"] = body[0].padding if body else 0
        if s < len(stages):
            p[f"s{s}_transition"] = bool(rest)
            if rest and isinstance(rest[0], Conv):
                p[f"s{s}_transition_width"] = rest[0].out
        else:
            p["head"] = ("gap_conv" if rest[:1] == [GlobalAvgPool()] else "conv_gap" if rest[-1:] == [GlobalAvgPool()] else "conv_reduce")
    # with one conv in every stage both places build the same net: the space's first choice then
    one_each = all(p[f"s{s}_convs"] == 1 for s in range(1, len(stages) + 1))
    p["dropout"], p["dropout_at"] = config.dropout, space.dropout_at[0] if one_each else "every_conv" if every_conv else "stage_end"
    o, sc, a = config.optimizer, config.scheduler, config.augment
    p["optimizer"] = o.kind
    p.update({"sgd_lr": o.lr, "momentum": o.momentum} if o.kind in ("sgd", "nesterov") else {"adam_lr": o.lr})
    p["weight_decay"], p["schedule"] = o.weight_decay, sc.kind
    p.update({"step_size": sc.step_size, "gamma": sc.gamma} if sc.kind == "step" else {"warmup": sc.warmup})
    p["label_smoothing"], p["batch_size"] = config.label_smoothing, config.batch_size
    p.update(rotation=a.rotation, translate=a.translate, scale=a.scale, brightness=a.brightness, contrast=a.contrast, ema=config.ema)
    p.update({"elastic_alpha": a.elastic.alpha, "elastic_sigma": a.elastic.sigma} if a.elastic else {"elastic_alpha": 0.0})
    p.update({"distill_weight": config.distill.weight, "distill_temperature": config.distill.temperature, "teacher": config.distill.teacher}
             if config.distill else {"distill_weight": 0.0})
    try:
        rebuilt = config_to_dict(config_from_params(p, epochs=config.epochs, seed=config.seed, name=config.name))
    except (KeyError, IndexError, AttributeError):
        rebuilt = {}
    given = config_to_dict(config)
    differs = [key for key in given if rebuilt.get(key) != given[key]]
    if not rebuilt or "layers" in differs:
        raise ConfigError("not a net of the blocks family (stages of convs with BatchNorm and ReLU, max-pools, an optional plain "
                          "1x1 transition per stage, one of the heads " + ", ".join(HEADS) + ")")
    if differs:
        raise ConfigError(f"its {differs[0]} is not one the blocks family builds (its form: {json.dumps(given[differs[0]])})")
    if p["schedule"] == "step":  # scaled to the trial's epochs, as the hand-made model is (1..epochs, as a sampled one)
        p["step_size"] = min(epochs, max(1, round(p["step_size"] * epochs / config.epochs)))
    outside = outside_space(p, space)
    if outside is not None:
        raise ConfigError(f"not a point of the study's [space]: {outside}")
    return p


def teachers(space: Space) -> tuple[str, ...]:
    """The teacher config files a study of `space` may distill from (none unless a distill weight above 0 is offered)."""
    return space.teacher if any(w > 0 for w in space.distill_weight) else ()
