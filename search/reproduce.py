"""`reproduce`: train a config on all 60,000 training images for one or more seeds, report
test accuracy per epoch and over seeds, and write a JSON record of the whole run with, per
seed, the trained model beside it (`.safetensors` weights and an `.onnx` export)."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from search.console import log_line
from search.data import load_split, resolve_data_dir
from search.errors import Diverged, UsageError
from search.export import export_config, trial_config
from search.results import best_trial, confirmed_rows
from search.storage import load_existing_study, output_folder
from search.studyfile import stored_spec
from space.datasets import DATASETS
from space.config import DEFAULT_MAX_PARAMS, RunConfig, config_to_dict, count_params, load_config, over_limit

if TYPE_CHECKING:  # torch and the trainer are imported once the command's checks have passed: a mistake answers at once
    import torch

    from search.data import Split


@dataclass(frozen=True)
class ReproduceOptions:
    """`reproduce`'s command line, typed: a config file or a study (its best trial, or `trial`), the seeds, and where and how to train."""

    config_file: Path | None = None
    study: str | None = None
    storage: str | None = None
    trial: int | None = None
    as_trained: bool = False
    seeds: tuple[int, ...] = (1,)
    epochs: int | None = None
    out: Path | None = None
    max_params: int | None = None  # default: a study's own limit, else DEFAULT_MAX_PARAMS
    allow_over_limit: bool = False
    data_dir: str | None = None
    device: str = "auto"


def reproduce_command(options: ReproduceOptions) -> None:
    """`reproduce`: train a config file, or a study's trial (its best by default), once per seed on
    all 60,000 training images and report test accuracy; with `as_trained`, retrain the trial
    exactly as the study did (its split, training and validation images, seed, epochs and CPU threads) and say
    whether the curve is the recorded one."""
    config_file, study_name, trial_number, as_trained = options.config_file, options.study, options.trial, options.as_trained
    seeds, max_params = list(options.seeds), options.max_params
    if (config_file is None) == (study_name is None):
        raise UsageError("reproduce takes a CONFIG.json or --study NAME (one of the two)")
    if config_file is not None and (trial_number is not None or as_trained):
        raise UsageError("--trial and --as-trained choose a trial of a study: use them with --study NAME, not with a config file")
    if as_trained and trial_number is None:
        raise UsageError("--as-trained needs --trial N")
    validation, subset, eval_subset, trial = False, None, None, None
    if config_file is not None:
        config, source = load_config(config_file), str(config_file)
        default_out = Path("runs") / f"reproduce-{config.name or config_file.stem}-{datetime.now():%Y%m%d-%H%M%S}.json"
    else:
        study = load_existing_study(study_name, options.storage)
        spec = stored_spec(study)
        max_params = max_params or spec.max_params  # the study's own limit, not the default
        trial = best_trial(study, confirmed_rows(study)) if trial_number is None else _trial(study, trial_number)
        source = f"study {study_name!r} trial {trial.number}"
        if as_trained:  # exactly as the study trained it: same split, subset, seed, epochs and CPU threads
            if "subset" not in trial.user_attrs:
                raise UsageError(f"trial {trial.number} of {study_name!r} was never trained ({trial.user_attrs.get('reason', trial.state.name)}); "
                                 f"--as-trained needs a trial that trained")
            config, validation, seeds = trial_config(trial), True, [trial_config(trial).seed]
            eval_subset = spec.training.validation
            # a Pareto trial's record is the curve of the last rung it trained (a stopped one: the rung it stopped at)
            subset = trial.user_attrs["rungs"][-1]["images"] if trial.user_attrs.get("rungs") else trial.user_attrs["subset"]
            if trial.user_attrs.get("rungs") and "batch_size" in trial.user_attrs["rungs"][-1]:  # ([fidelity] first_batch)
                config = replace(config, batch_size=trial.user_attrs["rungs"][-1]["batch_size"])
        else:
            config = export_config(trial, spec.training, study_name)
        default_out = Path("studies") / study_name / (f"reproduce-trial{trial.number}" + ("-as-trained" if as_trained else "") + ".json")
    if options.epochs:
        config = replace(config, epochs=options.epochs)
    limit = max_params or DEFAULT_MAX_PARAMS
    if over_limit(count_params(config), limit) and not options.allow_over_limit:
        raise UsageError(f"{source}: {count_params(config):,} parameters is over the {limit:,} limit; pass --allow-over-limit to train it anyway")
    out = options.out or default_out
    output_folder(out.parent, "--out")
    import torch

    from search.device import resolve_device

    torch_device = resolve_device(options.device)
    if as_trained and "threads" in trial.user_attrs and torch_device.type == "cpu":  # the CPU's numbers depend on the thread count
        torch.set_num_threads(trial.user_attrs["threads"])
    split = load_split(resolve_data_dir(options.data_dir), torch_device, validation=validation, subset=subset, eval_subset=eval_subset,
                       dataset=DATASETS[config.dataset])
    record = reproduce(config, seeds, split, out)
    if not record["runs"]:
        raise Diverged(f"{source}: training diverged on every seed ({', '.join(map(str, seeds))}); lower its learning rate")
    if as_trained:
        # the training loss of every epoch, and the validation accuracy where the trial measured it (a Pareto rung: its last epochs)
        keys = ("epoch", "train_loss", "val_acc")
        recorded = [{k: m[k] for k in keys if k in m} for m in trial.user_attrs.get("epochs", [])]
        now = [{k: m[k] for k in recorded[i]} for i, m in enumerate(record["runs"][0]["epochs"][: len(recorded)])]
        print(f"recorded val acc per epoch ({subset:,} training images): {[m.get('val_acc') for m in recorded]}")
        print(f"matches the study's record exactly: {'yes' if now == recorded else 'NO'}")


def _trial(study, number: int):
    trials = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not trials or "config" not in trials[0].user_attrs:
        raise UsageError(f"study {study.study_name!r} has no trial {number} with a config; see its trials in the dashboard or `report`")
    return trials[0]


def environment(device: torch.device) -> dict:
    """Where a figure was measured: device, library versions, host."""
    from importlib.metadata import version

    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"
    return {"device": str(device), "device_name": name, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": version("torchvision"), "optuna": version("optuna"), "host": platform.node()}


def format_epoch(seed: int, m: dict, eval_name: str) -> str:
    return (f"seed {seed:>3} epoch {m['epoch']:>3}  lr {m['lr']:.4g}  train loss {m['train_loss']:.4f} acc {m['train_acc']:6.2f}%  "
            f"{eval_name} loss {m[f'{eval_name}_loss']:.4f} acc {m[f'{eval_name}_acc']:6.2f}%  {m['seconds']:6.1f} s  {m['images_per_s']:7.0f} img/s")


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f} %"


def reproduce(config: RunConfig, seeds: list[int], split: Split, out: Path) -> dict:
    """Train `config` once per seed on `split`, print per-epoch lines and the summary, write the record to
    `out` and each seed's model files next to it."""
    from search.model_files import save_model_files
    from search.teacher import teacher_for
    from search.train import DivergedError, train

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
