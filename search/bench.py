"""`bench`: our training pipeline against the seed's, side by side, in one process.

The seed's pipeline is its own code: PIL transforms per sample in a 2-worker DataLoader,
feeding the step-3 model built with torch's nn.Dropout and nn.Conv2d. Ours is `train_epoch` as
train() runs a full run of the reference: the data on the device as one tensor, whole batches
augmented at once, and the network through torch.compile where that pays (search/train.py,
compile_pays), else the packed-bits dropout and our Conv2d's weight gradient. Both train
for the same number of steps of 128 images. Rounds alternate (seed's, ours, seed's,
ours, ...) so that both see the same machine state, and each pair of rounds gives one
ratio; the median over many pairs is what a noisy shared machine cannot move much. The
DataLoader's workers are started and warmed up before any timing, which favours the seed's
pipeline if anything.

`bench --recipe CONFIG...` times a config's training step instead with no recipe option, `ema`,
`elastic` and `distill`, in alternating rounds, and prints the four medians side by side.

`bench --nets [CONFIG...]` says how far each net's training step is from the machine: images a
second, GFLOP/s and their share of a large fp32 matrix product's rate measured in the same
process, and the forward pass, backward pass and optimizer step apart, for each training path
(eager in float32 and in bfloat16; torch.compile in both where the device compiles), in alternating rounds.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from search.data import Split, load_images
from search.errors import UsageError
from search.reproduce import environment
from search.train import ema_of, forward_loss, keep_freed_memory, make_optimizer, train_epoch
from search.training_net import CompiledNet, can_compile, compile_pays, training_model
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


NETS = (REFERENCE, REFERENCE.parent / "front3991-onecycle.json", REFERENCE.parent / "pareto-cpu-s1-trial32.json")


def bench_command(data_dir: str | None, device: str, steps: int, rounds: int, warmup: int, recipe: list[Path] | None = None,
                  nets: list[Path] | None = None) -> None:
    """`bench`: images/s of our pipeline against the seed's PIL DataLoader, side by side; with
    `recipe` (config files), the cost of a training step with each recipe option instead; with
    `nets` (config files; an empty list: NETS), each net's step against the machine's arithmetic."""
    from search.data import resolve_data_dir
    from search.device import resolve_device

    if nets is not None:
        bench_nets([load_config(path) for path in nets or NETS], resolve_data_dir(data_dir), resolve_device(device), steps, rounds, warmup)
    elif recipe:
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
    images, labels = load_images(root, train=True)
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
    images, labels = load_images(root, train=True)
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

    # ours as train() runs a full 15-epoch run of the reference (compiled where that pays), built once: a compiled
    # network compiles in the first warm-up round, and each round goes on training it (its speed does not depend on its weights)
    compiled = compile_pays(device, len(images) * config.epochs)
    model, layout = training_model(config, device, compiled=compiled)
    forward = CompiledNet(model) if compiled else None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def ours_round() -> float:
        start = time.perf_counter()
        train_epoch(model, optimizer, config, split, torch.Generator(device=device).manual_seed(0), layout=layout,
                    compiled=forward)  # ends in .item(): synchronised
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
    path = "torch.compile, channels-last" if compiled else "packed-bits dropout, " + ("channels-last" if layout == torch.channels_last else "contiguous")
    print(f"ours (device-resident data, batched augmentation, {path}, {torch.get_num_threads()} threads): {our_rate:.0f} img/s (median of {rounds}), "
          f"{1000 * config.batch_size / our_rate:.1f} ms a training step")
    print(f"ratio: {ratio:.2f} (median of {rounds} paired rounds; spread {min(ratios):.2f}-{max(ratios):.2f}, "
          f"quartiles {statistics.quantiles(ratios, n=4)[0]:.2f}-{statistics.quantiles(ratios, n=4)[2]:.2f})" if rounds > 1 else f"ratio: {ratio:.2f}")
    return ratio


@dataclass(frozen=True)
class StepTimes:
    """Median milliseconds of one training step's parts, and what they come to."""
    path: str
    forward_ms: float
    backward_ms: float
    optimizer_ms: float
    images_per_s: float
    gflop_per_s: float


