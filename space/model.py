"""The model family: a RunConfig's layer list built as a torch module."""

from __future__ import annotations

from torch import nn

from space.config import INPUT_SHAPE, Conv, GlobalAvgPool, LogSoftmax, MaxPool, RunConfig


def build_model(config: RunConfig) -> nn.Sequential:
    """The network `config` describes; its parameter count equals `count_params(config)`."""
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
                    modules.append(nn.Dropout(config.dropout))
                channels = layer.out
            case MaxPool():
                modules.append(nn.MaxPool2d(layer.kernel))
            case GlobalAvgPool():
                modules.append(nn.AdaptiveAvgPool2d(1))
            case LogSoftmax():
                modules += [nn.Flatten(), nn.LogSoftmax(dim=1)]
    return nn.Sequential(*modules)

