"""Where training runs: the device a command asks for, and how many CPU threads each worker gets."""

from __future__ import annotations

import os

import torch

from search.errors import UsageError


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when there is one, else the CPU; a one-line UsageError for a CUDA that is not there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible to torch here; use --device cpu or auto")
    return torch.device(name)


def cpu_threads(device: torch.device, workers: int) -> int | None:
    """Threads per worker process on the CPU: the cores shared out (None on a GPU: torch's default)."""
    return max(1, (os.cpu_count() or 1) // workers) if device.type == "cpu" else None
