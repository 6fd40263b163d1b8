"""Distillation teachers: a teacher config trained once per data folder and split, then cached.

A student trained on the search's split (50,000 training images, scored on validation)
learns from a teacher trained on those 50,000 images; a student trained by `reproduce`
(60,000 images, scored on test) from one trained on all 60,000. The teacher never sees the
images its student is scored on. Its weights and record (config, accuracy, seconds) are kept
in $SEARCH_CACHE_DIR (default runs/cache/) under a name made from the teacher's config,
the data folder and the split, so a changed teacher config trains a new teacher and every
later student reuses it.

The cache is checked before any training (an hour of teacher training must not end in "cannot
write there"); its files are written under a temporary name and renamed, so a crash never
leaves half a file under the real name; a lock file per teacher makes a second process (a
worker of `confirm --workers 2`) wait for the first's teacher instead of training its own; a
cached file that cannot be read is trained again, with a line saying so.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path

from filelock import FileLock, Timeout
from torch import nn

from search.console import log_line
from search.data import Split, load_split
from search.storage import writable_folder
from search.train import DivergedError, train
from space.config import ConfigError, RunConfig, config_to_json, load_config
from space.model import build_model

CACHE_ENV = "SEARCH_CACHE_DIR"
DEFAULT_CACHE = "runs/cache"

_loaded: dict[str, tuple[nn.Module, dict]] = {}  # this process's teachers, by cache key
RECORD_KEYS = ("teacher", "name", "key", "eval_set", "final_acc", "seconds", "train_images")  # what the cache's record must hold


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def usable_cache_dir() -> Path:
    """The cache folder, created if needed and proven to take a file; a one-line UsageError naming it otherwise."""
    return writable_folder(cache_dir(), "teacher cache", f"set {CACHE_ENV} to a writable folder")


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
    key = cache_key(config, split)
    if key in _loaded:
        return _loaded[key]
    cache = usable_cache_dir()
    weights, record_file = cache / f"teacher-{key}.safetensors", cache / f"teacher-{key}.json"
    lock = FileLock(str(lock_file(key)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log_line(f"teacher {path}: another process is training or writing it ({lock.lock_file}); waiting for it")
        lock.acquire()
    try:
        model, record = _cached(path, config, weights, record_file)
        if model is None:
            model, record = _train_and_cache(path, config, split, key, folder, weights, record_file)
    finally:
        lock.release()
    model = model.to(split.train_images.device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    summary = {k: record[k] for k in RECORD_KEYS if k != "train_images"}
    _loaded[key] = (model, summary)
    return _loaded[key]


def cache_key(config: RunConfig, split: Split) -> str:
    """The name of a teacher in the cache: its config, the data folder and the split's kind."""
    return hashlib.sha256(f"{config_to_json(config)}\n{split.root.resolve()}\n{split.eval_name}".encode()).hexdigest()[:16]


def lock_file(key: str) -> Path:
    """The lock a process holds while it looks for, trains and writes teacher `key`."""
    return cache_dir() / f".teacher-{key}.lock"  # hidden: not a cache entry


def _cached(path: str, config: RunConfig, weights: Path, record_file: Path) -> tuple[nn.Module | None, dict | None]:
    """The cached teacher and its record, or (None, None) when there is none or it cannot be read (said in a line)."""
    if not record_file.is_file():  # written last: without it there is no complete teacher
        return None, None
    from safetensors.torch import load_file

    model = build_model(config)
    try:
        record = json.loads(record_file.read_text())
        missing = [k for k in RECORD_KEYS if k not in record]
        if missing:
            raise KeyError(f"no {missing[0]!r} in the record")
        model.load_state_dict(load_file(str(weights)))
        line = (f"teacher {path}: cached ({record['eval_set']} acc {record['final_acc']:.2f}%, trained in {record['seconds']:.0f} s "
                f"on {record['train_images']:,} images; {weights})")
    except Exception as e:  # a damaged or foreign file: JSON, safetensors and load_state_dict each raise their own
        log_line(f"teacher {path}: the cached {weights.name} / {record_file.name} cannot be read ({type(e).__name__}: "
                 f"{str(e).splitlines()[0][:120] if str(e) else 'no detail'}); training it again")
        return None, None
    log_line(line)
    return model, record


def _train_and_cache(path: str, config: RunConfig, split: Split, key: str, folder: str, weights: Path,
                     record_file: Path) -> tuple[nn.Module, dict]:
    from safetensors.torch import save_file

    full = load_split(split.root, split.train_images.device, validation=split.eval_name == "val", dataset=split.dataset)  # the whole training set of this kind
    log_line(f"teacher {path}: training it once for {folder} ({len(full.train_images):,} images, {config.epochs} epochs); "
             f"cached in {weights.parent}")
    start = time.perf_counter()
    try:
        model, history = train(replace(config, name=config.name or "teacher"), full)
    except DivergedError as e:  # nothing is cached: a corrected teacher config trains afresh
        raise ConfigError(f"distill.teacher: {path} diverged in training ({e}); lower its learning rate") from None
    seconds = time.perf_counter() - start
    record = {"teacher": path, "name": config.name, "key": key, "data": folder, "eval_set": full.eval_name,
              "train_images": len(full.train_images), "final_acc": history[-1][f"{full.eval_name}_acc"], "seconds": seconds,
              "config": json.loads(config_to_json(config))}
    state = {k: v.contiguous().cpu() for k, v in model.state_dict().items()}
    _write_atomically(weights, lambda temporary: save_file(state, str(temporary)))
    _write_atomically(record_file, lambda temporary: temporary.write_text(json.dumps(record, indent=2) + "\n"))  # last: marks it complete
    log_line(f"teacher {path}: trained in {seconds:.0f} s, {full.eval_name} acc {record['final_acc']:.2f}%")
    return model, record


def _write_atomically(path: Path, write) -> None:
    """write(temporary) beside `path`, then rename it to `path`: a reader sees the whole file or none."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
