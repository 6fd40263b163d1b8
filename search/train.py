"""Training one config: device-resident data, whole batches augmented at once (search/augment.py),
one epoch loop, and the recipe's options: the weights' moving average (EMA) and distillation
from a teacher's softened outputs.

Every batch is a slice of the uint8 image tensor that already lives on the training
device. No PIL, no DataLoader and no per-sample Python in the loop. On CPU the same config,
seed and thread count give identical numbers.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import sys
import time
from typing import Callable

import torch
import torch._dynamo  # noqa: F401  (see below)
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from search.augment import augment_batch, normalize
from search.data import Split
from search.training_net import CompiledNet, compile_pays, training_model
from space.config import Augment, ConfigError, Distill, Elastic, RunConfig
from space.datasets import MNIST, Dataset

# torch.optim imports torch._dynamo at the first optimizer (1.2 s), well into a trial. A Ctrl-C that
# lands in that import lands inside the exec() of a dataclass definition, and CPython 3.11 then
# ends the process by SIGINT after our clean exit (code -2, not 130): so it is imported here, at once.
DIVERGENCE_CHECK = 32  # batches between looks at the running loss: a diverged run stops early, a GPU syncs rarely
EVAL_BATCH = 500  # on 2 CPU cores 10,000 images take 0.33 s in batches of 500, 1.2 s in batches of 2,000
# The evaluation images under elastic distortion (Simard et al.'s alpha 34 and sigma 4, nearest interpolation: augment_batch),
# ELASTIC_DRAWS fixed draws (seeds ELASTIC_SEED, + 1, ...): the mean loss there ranked 37 nets' five-seed test means better
# than the clean validation loss (Spearman -0.66 against -0.53; docs/results.md, "What validation can see")
ELASTIC_EVAL = Augment(elastic=Elastic(alpha=34.0, sigma=4.0))
ELASTIC_DRAWS = 4
ELASTIC_SEED = 1000

EpochCallback = Callable[[dict], None]


class DivergedError(Exception):
    """The training loss became NaN or infinite."""


class OutOfTime(Exception):
    """Training passed its deadline (a time budget of the search or of confirmation)."""


def keep_freed_memory() -> None:
    """Make glibc's malloc keep freed activation memory in the process instead of handing it
    back to the OS (on 2 CPU cores a training step of the step-3 model page-faulted its
    activations in again every step: 1.9 million minor faults in 300 steps, a quarter of the
    step time). Blocks up to 32 MiB come from the heap, and the heap is not trimmed below
    1 GiB. Process-wide and idempotent; a no-op where the C library has no mallopt."""
    global _memory_kept
    if _memory_kept:
        return
    _memory_kept = True
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, 32 * 2**20)  # glibc's maximum on 64-bit systems
    mallopt(m_trim_threshold, 2**30)


_memory_kept = False


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, dataset: Dataset = MNIST,
             warp: Augment | None = None, generator: torch.Generator | None = None) -> tuple[float, float]:
    """(mean NLL loss, accuracy in %) over the whole set of `dataset`'s images, in large batches;
    with `warp`, each batch augmented by it first, drawing from `generator`."""
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    for start in range(0, len(images), EVAL_BATCH):
        batch = images[start : start + EVAL_BATCH]
        out = model(normalize(batch, dataset) if warp is None else augment_batch(batch, warp, generator, dataset))
        target = labels[start : start + EVAL_BATCH]
        loss_sum += F.nll_loss(out, target, reduction="sum")
        correct += (out.argmax(1) == target).sum()
    return loss_sum.item() / len(images), 100.0 * correct.item() / len(images)


def evaluate_elastic(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, dataset: Dataset = MNIST) -> tuple[float, float]:
    """(mean NLL loss, accuracy in %) over ELASTIC_DRAWS elastic distortions of the whole set, each
    drawn from its fixed seed: the same images for every net on one device (a GPU draws other
    numbers than the CPU from the same seed)."""
    losses, accs = [], []
    for draw in range(ELASTIC_DRAWS):
        generator = torch.Generator(device=images.device).manual_seed(ELASTIC_SEED + draw)
        loss, acc = evaluate(model, images, labels, dataset, warp=ELASTIC_EVAL, generator=generator)
        losses.append(loss)
        accs.append(acc)
    return sum(losses) / ELASTIC_DRAWS, sum(accs) / ELASTIC_DRAWS


def make_optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    opt = config.optimizer
    if opt.kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    if opt.kind == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay,
                           nesterov=opt.kind == "nesterov")


def make_scheduler(config: RunConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """StepLR (stepped once an epoch) or OneCycleLR (stepped once a batch), as config.scheduler says."""
    s = config.scheduler
    if s.kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.optimizer.lr, total_steps=config.epochs * steps_per_epoch,
                                                   pct_start=s.warmup, cycle_momentum=False)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.step_size, gamma=s.gamma)


def loss_fn(log_probs: torch.Tensor, target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """NLL of the log-softmax output; with label smoothing ε, torch's definition:
    (1 - ε) · NLL + ε · (mean over classes of -log p)."""
    loss = F.nll_loss(log_probs, target)
    if label_smoothing == 0:
        return loss
    return (1 - label_smoothing) * loss - label_smoothing * log_probs.mean(1).mean()


def distill_loss(log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, hard_loss: torch.Tensor, distill: Distill) -> torch.Tensor:
    """Hinton et al.'s mix: (1 - w) · the hard-label loss + w · T² · KL(teacher ‖ student) at
    temperature T (T² keeps the soft gradients' scale as T changes). The networks end in a
    log-softmax, whose output differs from the logits by a constant per image, so it can be
    softened directly."""
    t = distill.temperature
    soft = F.kl_div(F.log_softmax(log_probs / t, 1), F.log_softmax(teacher_log_probs / t, 1), log_target=True, reduction="batchmean")
    return (1 - distill.weight) * hard_loss + distill.weight * t * t * soft


def ema_of(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of `model`'s weights and batch-norm statistics (torch's
    AveragedModel with use_buffers=True), updated after every optimizer step. Its decay
    starts low, min(decay, (1 + n) / (10 + n)) after n updates (as TensorFlow's
    ExponentialMovingAverage with num_updates), so that a short run is not averaged with its
    random initial weights."""

    updates = itertools.count(1)  # counted here: reading AveragedModel's count would wait for the GPU every step

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], _: torch.Tensor) -> None:
        if averaged[0].is_floating_point():  # (called once per step for the float tensors, once for the integer ones)
            n = next(updates)
            torch._foreach_lerp_(averaged, current, 1 - min(decay, (1 + n) / (10 + n)))
        else:  # num_batches_tracked: an integer count, unused with BatchNorm's momentum
            torch._foreach_copy_(averaged, current)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, config: RunConfig, split: Split,
                generator: torch.Generator, progress: str | None = None,
                batch_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                ema: AveragedModel | None = None, teacher: nn.Module | None = None,
                deadline: float | None = None, layout: torch.memory_format = torch.contiguous_format,
                compiled: CompiledNet | None = None) -> tuple[float, float]:
    """One pass over the training images in a seeded random order: (mean loss, accuracy in %).
    `batch_scheduler` is stepped after every batch (OneCycleLR), `ema` updated after every
    step; `teacher` (in evaluation mode) gives the soft targets of config.distill. Past
    `deadline` (time.time()) it raises OutOfTime, looking every DIVERGENCE_CHECK batches.
    `compiled`: `model` compiled, for the full batches (the last, shorter one runs eagerly:
    one more shape would compile the network again). With config.precision "bf16" the forward
    pass runs under bfloat16 autocast and the loss in float32."""
    model.train()
    images, labels = split.train_images, split.train_labels
    n, device = len(images), images.device
    order = torch.randperm(n, generator=generator, device=device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    starts = range(0, n, config.batch_size)
    show = progress is not None and sys.stderr.isatty()
    for step, start in enumerate(tqdm(starts, desc=progress, leave=False, disable=not show, unit="batch")):
        idx = order[start : start + config.batch_size]
        y = labels[idx]
        net = compiled if compiled is not None and len(idx) == config.batch_size else model
        x, out, loss = forward_loss(net, images[idx], y, config, generator, layout, split.dataset)
        if teacher is not None:
            with torch.inference_mode():
                soft_targets = teacher(x)
            loss = distill_loss(out, soft_targets.clone(), loss, config.distill)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if batch_scheduler is not None:
            batch_scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        loss_sum += loss.detach() * len(idx)
        correct += (out.argmax(1) == y).sum()
        if step % DIVERGENCE_CHECK == DIVERGENCE_CHECK - 1:
            if not math.isfinite(loss_sum.item()):
                break  # diverged: the rest of the epoch would cost time and change nothing (the caller raises DivergedError)
            if deadline is not None and time.time() > deadline:
                raise OutOfTime(f"past the deadline in epoch step {step + 1}")
    return loss_sum.item() / n, 100.0 * correct.item() / n


def forward_loss(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: RunConfig, generator: torch.Generator,
                 layout: torch.memory_format, dataset: Dataset = MNIST) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training step's first part, for one batch of uint8 `images`: augmented and laid out (x), through `net` (under
    bfloat16 autocast for config.precision "bf16"), the outputs in float32 and the loss: (x, outputs, loss)."""
    x = augment_batch(images, config.augment, generator, dataset).contiguous(memory_format=layout)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
        out = net(x)
    out = out.float()
    return x, out, loss_fn(out, labels, config.label_smoothing)


def train(config: RunConfig, split: Split, on_epoch: EpochCallback | None = None,
          progress: str | None = None, teacher: nn.Module | None = None, deadline: float | None = None,
          evaluated_epochs: int | None = None, compile: bool | None = None, elastic: bool = False) -> tuple[nn.Module, list[dict]]:
    """Train `config` from its seed on `split`; returns the trained model (with config.ema, the
    averaged one) and one metrics dict per epoch.

    `on_epoch` sees each epoch's metrics as soon as they exist (the search reports and
    prunes there by raising). `teacher`: config.distill's trained teacher (teacher_for).
    `evaluated_epochs`: only the last N epochs are scored on the evaluation images (the others'
    metrics have no eval keys), where nothing reads the others: at a rung of 5,000 images,
    scoring 10,000 every epoch costs a third of the rung. `elastic`: the last epoch is also scored
    on the evaluation images under elastic distortion (`evaluate_elastic`: "val_elastic_loss" and
    "val_elastic_acc", for the validation split). Raises DivergedError when the loss
    stops being finite, OutOfTime past `deadline` (time.time()). `compile`: train the full batches
    through torch.compile; None decides by the run's length (compile_pays). A config of another
    dataset than the split's is refused (ConfigError): it would train on what it does not describe."""
    if config.dataset != split.dataset.name:
        raise ConfigError(f"{config.name or 'config'}: a config of the {config.dataset} dataset cannot train on {split.dataset.name}; "
                          f"train it on its own dataset")
    device = split.train_images.device
    if device.type == "cpu":
        keep_freed_memory()
    torch.manual_seed(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    if compile is None:
        compile = compile_pays(device, len(split.train_images) * config.epochs)
    model, layout = training_model(config, device, compiled=compile)
    if compile:
        torch.compiler.reset()  # one net a process at a time: dynamo keeps at most 8 compiled versions of a function, then runs it eagerly
    compiled = CompiledNet(model) if compile else None
    ema = ema_of(model, config.ema) if config.ema else None
    if (config.distill is None) != (teacher is None):
        raise ValueError("config.distill and the teacher go together (search/teacher.py: teacher_for)")
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer, math.ceil(len(split.train_images) / config.batch_size))
    per_batch = config.scheduler.kind == "onecycle"
    history: list[dict] = []
    n_epochs = config.epochs
    for epoch in range(1, n_epochs + 1):
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        label = f"{progress} epoch {epoch}/{n_epochs}" if progress else None
        train_loss, train_acc = train_epoch(model, optimizer, config, split, generator, label, scheduler if per_batch else None,
                                            ema, teacher, deadline, layout, compiled)
        train_seconds = time.perf_counter() - start
        if not math.isfinite(train_loss):
            raise DivergedError(f"training loss is {train_loss} in epoch {epoch}")
        if deadline is not None and epoch < n_epochs and time.time() > deadline:  # (an epoch shorter than DIVERGENCE_CHECK
            raise OutOfTime(f"past the deadline after epoch {epoch}")  # batches never looked; a last epoch that ended is kept)
        if not per_batch:
            scheduler.step()
        metrics = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_acc": train_acc}
        if evaluated_epochs is None or epoch > n_epochs - evaluated_epochs:
            evaluated = ema.module if ema else model  # with ema on, the averaged weights are the model
            eval_loss, eval_acc = evaluate(evaluated, split.eval_images, split.eval_labels, split.dataset)
            metrics |= {f"{split.eval_name}_loss": eval_loss, f"{split.eval_name}_acc": eval_acc}
            if elastic and epoch == n_epochs:
                elastic_loss, elastic_acc = evaluate_elastic(evaluated, split.eval_images, split.eval_labels, split.dataset)
                metrics |= {f"{split.eval_name}_elastic_loss": elastic_loss, f"{split.eval_name}_elastic_acc": elastic_acc}
        metrics |= {"seconds": time.perf_counter() - start, "images_per_s": len(split.train_images) / train_seconds}
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    trained = ema.module if ema else model
    return trained.to(memory_format=torch.contiguous_format), history  # model files and their readers see the usual layout
