"""`bench`: our training pipeline against the seed's per-sample PIL DataLoader, side by side.

Both train the step-3 reference model for the same number of steps of 128 images. The
rounds alternate (seed-style, ours, seed-style, ours, ...) in one process so that both
see the same machine state; the DataLoader's workers are started and warmed up before
any timing, which favours the seed-style pipeline if anything.
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from search.data import Split, load_mnist
from search.reproduce import environment
from search.train import train_epoch
from space.config import load_config
from space.model import build_model

REFERENCE = Path(__file__).resolve().parent.parent / "studies" / "reference" / "step3.json"


def seed_style_loader(root: Path) -> torch.utils.data.DataLoader:
    """The seed's pipeline, exactly: PIL transforms per sample in 2 worker processes."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1),
        transforms.RandomRotation((-7.0, 7.0), fill=(1,)),
        transforms.ToTensor(),
        transforms.Normalize((0.1307,), (0.3081,)),
    ])
    dataset = datasets.MNIST(str(root), train=True, download=False, transform=transform)
    return torch.utils.data.DataLoader(dataset, batch_size=128, shuffle=True, num_workers=2, persistent_workers=True)


def bench(root: Path, device: torch.device, steps: int, rounds: int) -> float:
    """Print images/s of both pipelines per round and overall; return the ratio ours / seed-style."""
    config = replace(load_config(REFERENCE), batch_size=128)
    images, labels = load_mnist(root, train=True)
    n = steps * config.batch_size
    split = Split(images[:n].to(device), labels[:n].to(device), images[:0].to(device), labels[:0].to(device), "none")
    batches = itertools.cycle(seed_style_loader(root))  # cycle() keeps the workers alive across rounds

    def make() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        model = build_model(config).to(device)
        return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def seed_style_round(n_steps: int) -> float:
        model, optimizer = make()
        model.train()
        start = time.perf_counter()
        for _ in range(n_steps):
            x, y = next(batches)
            x, y = x.to(device), y.to(device)
            loss = F.nll_loss(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return n_steps * config.batch_size / (time.perf_counter() - start)

    def ours_round() -> float:
        model, optimizer = make()
        start = time.perf_counter()
        train_epoch(model, optimizer, config, split, torch.Generator(device=device).manual_seed(0))  # ends in .item(): synchronised
        return n / (time.perf_counter() - start)

    env = environment(device)
    print(f"bench: step-3 model, {steps} steps of 128 images per round, {rounds} rounds each, alternating; "
          f"device {env['device_name']}, torch {env['torch']}, torchvision {env['torchvision']}")
    seed_style_round(10)  # warm-up: workers started, caches filled
    ours_round()
    seed_rates, our_rates = [], []
    for r in range(1, rounds + 1):
        seed_rates.append(seed_style_round(steps))
        our_rates.append(ours_round())
        print(f"round {r}: seed-style {seed_rates[-1]:8.0f} img/s   ours {our_rates[-1]:8.0f} img/s")
    seed_rate, our_rate = statistics.median(seed_rates), statistics.median(our_rates)
    print(f"seed-style (PIL + DataLoader, 2 workers): {seed_rate:.0f} img/s (median of {rounds})")
    print(f"ours (device-resident, batched augmentation): {our_rate:.0f} img/s (median of {rounds})")
    print(f"ratio: {our_rate / seed_rate:.2f}")
    return our_rate / seed_rate
