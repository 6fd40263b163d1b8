"""`bench`: our training pipeline against the seed's, side by side, in one process.

The seed's pipeline is its own code: PIL transforms per sample in a 2-worker DataLoader,
feeding the step-3 model built with torch's nn.Dropout and nn.Conv2d. Ours is `train_epoch`:
the data on the device as one tensor, whole batches augmented at once, the packed-bits
dropout and our Conv2d's weight gradient. Both
train for the same number of steps of 128 images. Rounds alternate (seed's, ours, seed's,
ours, ...) so that both see the same machine state, and each pair of rounds gives one
ratio; the median over many pairs is what a noisy shared machine cannot move much. The
DataLoader's workers are started and warmed up before any timing, which favours the seed's
pipeline if anything.

`bench --recipe CONFIG...` times a config's training step instead with no recipe option, `ema`,
`elastic` and `distill`, in alternating rounds, and prints the four medians side by side.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from search.data import Split, load_mnist
from search.errors import UsageError
from search.reproduce import environment
from search.train import ema_of, keep_freed_memory, make_optimizer, train_epoch
from space.config import Distill, Elastic, RunConfig, count_params, load_config
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


def bench_command(data_dir: str | None, device: str, steps: int, rounds: int, warmup: int, recipe: list[Path] | None = None) -> None:
    """`bench`: images/s of our pipeline against the seed's PIL DataLoader, side by side; with
    `recipe` (config files), the cost of a training step with each recipe option instead."""
    from search.data import resolve_data_dir
    from search.device import resolve_device

    if recipe:
        for path in recipe:
            bench_recipe(load_config(path), resolve_data_dir(data_dir), resolve_device(device), steps, rounds, warmup)
    else:
        bench(resolve_data_dir(data_dir), resolve_device(device), steps, rounds, warmup)


TEACHER = REFERENCE.parent / "teacher.json"


def check_steps(images_needed: int, images: int, batch_size: int) -> None:
    """A round trains on distinct images: more steps than the training set holds would time fewer."""
    if images_needed > images:
        raise UsageError(f"--steps asks for {images_needed:,} images a round, MNIST has {images:,}: use --steps <= {images // batch_size}")


def bench_recipe(config: RunConfig, root: Path, device: torch.device, steps: int, rounds: int, warmup: int) -> dict[str, float]:
    """Milliseconds a training step of `config` takes with no recipe option, with `ema` (0.999),
    `elastic` (alpha 34, sigma 4) and `distill` (the reference teacher's forward pass; its
    weights do not change the cost), in alternating rounds; print the medians side by side and
    return them."""
    plain = replace(config, ema=0.0, distill=None, augment=replace(config.augment, elastic=None))
    variants = {"none": plain, "ema": replace(plain, ema=0.999),
                "elastic": replace(plain, augment=replace(plain.augment, elastic=Elastic(34.0, 4.0))),
                "distill": replace(plain, distill=Distill(str(TEACHER)))}
    teacher = build_model(load_config(TEACHER)).to(device).eval()
    images, labels = load_mnist(root, train=True)
    n = steps * config.batch_size
    check_steps(n, len(images), config.batch_size)
    split = Split(images[:n].to(device), labels[:n].to(device), images[:0].to(device), labels[:0].to(device), "none")

    def round_ms(variant: RunConfig) -> float:
        model = build_model(variant).to(device)
        optimizer = make_optimizer(variant, model)
        ema = ema_of(model, variant.ema) if variant.ema else None
        start = time.perf_counter()
        train_epoch(model, optimizer, variant, split, torch.Generator(device=device).manual_seed(0), ema=ema,
                    teacher=teacher if variant.distill else None)  # ends in .item(): synchronised
        return 1000 * (time.perf_counter() - start) / steps

    if device.type == "cpu":
        keep_freed_memory()
    print(f"bench --recipe: {config.name or 'config'} ({count_params(config):,} params), {steps} steps of {config.batch_size} images "
          f"a round, {warmup} warm-up + {rounds} timed rounds per option, alternating; device {environment(device)['device_name']}",
          flush=True)
    for _ in range(warmup):
        for variant in variants.values():
            round_ms(variant)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, variant in variants.items():
            times[name].append(round_ms(variant))
    medians = {name: statistics.median(t) for name, t in times.items()}
    print("  ".join(f"{name} {ms:.1f} ms/step ({ms / medians['none']:.2f}x)" for name, ms in medians.items()))
    return medians


def bench(root: Path, device: torch.device, steps: int, rounds: int, warmup: int) -> float:
    """Print images/s of both pipelines per round, and the median and spread of the per-round
    ratios ours / seed's; return the median ratio."""
    config = replace(load_config(REFERENCE), batch_size=128)
    images, labels = load_mnist(root, train=True)
    n = steps * config.batch_size
    check_steps(n, len(images), config.batch_size)
    split = Split(images[:n].to(device), labels[:n].to(device), images[:0].to(device), labels[:0].to(device), "none")
    loader = seed_style_loader(root)

    def forever():  # every batch from the workers (itertools.cycle would replay stored batches after one epoch)
        while True:
            yield from loader

    batches = forever()

    def seed_style_round(n_steps: int) -> float:
        model = build_model(config, dropout=nn.Dropout, conv=nn.Conv2d).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
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
        model = build_model(config).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        start = time.perf_counter()
        train_epoch(model, optimizer, config, split, torch.Generator(device=device).manual_seed(0))  # ends in .item(): synchronised
        return n / (time.perf_counter() - start)

    if device.type == "cpu":
        keep_freed_memory()  # process-wide: the seed's rounds profit from it as much as ours
    env = environment(device)
    print(f"bench: step-3 model, {steps} steps of 128 images a round, {warmup} warm-up + {rounds} timed rounds each, alternating; "
          f"device {env['device_name']}, torch {env['torch']}, torchvision {env['torchvision']}", flush=True)
    for _ in range(warmup):  # workers started, caches and allocators filled, CPU clocks settled
        seed_style_round(steps)
        ours_round()
    seed_rates, our_rates, ratios = [], [], []
    for r in range(1, rounds + 1):
        seed_rates.append(seed_style_round(steps))
        our_rates.append(ours_round())
        ratios.append(our_rates[-1] / seed_rates[-1])
        print(f"round {r:>2}: seed's {seed_rates[-1]:7.0f} img/s   ours {our_rates[-1]:7.0f} img/s   ratio {ratios[-1]:.2f}", flush=True)
    ratio = statistics.median(ratios)
    print(f"seed's (PIL + DataLoader with 2 workers, nn.Dropout, nn.Conv2d): {statistics.median(seed_rates):.0f} img/s (median of {rounds})")
    our_rate = statistics.median(our_rates)
    print(f"ours (device-resident data, batched augmentation, packed-bits dropout): {our_rate:.0f} img/s (median of {rounds}), "
          f"{1000 * config.batch_size / our_rate:.1f} ms a training step")
    print(f"ratio: {ratio:.2f} (median of {rounds} paired rounds; spread {min(ratios):.2f}-{max(ratios):.2f}, "
          f"quartiles {statistics.quantiles(ratios, n=4)[0]:.2f}-{statistics.quantiles(ratios, n=4)[2]:.2f})" if rounds > 1 else f"ratio: {ratio:.2f}")
    return ratio
