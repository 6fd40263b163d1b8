"""The run config: one JSON file that fully describes a trainable run.

A config is plain data (frozen dataclasses). `load_config` reads and validates a
file, `config_from_dict` validates a dict (the search builds configs that way) and
`config_to_dict` is its inverse (best.json, run records). Every rejection is a
`ConfigError` whose one-line message names the field and the problem.

The layer arithmetic (output shape, exact parameter count) lives here, next to the
schema, and needs no torch: `summary` answers in well under a second and the search
rejects a config over the parameter limit before anything is built.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Union

from space.datasets import DATASETS, DEFAULT_DATASET, MNIST

DEFAULT_MAX_PARAMS = 8000
# the default dataset's figures, for the families' and tests' constants (a config's own come from DATASETS[config.dataset])
INPUT_SHAPE = MNIST.image_shape  # channels, height, width
N_CLASSES = MNIST.classes
TRAIN_IMAGES = MNIST.train_size
INTERPOLATIONS = ("nearest", "bilinear")
MAX_DROPOUT = 0.99  # the CPU dropout quantises its rate to 1/65,536: a rate that rounds to 1 would keep nothing

MAX_ACTIVATION = 1_000_000  # values an image, per layer: the step-3 model's largest is 15x26x26 = 10,140
Shape = tuple[int, int, int]


class ConfigError(ValueError):
    """A config is wrong; the message is one line naming the field and the problem."""


@dataclass(frozen=True)
class Conv:
    """Conv2d, optionally followed by BatchNorm, ReLU and dropout (in that order)."""

    out: int
    kernel: int
    padding: int = 0
    bias: bool = False
    bn: bool = False
    relu: bool = False
    dropout: bool = False

    def output_shape(self, shape: Shape) -> Shape:
        _, h, w = shape
        return (self.out, h + 2 * self.padding - self.kernel + 1, w + 2 * self.padding - self.kernel + 1)

    def n_params(self, in_channels: int) -> int:
        weights = in_channels * self.out * self.kernel * self.kernel
        return weights + (self.out if self.bias else 0) + (2 * self.out if self.bn else 0)

    def describe(self, in_channels: int) -> str:
        extras = [name for name, on in (("bias", self.bias), ("BN", self.bn), ("ReLU", self.relu), ("dropout", self.dropout)) if on]
        pad = f" pad {self.padding}" if self.padding else ""
        return f"conv {self.kernel}x{self.kernel}{pad} {in_channels}->{self.out}" + "".join(f" +{e}" for e in extras)


@dataclass(frozen=True)
class MaxPool:
    kernel: int = 2

    def output_shape(self, shape: Shape) -> Shape:
        c, h, w = shape
        return (c, h // self.kernel, w // self.kernel)

    def n_params(self, in_channels: int) -> int:
        return 0

    def describe(self, in_channels: int) -> str:
        return f"max-pool {self.kernel}"


@dataclass(frozen=True)
class GlobalAvgPool:
    def output_shape(self, shape: Shape) -> Shape:
        return (shape[0], 1, 1)

    def n_params(self, in_channels: int) -> int:
        return 0

    def describe(self, in_channels: int) -> str:
        return "global average pool"


@dataclass(frozen=True)
class LogSoftmax:
    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def n_params(self, in_channels: int) -> int:
        return 0

    def describe(self, in_channels: int) -> str:
        return "log-softmax"


Layer = Union[Conv, MaxPool, GlobalAvgPool, LogSoftmax]
LAYER_TYPES: dict[str, type] = {"conv": Conv, "maxpool": MaxPool, "gap": GlobalAvgPool, "log_softmax": LogSoftmax}


@dataclass(frozen=True)
class Optimizer:
    """`kind` "sgd" (with `momentum`), "nesterov" (SGD with Nesterov momentum), "adam" or "adamw"
    (torch's default betas; they have no momentum setting). `weight_decay` is L2 for SGD and
    Adam, decoupled for AdamW, as in torch."""

    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    kind: str = "sgd"


@dataclass(frozen=True)
class Scheduler:
    """`kind` "step": StepLR, the learning rate times `gamma` every `step_size` epochs.
    "onecycle": OneCycleLR stepped every batch, rising from lr/25 to the optimizer's lr (the
    peak) over the first `warmup` fraction of training, then annealed (cosine) to lr/25e4;
    momentum is not cycled."""

    step_size: int = 0  # step: required
    gamma: float = 0.0  # step: required
    kind: str = "step"
    warmup: float = 0.3  # onecycle only


@dataclass(frozen=True)
class Elastic:
    """Elastic distortion (Simard et al. 2003) with torchvision's ElasticTransform semantics: a
    displacement drawn uniformly from [-1, 1] per pixel and axis, smoothed by a Gaussian of
    std `sigma` pixels (kernel 8·sigma + 1, reflected edges), times `alpha` / image size in
    grid_sample's [-1, 1] coordinates (so alpha / 2 pixels before smoothing)."""

    alpha: float
    sigma: float


