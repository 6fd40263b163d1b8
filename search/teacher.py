"""Distillation teachers: a teacher config trained once per data folder and split, then cached.

A student trained on the search's split (50,000 training images, scored on validation)
learns from a teacher trained on those 50,000 images; a student trained by `reproduce`
(60,000 images, scored on test) from one trained on all 60,000. The teacher never sees the
images its student is scored on. Its weights and record (config, accuracy, seconds) are kept
in $SEARCH_CACHE_DIR (default runs/cache/) under a name made from the teacher's config,
the data folder and the split, so a changed teacher config trains a new teacher and every
later student reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path

from torch import nn

from search.data import Split, load_split
from search.console import log_line
from search.train import DivergedError, train
from space.config import ConfigError, RunConfig, config_to_json, load_config
from space.model import build_model

CACHE_ENV = "SEARCH_CACHE_DIR"
DEFAULT_CACHE = "runs/cache"

_loaded: dict[str, tuple[nn.Module, dict]] = {}  # this process's teachers, by cache key


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def teacher_for(config: RunConfig, split: Split) -> tuple[nn.Module | None, dict | None]:
    """config.distill's teacher for `split` (trained on first use, then from the cache) and what a
    student's record says about it; (None, None) when `config` does not distill."""
    if config.distill is None:
        return None, None
    return teacher(config.distill.teacher, split)


def teacher(path: str, split: Split) -> tuple[nn.Module, dict]:
    """The teacher of config file `path` for `split`'s data folder and kind (trained on first use,
    then from the cache, then from this process's memory) and its record."""
    try:
        config = load_config(path)
    except ConfigError as e:
        raise ConfigError(f"distill.teacher: {e}") from None
    if config.distill is not None:
        raise ConfigError(f"distill.teacher: {path} learns from a teacher itself; a teacher must train on labels alone")
    if split.root is None:
        raise ValueError("a split without its data folder cannot train a teacher")
    folder = str(split.root.resolve())
    key = hashlib.sha256(f"{config_to_json(config)}\n{folder}\n{split.eval_name}".encode()).hexdigest()[:16]
    if key in _loaded:
        return _loaded[key]
    device = split.train_images.device
    weights, record_file = cache_dir() / f"teacher-{key}.safetensors", cache_dir() / f"teacher-{key}.json"
    model = build_model(config)
    if weights.is_file() and record_file.is_file():
        from safetensors.torch import load_file

        record = json.loads(record_file.read_text())
        model.load_state_dict(load_file(str(weights)))
        log_line(f"teacher {path}: cached ({record['eval_set']} acc {record['final_acc']:.2f}%, trained in {record['seconds']:.0f} s "
                 f"on {record['train_images']:,} images; {weights})")
    else:
        from safetensors.torch import save_file

        full = load_split(split.root, device, validation=split.eval_name == "val")  # the whole training set of this kind
        log_line(f"teacher {path}: training it once for {folder} ({len(full.train_images):,} images, {config.epochs} epochs); "
                 f"cached in {cache_dir()}")
        start = time.perf_counter()
        try:
            model, history = train(replace(config, name=config.name or "teacher"), full)
        except DivergedError as e:  # nothing is cached: a corrected teacher config trains afresh
            raise ConfigError(f"distill.teacher: {path} diverged in training ({e}); lower its learning rate") from None
        seconds = time.perf_counter() - start
        record = {"teacher": path, "name": config.name, "key": key, "data": folder, "eval_set": full.eval_name,
                  "train_images": len(full.train_images), "final_acc": history[-1][f"{full.eval_name}_acc"], "seconds": seconds,
                  "config": json.loads(config_to_json(config))}
        cache_dir().mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous().cpu() for k, v in model.state_dict().items()}, str(weights))
        record_file.write_text(json.dumps(record, indent=2) + "\n")
        log_line(f"teacher {path}: trained in {seconds:.0f} s, {full.eval_name} acc {record['final_acc']:.2f}%")
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    summary = {k: record[k] for k in ("teacher", "name", "key", "eval_set", "final_acc", "seconds")}
    _loaded[key] = (model, summary)
    return _loaded[key]
