"""The model family: a RunConfig's layer list built as a torch module."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from space.config import INPUT_SHAPE, Conv, GlobalAvgPool, LogSoftmax, MaxPool, RunConfig

UNIFORM_LEVELS = 65_536  # the keep-mask compares 16-bit uniforms, so p is quantised to 1/65,536


class PackedBitsDropout(nn.Module):
    """Dropout whose mask is cut from packed random bits: one int64 draw gives four 16-bit
    uniforms, and an element is kept where its uniform is >= p·65,536 (then scaled by
    1 / (1 - p_eff)). The same Bernoulli(1 - p) as nn.Dropout with p quantised to 1/65,536,
    at a third of the cost on the CPU, where sampling one float per element was 42 % of a
    training step; the mask is built with float arithmetic because bool tensors are slow
    there. On CUDA nn.Dropout's fused kernel is used. Identity in evaluation, like nn.Dropout."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.threshold = round(p * UNIFORM_LEVELS)  # drop where the uniform in [0, 65,536) is below this
        self.scale = UNIFORM_LEVELS / (UNIFORM_LEVELS - self.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return x * self.keep_mask(x)

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """0 or 1 / (1 - p_eff) per element of `x`, from the global (seeded) torch generator."""
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)  # all 64 bits
        mask = bits.view(torch.int16)[:n].view(x.shape).to(x.dtype)  # uniform in [-32,768, 32,767]
        # kept <=> uniform + 32,768 >= threshold; the clamp turns that into exactly 1.0 or 0.0.
        # In place: each pass over a large activation costs about a tenth of a millisecond here.
        return mask.sub_(self.threshold - UNIFORM_LEVELS // 2 - 1).clamp_(0, 1).mul_(self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def build_model(config: RunConfig, dropout: Callable[[float], nn.Module] = PackedBitsDropout) -> nn.Sequential:
    """The network `config` describes; its parameter count equals `count_params(config)`.
    `dropout` makes the dropout modules (`bench` passes nn.Dropout to build the seed's model)."""
    modules: list[nn.Module] = []
    channels = INPUT_SHAPE[0]
    for layer in config.layers:
        match layer:
            case Conv():
                modules.append(nn.Conv2d(channels, layer.out, layer.kernel, padding=layer.padding, bias=layer.bias))
                if layer.bn:
                    modules.append(nn.BatchNorm2d(layer.out))
                if layer.relu:
                    modules.append(nn.ReLU())
                if layer.dropout and config.dropout > 0:
                    modules.append(dropout(config.dropout))
                channels = layer.out
            case MaxPool():
                modules.append(nn.MaxPool2d(layer.kernel))
            case GlobalAvgPool():
                modules.append(nn.AdaptiveAvgPool2d(1))
            case LogSoftmax():
                modules += [nn.Flatten(), nn.LogSoftmax(dim=1)]
    return nn.Sequential(*modules)