@dataclass(frozen=True)
class Augment:
    """Per-image brightness and contrast factors drawn from [1 - x, 1 + x] (as torchvision's
    ColorJitter), then one warp: torchvision's RandomAffine semantics (rotation in [-rotation,
    rotation] degrees, a shift of up to `translate` of the image size (whole pixels) each way,
    a zoom factor in [1 - scale, 1 + scale]) plus, when `elastic` is set, an elastic
    displacement of each sampling position; black fill."""

    rotation: float = 0.0
    interpolation: str = "nearest"
    brightness: float = 0.0
    contrast: float = 0.0
    translate: float = 0.0
    scale: float = 0.0
    elastic: Elastic | None = None


@dataclass(frozen=True)
class Distill:
    """Knowledge distillation (Hinton et al. 2015): the loss is (1 - weight) · the hard-label
    loss + weight · temperature² · KL(teacher ‖ student) of the outputs softened by
    `temperature`, the teacher seeing the same augmented batch. `teacher` is a config file
    (relative to the current folder), trained once per data folder and split and cached."""

    teacher: str
    weight: float = 0.5
    temperature: float = 4.0


@dataclass(frozen=True)
class RunConfig:
    layers: tuple[Layer, ...]
    dropout: float
    optimizer: Optimizer
    scheduler: Scheduler
    epochs: int
    batch_size: int
    augment: Augment
    seed: int = 1
    name: str = ""
    label_smoothing: float = 0.0
    ema: float = 0.0  # decay per step of the weights' moving average; 0: off
    distill: Distill | None = None
    # the convolutions' arithmetic: "bf16" runs them in bfloat16 under torch.autocast (BatchNorm, the loss and the
    # weights stay float32); compiled on a CPU with AMX 1.14-1.36x faster a step than compiled float32, eager little
    # (docs/results.md, "Training near the machine's limit")
    precision: str = "fp32"
    dataset: str = DEFAULT_DATASET  # what it trains on and is tested on (space/datasets.py); a config is trained on no other


OPTIMIZERS = ("sgd", "nesterov", "adam", "adamw")
SCHEDULES = ("step", "onecycle")
PRECISIONS = ("fp32", "bf16")
RECIPE_DEFAULTS = (("optimizer", "kind", "sgd"), ("scheduler", "kind", "step"), ("", "label_smoothing", 0.0),
                   ("augment", "translate", 0.0), ("augment", "scale", 0.0), ("", "ema", 0.0), ("", "distill", None),
                   ("augment", "elastic", None), ("", "precision", "fp32"), ("", "dataset", DEFAULT_DATASET))
MAX_ELASTIC_SIGMA = 6.0  # its smoothing kernel (8·sigma + 1) reflects at the edges: at most 55 taps on a 28-pixel image


# ---------------------------------------------------------------- layer arithmetic


def layer_rows(config: RunConfig) -> list[tuple[str, Shape, int]]:
    """(description, output shape, params) for each layer, from the dataset's input on."""
    rows, shape = [], DATASETS[config.dataset].image_shape
    for layer in config.layers:
        description, params = layer.describe(shape[0]), layer.n_params(shape[0])
        shape = layer.output_shape(shape)
        rows.append((description, shape, params))
    return rows


def architecture(config: RunConfig) -> str:
    """The layer list in one short line, e.g. "c3-10 c3-15 c1-10 mp2 c3-16 c3-16 c3-16 gap c1-10":
    c{kernel}-{out} is a conv (p{n} added for padding), mp{k} a max-pool, gap the global average
    pool; the log-softmax that ends every network is left out. BatchNorm, ReLU, bias and
    dropout flags are in the full config."""
    parts = []
    for layer in config.layers:
        if isinstance(layer, Conv):
            parts.append(f"c{layer.kernel}" + (f"p{layer.padding}" if layer.padding else "") + f"-{layer.out}")
        elif isinstance(layer, MaxPool):
            parts.append(f"mp{layer.kernel}")
        elif isinstance(layer, GlobalAvgPool):
            parts.append("gap")
    return " ".join(parts)


