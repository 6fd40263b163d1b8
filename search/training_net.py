"""The network as it trains: built from its config in the memory layout that is fastest on the
device and thread count (search/train.py's loop is the same for all), and compiled with
torch.compile where a run is long enough for that to pay (CompiledNet)."""

from __future__ import annotations

import logging
import os
import shutil

import torch
from torch import nn

from space.config import RunConfig
from space.model import PackedBitsDropout, build_model

# Image-epochs from which torch.compile pays on a CPU: it costs 20-30 s a network on the 2-core Xeon (40-70 s for the
# first of an empty cache) and saves 0.04 ms an image (front3991, float32) to 0.1 ms (step 3 float32, front3991 bfloat16)
# against the eager step (docs/results.md, "Training near the machine's limit"): it pays from about 250,000 to 650,000.
# Confirmation (50,000 x 15) and reproduction (60,000 x 15) runs are compiled; a study's rungs (at most 16,666 x 15) are not.
COMPILE_MIN_IMAGE_EPOCHS = 500_000


# inductor's C++ build on a CUDA build of torch logs "No CUDA runtime is found, using CUDA_HOME=..." once a process on a
# machine without a GPU: true and harmless for a CPU kernel, and a warning line in every confirmation run's output.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def can_compile(device: torch.device) -> bool:
    """Whether torch.compile can build this device's kernels: on a CPU inductor writes C++ and needs a compiler.
    Only the CPU path is measured (docs/results.md); on a GPU training stays eager until a card measures it."""
    return device.type == "cpu" and any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c)


def compile_pays(device: torch.device, image_epochs: int) -> bool:
    """Whether a run of `image_epochs` (training images x epochs) is long enough for torch.compile to pay."""
    return image_epochs >= COMPILE_MIN_IMAGE_EPOCHS and can_compile(device)


def training_model(config: RunConfig, device: torch.device, compiled: bool = False) -> tuple[nn.Module, torch.memory_format]:
    """The network of `config` on `device`, and the memory layout its inputs take. On a CPU with one
    thread (each worker of a study with --workers 2 on 2 cores): channels-last with torch's own
    convolution, 1.3-1.7x faster a step on the 2-core Xeon than the contiguous layout with the
    weight-gradient trick of space/model.py; with two threads oneDNN's channels-last kernels
    were 1.2-1.9x slower there, so the contiguous layout stays (docs/results.md, "Pipeline speed").
    `compiled`: the network CompiledNet takes: channels-last with torch's own convolution on a CPU."""
    if compiled:
        layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
        return build_model(config, conv=nn.Conv2d).to(device, memory_format=layout), layout
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return build_model(config, conv=nn.Conv2d).to(device, memory_format=torch.channels_last), torch.channels_last
    if config.precision == "bf16":  # autocast does not reach into the weight-gradient trick's own backward
        return build_model(config, conv=nn.Conv2d).to(device), torch.contiguous_format
    return build_model(config).to(device), torch.contiguous_format


class _MasksGiven(nn.Module):
    """`net` with each packed-bits dropout replaced by a product with a mask handed in beside the input."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
        k = 0
        for module in self.net:
            if isinstance(module, PackedBitsDropout):
                if module.threshold:
                    x = x * masks[k]
                    k += 1
            else:
                x = module(x)
        return x


class CompiledNet:
    """torch.compile of a training network (inductor fuses BatchNorm, ReLU, pooling and the dropout
    products into its own loops), called like the network on full batches. The dropout masks are drawn
    outside the graph by the network's own PackedBitsDropout modules and handed in as inputs: inductor
    cannot trace numpy's bits, and its own dropout made a step of step 3 2-3x slower than eager."""

    def __init__(self, model: nn.Sequential) -> None:
        if next(model.parameters()).device.type != "cpu":
            raise ValueError("CompiledNet draws its dropout masks on the CPU; train on a GPU eagerly (can_compile)")
        self.model = model
        self.dropouts = [m for m in model if isinstance(m, PackedBitsDropout) and m.threshold]
        self.compiled = torch.compile(_MasksGiven(model), dynamic=False)
        self.templates: list[torch.Tensor] | None = None

    def _mask_templates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Empty tensors shaped, strided and typed as each dropout's input (keep_mask reads only that),
        from one forward pass in evaluation mode (which leaves the batch-norm statistics alone)."""
        seen: list[torch.Tensor] = []
        hooks = [d.register_forward_pre_hook(lambda _, args: seen.append(torch.empty_like(args[0]))) for d in self.dropouts]
        self.model.eval()
        try:
            with torch.no_grad():
                self.model(x)
        finally:
            self.model.train()
            for hook in hooks:
                hook.remove()
        return seen

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.templates is None:
            self.templates = self._mask_templates(x)
        return self.compiled(x, [d.keep_mask(t) for d, t in zip(self.dropouts, self.templates)])
