"""The model family: a RunConfig's layer list built as a torch module."""

from __future__ import annotations

from typing import Callable

import numpy
import torch
import torch.nn.functional as F
from torch import nn

from space.config import Conv, GlobalAvgPool, LogSoftmax, MaxPool, RunConfig
from space.datasets import DATASETS

UNIFORM_LEVELS = 65_536  # the keep-mask compares 16-bit uniforms, so p is quantised to 1/65,536
EXACT_MASK_DTYPES = (torch.float32, torch.float64)


class PackedBitsDropout(nn.Module):
    """Dropout whose mask is cut from packed random bits: one 64-bit word gives four 16-bit
    uniforms, and an element is kept where its uniform is >= p·65,536 (then scaled by
    1 / (1 - p_eff)). The same Bernoulli(1 - p) as nn.Dropout with p quantised to 1/65,536,
    at a third of the cost on the CPU, where sampling one float per element was 42 % of a
    training step; the mask is built with float arithmetic because bool tensors are slow
    there. The words come from numpy's SFC64, seeded for each call from torch's global
    generator (so torch.manual_seed decides the masks): for one 128×15×24×24 mask it takes
    1.0 ms on 2 cores where torch's own Mersenne Twister takes 2.0 ms. On CUDA nn.Dropout's
    fused kernel is used. Identity in evaluation, like nn.Dropout."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.threshold = round(p * UNIFORM_LEVELS)  # drop where the uniform in [0, 65,536) is below this
        if not 0 <= self.threshold < UNIFORM_LEVELS:
            raise ValueError(f"dropout rate {p} is outside [0, 1) once quantised to 1/{UNIFORM_LEVELS:,}")
        self.scale = UNIFORM_LEVELS / (UNIFORM_LEVELS - self.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        return x * self.keep_mask(x)

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """0 or 1 / (1 - p_eff) per element of `x` (on the CPU), seeded by the global torch generator. In `x`'s
        dtype where that holds 16-bit uniforms exactly, else in float32 (a bfloat16 mask would keep 5.16 % too
        few for p = 0.05): the product with a bfloat16 `x` is then float32, as autocast's next convolution takes it."""
        dtype = x.dtype if x.dtype in EXACT_MASK_DTYPES else torch.float32
        n = x.numel()
        stream = numpy.random.SFC64(int(torch.randint(2**62, ())))  # a fresh stream per call, seeded by torch
        bits = torch.from_numpy(stream.random_raw((n + 3) // 4).view(numpy.int64))  # all 64 bits
        uniforms = bits.view(torch.int16)[:n]  # uniform in [-32,768, 32,767]
        if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            # laid out as `x` is (search/train.py trains channels-last on one thread): the product then runs straight
            # through memory, where a contiguous mask against a channels-last `x` cost a tenth of a training step
            batch, channels, height, width = x.shape
            mask = uniforms.view(batch, height, width, channels).permute(0, 3, 1, 2).to(dtype)
        else:
            mask = uniforms.view(x.shape).to(dtype)
        # kept <=> uniform + 32,768 >= threshold; the clamp turns that into exactly 1.0 or 0.0.
        # In place: each pass over a large activation costs about a tenth of a millisecond here.
        return mask.sub_(self.threshold - UNIFORM_LEVELS // 2 - 1).clamp_(0, 1).mul_(self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Conv2d(nn.Conv2d):
    """nn.Conv2d (the same parameters, forward pass and gradients) whose weight gradient is
    computed, when training on the CPU, as one more convolution: the layer's input with batch
    and channels swapped, convolved with the output gradient as its kernel. For the step-3
    model's 3×3 layers on 2 cores oneDNN's own weight-gradient pass is as fast or slower,
    twice as slow for the one-channel first layer (5.1 against 2.3 ms a step, 7.6 against
    6.4 ms for the 10→15 layer); for 1×1 layers it is faster (2.1 against 5.1 ms), so those
    keep it. The trick computes stride 1, no dilation, one group and zero padding given as
    numbers (every Conv of a RunConfig); a layer with anything else uses nn.Conv2d's own pass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and x.device.type == "cpu" and self.kernel_size != (1, 1) and torch.is_grad_enabled()
                and self.plain):
            return super().forward(x)
        return _ConvWeightGradAsConv.apply(x, self.weight, self.bias, self.padding)


    @property
    def plain(self) -> bool:
        """Whether this layer is one the weight-gradient trick computes exactly."""
        return (self.stride == (1, 1) and self.dilation == (1, 1) and self.groups == 1 and self.padding_mode == "zeros"
                and not isinstance(self.padding, str))


class _ConvWeightGradAsConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(x.shape, weight, grad, padding=ctx.padding)
        if ctx.needs_input_grad[1]:  # dW[o, c] = sum over images b of x[b, c] correlated with grad[b, o]
            grad_weight = F.conv2d(x.transpose(0, 1), grad.transpose(0, 1), padding=ctx.padding).transpose(0, 1).contiguous()
        if ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None


def build_model(config: RunConfig, dropout: Callable[[float], nn.Module] = PackedBitsDropout,
                conv: type[nn.Conv2d] = Conv2d) -> nn.Sequential:
    """The network `config` describes; its parameter count equals `count_params(config)`.
    `dropout` and `conv` make those modules (`bench` passes nn.Dropout and nn.Conv2d to build
    the seed's model)."""
    modules: list[nn.Module] = []
    channels = DATASETS[config.dataset].image_shape[0]
    for layer in config.layers:
        match layer:
            case Conv():
                modules.append(conv(channels, layer.out, layer.kernel, padding=layer.padding, bias=layer.bias))
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