def count_params(config: RunConfig) -> int:
    """Exact number of trainable parameters of the model `config` builds."""
    return sum(params for _, _, params in layer_rows(config))


def over_limit(n_params: int, limit: int) -> bool:
    """The parameter limit's one rule, for every trial, start config and command: a net of
    exactly `limit` parameters is within it; one over it never trains."""
    return n_params > limit


def check_shapes(layers: tuple[Layer, ...], dataset: str = DEFAULT_DATASET) -> None:
    """Raise a one-line ConfigError when the layers do not fit the dataset's images: a kernel or
    pool larger than its feature map, a huge activation, or an output other than one value per class."""
    shape, classes = DATASETS[dataset].image_shape, DATASETS[dataset].classes
    for i, layer in enumerate(layers):
        where = f"layers[{i}]"
        c, h, w = shape
        if c * h * w > MAX_ACTIVATION:
            raise ConfigError(f"layers[{i - 1}]: its output {c}x{h}x{w} is {c * h * w:,} values an image "
                              f"({c * h * w * 4 * 128 / 2**30:.1f} GiB a batch of 128); at most {MAX_ACTIVATION:,} are allowed: "
                              f"lower its padding or width")
        if isinstance(layer, Conv):
            if layer.kernel > h + 2 * layer.padding or layer.kernel > w + 2 * layer.padding:
                raise ConfigError(f"{where}: kernel {layer.kernel}x{layer.kernel} is larger than the {h}x{w} feature map it meets")
        elif isinstance(layer, MaxPool) and (layer.kernel > h or layer.kernel > w):
            raise ConfigError(f"{where}: max-pool {layer.kernel} is larger than the {h}x{w} feature map it meets")
        elif isinstance(layer, LogSoftmax) and i != len(layers) - 1:
            raise ConfigError(f"{where}: log_softmax must be the last layer")
        shape = layer.output_shape(shape)
    c, h, w = shape
    if c * h * w > MAX_ACTIVATION:
        raise ConfigError(f"layers[{len(layers) - 1}]: its output {c}x{h}x{w} is {c * h * w:,} values an image; at most {MAX_ACTIVATION:,} are allowed")
    if not layers or not isinstance(layers[-1], LogSoftmax):
        raise ConfigError("layers: the last layer must be {\"type\": \"log_softmax\"}")
    if shape != (classes, 1, 1):
        c, h, w = shape
        raise ConfigError(f"layers: the network ends in {c}x{h}x{w}; it must end in {classes}x1x1 (one value per class)")


# ---------------------------------------------------------------- reading and writing


def _type_name(t: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}[t]


def _value(raw: Any, t: type, where: str) -> Any:
    """`raw` as type `t`; JSON's integers are accepted as numbers, booleans never as numbers."""
    ok = isinstance(raw, t) and not (t is not bool and isinstance(raw, bool))
    if t is float and isinstance(raw, int) and not isinstance(raw, bool):
        raw, ok = float(raw), True
    if not ok:
        raise ConfigError(f"{where}: must be {_type_name(t)}, got {json.dumps(raw)}")
    if t is float and not math.isfinite(raw):
        raise ConfigError(f"{where}: must be a finite number, got {raw}")
    return raw