def flop_per_image(config: RunConfig, device: torch.device, batch: int = 128) -> float:
    """FLOPs of one image's forward and backward pass (torch's FlopCounterMode: convolutions and
    matrix products, the arithmetic that counts; elementwise work is left out)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(config, dropout=nn.Dropout, conv=nn.Conv2d).to(device).train()
    x = torch.randn(batch, 1, 28, 28, device=device)
    with FlopCounterMode(display=False) as counter:
        F.nll_loss(model(x), torch.zeros(batch, dtype=torch.long, device=device)).backward()
    return counter.get_total_flops() / batch


def matmul_gflop_per_s(device: torch.device, n: int = 1024, repeats: int = 20) -> float:
    """GFLOP/s of a large square matrix product on this device and thread count: the rate the
    arithmetic reaches when nothing else limits it (the peak a step's rate is compared with)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates.append(2 * n**3 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates[repeats // 4:])


def training_paths(config: RunConfig, device: torch.device) -> dict[str, tuple[RunConfig, str]]:
    """The paths a step of `config` can take on `device` and this thread count: name -> (config, how it is
    built). On one CPU thread the contiguous layout (the two-thread path, and the one-thread path before
    channels-last) comes first, as the base the others are compared with."""
    fp32 = replace(config, precision="fp32")
    paths = {}
    if device.type == "cpu" and torch.get_num_threads() == 1:
        paths["eager contiguous"] = (fp32, "contiguous")
    paths["eager"] = (fp32, "eager")
    paths["eager bf16"] = (replace(config, precision="bf16"), "eager")
    if can_compile(device):
        paths |= {"compiled fp32": (fp32, "compiled"), "compiled bf16": (replace(config, precision="bf16"), "compiled")}
    return paths


def bench_nets(configs: list[RunConfig], root: Path, device: torch.device, steps: int, rounds: int, warmup: int) -> list[list[StepTimes]]:
    """For each config and training path: the median ms of the forward pass, the backward pass and
    the optimizer step over `rounds` rounds of `steps` steps (paths alternating), images a second
    and GFLOP/s of the whole step (augmentation included); printed as a table, returned."""
    if device.type == "cpu":
        keep_freed_memory()
    images, labels = load_images(root, train=True)
    peak = matmul_gflop_per_s(device)
    env = environment(device)
    print(f"bench --nets: {steps} steps a round, {warmup} warm-up + {rounds} timed rounds per path, alternating; device "
          f"{env['device_name']}, torch {env['torch']}; a {1024}x{1024} fp32 matrix product runs at {peak:.0f} GFLOP/s here", flush=True)
    results = []
    for config in configs:
        check_steps(steps * config.batch_size, len(images), config.batch_size)
        flops = flop_per_image(config, device)
        print(f"\n{config.name or 'config'}: {count_params(config):,} params, batch {config.batch_size}, "
              f"{flops / 1e6:.2f} MFLOP an image (forward + backward)", flush=True)
        runs = {name: _StepRunner(variant, how, images, labels, device) for name, (variant, how) in training_paths(config, device).items()}
        for _ in range(warmup):
            for run in runs.values():
                run.round(steps)
        times = {name: [] for name in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                times[name].append(run.round(steps))
        rows = []
        for name, samples in times.items():
            fwd, bwd, opt, total = (statistics.median(s[k] for s in samples) for k in range(4))
            rate = config.batch_size / total * 1000
            rows.append(StepTimes(name, fwd, bwd, opt, rate, rate * flops / 1e9))
        base = rows[0].images_per_s
        print(f"  {'path':<14} {'forward':>8} {'backward':>9} {'optimizer':>10} {'step':>8} {'images/s':>9} {'GFLOP/s':>8} {'of peak':>8} {'speed-up':>8}")
        for r in rows:
            step_ms = config.batch_size / r.images_per_s * 1000
            print(f"  {r.path:<14} {r.forward_ms:6.1f}ms {r.backward_ms:7.1f}ms {r.optimizer_ms:8.1f}ms {step_ms:6.1f}ms {r.images_per_s:9.0f} "
                  f"{r.gflop_per_s:8.1f} {100 * r.gflop_per_s / peak:7.1f}% {r.images_per_s / base:7.2f}x", flush=True)
        results.append(rows)
    return results


class _StepRunner:
    """One training path of one config (`how`: "contiguous", "eager" or "compiled"), built once (a compiled
    path compiles in its first round):
    steps as train_epoch takes them, with the clock read between the parts."""

    def __init__(self, config: RunConfig, how: str, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> None:
        self.config, self.device = config, device
        self.images, self.labels = images.to(device), labels.to(device)
        if how == "contiguous":
            self.model, self.layout = build_model(config).to(device), torch.contiguous_format
        else:
            self.model, self.layout = training_model(config, device, compiled=how == "compiled")
        self.forward = CompiledNet(self.model) if how == "compiled" else self.model
        self.optimizer = make_optimizer(config, self.model)
        self.generator = torch.Generator(device=device).manual_seed(0)

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def round(self, steps: int) -> tuple[float, float, float, float]:
        """Mean ms of (forward with augmentation and loss, backward, optimizer step, whole step) over `steps` steps: train_epoch's
        step (its first part is the same function, forward_loss), with the clock read between the parts."""
        self.model.train()
        config, n = self.config, self.config.batch_size
        order = torch.randperm(len(self.images), generator=self.generator, device=self.device)
        parts = [0.0, 0.0, 0.0]
        start = self._clock()
        for step in range(steps):
            idx = order[step * n : (step + 1) * n]
            t0 = self._clock()
            _, _, loss = forward_loss(self.forward, self.images[idx], self.labels[idx], config, self.generator, self.layout)
            t1 = self._clock()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t2 = self._clock()
            self.optimizer.step()
            t3 = self._clock()
            parts = [parts[0] + t1 - t0, parts[1] + t2 - t1, parts[2] + t3 - t2]
        total = self._clock() - start
        return tuple(1000 * t / steps for t in (*parts, total))
