"""`reproduce`: train a config on all 60,000 training images for one or more seeds, report
test accuracy per epoch and over seeds, and write a JSON record of the whole run with, per
seed, the trained model beside it (`.safetensors` weights and an `.onnx` export)."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from search.data import Split
from search.model_files import save_model_files
from search.teacher import teacher_for
from search.train import DivergedError, log_line, train
from space.config import RunConfig, config_to_dict, count_params


def environment(device: torch.device) -> dict:
    """Where a figure was measured: device, library versions, host."""
    import optuna
    import torchvision

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"
    return {"device": str(device), "device_name": name, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "optuna": optuna.__version__, "host": platform.node()}


def format_epoch(seed: int, m: dict, eval_name: str) -> str:
    return (f"seed {seed:>3} epoch {m['epoch']:>3}  lr {m['lr']:.4g}  train loss {m['train_loss']:.4f} acc {m['train_acc']:6.2f}%  "
            f"{eval_name} loss {m[f'{eval_name}_loss']:.4f} acc {m[f'{eval_name}_acc']:6.2f}%  {m['seconds']:6.1f} s  {m['images_per_s']:7.0f} img/s")


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f} %"


def reproduce(config: RunConfig, seeds: list[int], split: Split, out: Path) -> dict:
    """Train `config` once per seed on `split`, print per-epoch lines and the summary, write the record to
    `out` and each seed's model files next to it."""
    name = split.eval_name
    device = split.train_images.device
    print(f"{config.name or 'config'}: {count_params(config):,} params, {config.epochs} epochs, "
          f"{len(split.train_images):,} training images, evaluated on {len(split.eval_images):,} {name} images, device {device}")
    teacher, learned_from = teacher_for(config, split)  # trained before the clock starts: its time is on its own line
    started = time.perf_counter()
    runs, diverged = [], []
    for seed in seeds:
        seeded = replace(config, seed=seed)
        try:
            model, history = train(seeded, split, on_epoch=lambda m, s=seed: log_line(format_epoch(s, m, name)), progress=f"seed {seed}",
                                   teacher=teacher)
        except DivergedError as e:  # one seed's failure is a result too: it is recorded, and the other seeds go on
            print(f"seed {seed:>3}: DIVERGED ({e}); no model written")
            diverged.append({"seed": seed, "diverged": str(e)})
            continue
        accs = [m[f"{name}_acc"] for m in history]
        weights, onnx_file = save_model_files(model, seeded, out, seed)
        runs.append({"seed": seed, "best_acc": max(accs), "best_epoch": accs.index(max(accs)) + 1, "final_acc": accs[-1],
                     "weights": weights.name, "onnx": onnx_file.name, "epochs": history})
        print(f"seed {seed:>3}: best {name} acc {max(accs):.2f}% (epoch {accs.index(max(accs)) + 1}), final {accs[-1]:.2f}%; "
              f"model: {weights}, {onnx_file}")
    wall = time.perf_counter() - started
    best, final = [r["best_acc"] for r in runs], [r["final_acc"] for r in runs]
    if runs:
        print(f"over {len(runs)} seed(s): best {name} acc {mean_std(best)}, final {name} acc {mean_std(final)}, wall time {wall:.0f} s"
              + (f"; {len(diverged)} of {len(seeds)} seed(s) diverged" if diverged else ""))
    else:
        print(f"every seed diverged ({len(seeds)}), wall time {wall:.0f} s")
    record = {"config": config_to_dict(config), "n_params": count_params(config), "seeds": seeds, "eval_set": name,
              "train_images": len(split.train_images), "runs": runs, "diverged": diverged, "wall_seconds": wall,
              **({"teacher": learned_from} if learned_from else {}),
              "command": sys.argv, **environment(device)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"record written to {out}")
    return record