def parse_section(raw: Any, cls: type, where: str) -> Any:
    """Build dataclass `cls` from a JSON object: unknown keys, missing keys and wrong types are errors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: must be an object (JSON {{...}}, TOML [table]), got {json.dumps(raw)}")
    known = {f.name: f for f in fields(cls)}
    prefix = f"{where}." if where else ""
    for key in raw:
        if key not in known:
            raise ConfigError(f"{prefix}{key}: unknown key (expected one of: {', '.join(known)})")
    values = {}
    for name, f in known.items():
        if name not in raw:
            if f.default is f.default_factory:  # both MISSING: the field is required
                raise ConfigError(f"{prefix}{name}: missing")
            continue
        t = {"int": int, "float": float, "bool": bool, "str": str}.get(str(f.type))
        if t is not None:
            values[name] = _value(raw[name], t, f"{prefix}{name}")
        else:
            values[name] = raw[name]  # nested: the caller parses it
    return values


def check(ok: bool, where: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{where}: {problem}")


def _layer(raw: Any, where: str) -> Layer:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a JSON object, got {json.dumps(raw)}")
    kind = raw.get("type")
    if kind not in LAYER_TYPES:
        raise ConfigError(f"{where}.type: must be one of {', '.join(LAYER_TYPES)}, got {json.dumps(kind)}")
    cls = LAYER_TYPES[kind]
    values = parse_section({k: v for k, v in raw.items() if k != "type"}, cls, where)
    layer = cls(**values)
    if isinstance(layer, Conv):
        check(layer.out > 0, f"{where}.out", f"must be > 0, got {layer.out}")
        check(layer.kernel > 0, f"{where}.kernel", f"must be > 0, got {layer.kernel}")
        check(layer.padding >= 0, f"{where}.padding", f"must be >= 0, got {layer.padding}")
    if isinstance(layer, MaxPool):
        check(layer.kernel > 0, f"{where}.kernel", f"must be > 0, got {layer.kernel}")
    return layer


def config_from_dict(raw: Any) -> RunConfig:
    """Validate a config dict and return it as a RunConfig (raises ConfigError)."""
    top = parse_section(raw, RunConfig, "")
    layers_raw = top["layers"]
    if not isinstance(layers_raw, list) or not layers_raw:
        raise ConfigError(f"layers: must be a non-empty list of layers, got {json.dumps(layers_raw)}")
    layers = tuple(_layer(item, f"layers[{i}]") for i, item in enumerate(layers_raw))
    optimizer = Optimizer(**parse_section(top["optimizer"], Optimizer, "optimizer"))
    scheduler = Scheduler(**parse_section(top["scheduler"], Scheduler, "scheduler"))
    check(optimizer.kind in OPTIMIZERS, "optimizer.kind", f"must be one of {', '.join(OPTIMIZERS)}, got {json.dumps(optimizer.kind)}")
    if optimizer.kind.startswith("adam"):
        check("momentum" not in top["optimizer"], "optimizer.momentum", f"only SGD has it ({optimizer.kind} uses torch's default betas); remove it")
    check(scheduler.kind in SCHEDULES, "scheduler.kind", f"must be one of {', '.join(SCHEDULES)}, got {json.dumps(scheduler.kind)}")
    for key in ("step_size", "gamma"):
        if scheduler.kind == "step":
            check(key in top["scheduler"], f"scheduler.{key}", "missing (a step schedule needs step_size and gamma)")
        else:
            check(key not in top["scheduler"], f"scheduler.{key}", f"a {scheduler.kind} schedule has no {key}; remove it")
    if scheduler.kind == "step":
        check("warmup" not in top["scheduler"], "scheduler.warmup", "only a onecycle schedule has a warm-up; remove it")
    augment = Augment(**parse_section(top["augment"], Augment, "augment"))
    if augment.elastic is not None:
        augment = replace(augment, elastic=Elastic(**parse_section(augment.elastic, Elastic, "augment.elastic")))
    distill = Distill(**parse_section(top["distill"], Distill, "distill")) if top.get("distill") is not None else None
    config = RunConfig(**{**top, "layers": layers, "optimizer": optimizer, "scheduler": scheduler, "augment": augment,
                          "distill": distill})

    check(0.0 <= config.dropout <= MAX_DROPOUT, "dropout", f"must be in [0, {MAX_DROPOUT}], got {config.dropout}")
    check(config.epochs > 0, "epochs", f"must be > 0, got {config.epochs}")
    check(config.dataset in DATASETS, "dataset", f"must be one of {', '.join(DATASETS)}, got {json.dumps(config.dataset)}")
    dataset = DATASETS[config.dataset]
    check(0 < config.batch_size <= dataset.train_size, "batch_size",
          f"must be in 1..{dataset.train_size:,} ({dataset.title}'s training set), got {config.batch_size}")
    check(optimizer.lr > 0, "optimizer.lr", f"must be > 0, got {optimizer.lr}")
    check(0.0 <= optimizer.momentum < 1.0, "optimizer.momentum", f"must be in [0, 1), got {optimizer.momentum}")
    check(optimizer.weight_decay >= 0, "optimizer.weight_decay", f"must be >= 0, got {optimizer.weight_decay}")
    check(optimizer.kind != "nesterov" or optimizer.momentum > 0, "optimizer.momentum", "Nesterov needs a momentum > 0")
    if scheduler.kind == "step":
        check(scheduler.step_size > 0, "scheduler.step_size", f"must be > 0, got {scheduler.step_size}")
        check(0.0 < scheduler.gamma <= 1.0, "scheduler.gamma", f"must be in (0, 1], got {scheduler.gamma}")
    else:
        check(0.0 < scheduler.warmup < 1.0, "scheduler.warmup", f"must be in (0, 1) (a fraction of training), got {scheduler.warmup}")
    check(0.0 <= config.label_smoothing < 1.0, "label_smoothing", f"must be in [0, 1), got {config.label_smoothing}")
    check(0.0 <= augment.translate <= 0.5, "augment.translate", f"must be in [0, 0.5] (a fraction of the image size), got {augment.translate}")
    check(0.0 <= augment.scale < 1.0, "augment.scale", f"must be in [0, 1), got {augment.scale}")
    check(0.0 <= augment.rotation <= 180.0, "augment.rotation", f"must be in [0, 180] degrees, got {augment.rotation}")
    check(augment.interpolation in INTERPOLATIONS, "augment.interpolation", f"must be one of {', '.join(INTERPOLATIONS)}, got {json.dumps(augment.interpolation)}")
    check(0.0 <= augment.brightness < 1.0, "augment.brightness", f"must be in [0, 1), got {augment.brightness}")
    check(0.0 <= augment.contrast < 1.0, "augment.contrast", f"must be in [0, 1), got {augment.contrast}")
    check(config.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}, got {json.dumps(config.precision)}")
    check(0.0 <= config.ema < 1.0, "ema", f"must be in [0, 1) (a decay per step; 0 is off), got {config.ema}")
    if augment.elastic is not None:
        e = augment.elastic
        check(0.0 <= e.alpha <= 1000.0, "augment.elastic.alpha", f"must be in [0, 1000], got {e.alpha}")
        check(0.0 < e.sigma <= MAX_ELASTIC_SIGMA, "augment.elastic.sigma", f"must be in (0, {MAX_ELASTIC_SIGMA:g}] pixels, got {e.sigma}")
    if distill is not None:
        check(distill.teacher.strip() != "", "distill.teacher", "must name the teacher's config file, e.g. \"studies/reference/teacher.json\"")
        check(0.0 <= distill.weight <= 1.0, "distill.weight", f"must be in [0, 1], got {distill.weight}")
        check(0.0 < distill.temperature <= 100.0, "distill.temperature", f"must be in (0, 100], got {distill.temperature}")
    check_shapes(layers, config.dataset)
    return config


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The JSON form of `config`, the name first; every field is written but the newer recipe fields at today's values."""
    out = {"name": config.name, **asdict(config)}
    if config.optimizer.kind.startswith("adam"):  # only the fields that apply to the kind are written
        del out["optimizer"]["momentum"]
    if config.scheduler.kind == "step":
        del out["scheduler"]["warmup"]
    else:
        del out["scheduler"]["step_size"], out["scheduler"]["gamma"]
    # The recipe fields added with the blocks family are written only where they differ from
    # today's recipe, so that a config of that recipe reads (and diffs) as it always has.
    for section, key, default in RECIPE_DEFAULTS:
        table = out[section] if section else out
        if table[key] == default:
            del table[key]
    out["layers"] = [{"type": next(k for k, cls in LAYER_TYPES.items() if isinstance(layer, cls)), **asdict(layer)} for layer in config.layers]
    return out


def config_to_json(config: RunConfig) -> str:
    """`config` as the text of a config file: one line per layer, so a diff reads like the network."""
    items = []
    for key, value in config_to_dict(config).items():
        if key == "layers":
            value_text = "[\n" + ",\n".join(f"    {json.dumps(layer)}" for layer in value) + "\n  ]"
        else:
            value_text = json.dumps(value)
        items.append(f"  {json.dumps(key)}: {value_text}")
    return "{\n" + ",\n".join(items) + "\n}\n"


def read_text_file(path: Path, kind: str) -> str:
    """The text of a file the user handed in; one-line ConfigErrors for what cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {kind} file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a {kind} file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the {kind} file as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a config file (raises ConfigError with the file's name)."""
    path = Path(path)
    text = read_text_file(path, "config")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise ConfigError(f"{path}: JSON nested too deeply to be a config") from None
    try:
        return config_from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(config_to_json(config))
