"""The command line: `python -m search COMMAND ...`.

Each command parses its options, turns user mistakes into one-line errors (exit 2) and
calls one module that does the work. Heavy imports (torch, optuna) happen inside the
commands, so `summary` and `--help` answer at once.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from pathlib import Path
from typing import Callable

from search.errors import DataError, Diverged, TargetMissed, UsageError, WorkerDied
from space.config import DEFAULT_MAX_PARAMS, ConfigError, RunConfig, count_params, layer_rows, load_config


def option_type(parse: Callable[[str], float], ok: Callable[[float], bool], meaning: str) -> Callable[[str], float]:
    """An argparse `type` that parses with `parse` and accepts what `ok` says; errors say `meaning`."""
    def convert(text: str) -> float:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {meaning}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {meaning}, got {value}")
        return value
    return convert


positive_int = option_type(int, lambda v: v > 0, "a positive integer")
non_negative_int = option_type(int, lambda v: v >= 0, "a whole number >= 0")
seconds = option_type(float, lambda v: math.isfinite(v) and v >= 0, "a finite number of seconds >= 0")
port_number = option_type(int, lambda v: 1 <= v <= 65535, "a port number in 1-65535")


def writable_folder(folder: Path, option: str) -> None:
    """Create `folder` if needed and prove it takes a file, before any work starts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"{option} {folder}: cannot create or write there ({e.strerror or type(e).__name__}); pass {option} a writable folder") from None


def check_limit(config: RunConfig, source: str, max_params: int, allow_over_limit: bool) -> None:
    n = count_params(config)
    if n > max_params and not allow_over_limit:
        raise UsageError(f"{source}: {n:,} parameters is over the {max_params:,} limit; pass --allow-over-limit to train it anyway")


# ---------------------------------------------------------------- commands


def cmd_summary(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    rows = layer_rows(config)
    width = max(len(d) for d, _, _ in rows)
    print(f"{args.config}" + (f" ({config.name})" if config.name else ""))
    print(f"{'#':>3}  {'layer':<{width}}  {'output shape':<13} {'params':>10}")
    print(f"{'':>3}  {'input':<{width}}  {'1x28x28':<13} {0:>10}")
    for i, (description, shape, params) in enumerate(rows):
        print(f"{i:>3}  {description:<{width}}  {'x'.join(map(str, shape)):<13} {params:>10,}")
    total = count_params(config)
    verdict = "within" if total <= args.max_params else "OVER"
    print(f"total params: {total:,} ({verdict} the {args.max_params:,} limit)")


def cmd_reproduce(args: argparse.Namespace) -> None:
    from dataclasses import replace
    from datetime import datetime

    from search.data import load_split, resolve_data_dir
    from search.reproduce import reproduce

    if (args.config is None) == (args.study is None):
        raise UsageError("reproduce takes a CONFIG.json or --study NAME (one of the two)")
    if args.as_trained and args.trial is None:
        raise UsageError("--as-trained needs --trial N")
    seeds, validation, subset = args.seeds, False, None
    if args.config is not None:
        config, source = load_config(args.config), str(args.config)
        default_out = Path("runs") / f"reproduce-{config.name or args.config.stem}-{datetime.now():%Y%m%d-%H%M%S}.json"
    else:
        from search.storage import load_existing_study
        from search.study import export_config, trial_config

        study = load_existing_study(args.study, args.storage)
        trial = _trial(study, args.trial)
        source = f"study {args.study!r} trial {trial.number}"
        if args.as_trained:  # exactly as the study trained it: same split, subset, seed, epochs and CPU threads
            if "subset" not in trial.user_attrs:
                raise UsageError(f"trial {trial.number} of {args.study!r} was never trained ({trial.user_attrs.get('reason', trial.state.name)}); "
                                 f"--as-trained needs a trial that trained")
            config, validation, seeds = trial_config(trial), True, [trial_config(trial).seed]
            # a Pareto trial's record is the curve of the last rung it trained (a stopped one: the rung it stopped at)
            subset = trial.user_attrs["rungs"][-1]["images"] if trial.user_attrs.get("rungs") else trial.user_attrs["subset"]
            if "threads" in trial.user_attrs and _device(args.device).type == "cpu":
                import torch

                torch.set_num_threads(trial.user_attrs["threads"])
        else:
            config = export_config(study, trial)
        default_out = Path("studies") / args.study / (f"reproduce-trial{trial.number}" + ("-as-trained" if args.as_trained else "") + ".json")
    if args.epochs:
        config = replace(config, epochs=args.epochs)
    check_limit(config, source, args.max_params, args.allow_over_limit)
    out = args.out or default_out
    writable_folder(out.parent, "--out")
    split = load_split(resolve_data_dir(args.data_dir), _device(args.device), validation=validation, subset=subset)
    record = reproduce(config, seeds, split, out)
    if not record["runs"]:
        raise Diverged(f"{source}: training diverged on every seed ({', '.join(map(str, seeds))}); lower its learning rate")
    if args.as_trained:
        recorded = [m["val_acc"] for m in trial.user_attrs.get("epochs", [])]
        now = [m["val_acc"] for m in record["runs"][0]["epochs"]]
        same = now[: len(recorded)] == recorded
        print(f"recorded val acc per epoch ({subset:,} training images): {recorded}")
        print(f"matches the study's record exactly: {'yes' if same else 'NO'}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from search.data import load_mnist, resolve_data_dir
    from search.model_files import MODEL_SUFFIXES, evaluate_model_file, find_config, recorded_accuracy

    path: Path = args.model
    if path.suffix not in MODEL_SUFFIXES:
        raise UsageError(f"{path}: expected a {' or '.join(MODEL_SUFFIXES)} file written by `reproduce`")
    if not path.is_file():
        raise UsageError(f"{path}: no such model file")
    config = source = None
    if path.suffix == ".safetensors":  # the ONNX graph is self-contained; the weights need their network
        config, source = (load_config(args.config), str(args.config)) if args.config else find_config(path)
    images, labels = load_mnist(resolve_data_dir(args.data_dir), train=False)
    try:
        accuracy = evaluate_model_file(path, config, images.to(_device(args.device)), labels)
    except Exception as e:  # a damaged file, or weights that do not fit the config
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{path}: cannot be evaluated ({first[:200]})" + ("; check --config" if config else "")) from None
    print(f"{path}" + (f" (config from {source})" if source else "") + f": test accuracy {accuracy:.2f}% on {len(labels):,} MNIST test images")
    recorded = recorded_accuracy(path)
    if recorded is not None:
        print(f"recorded final test accuracy of this run: {recorded:.2f}% ({'the same' if abs(recorded - accuracy) < 1e-9 else 'DIFFERENT'})")


def _trial(study, number: int | None):
    from search.confirm import best_trial

    if number is None:
        return best_trial(study)
    trials = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    if not trials or "config" not in trials[0].user_attrs:
        raise UsageError(f"study {study.study_name!r} has no trial {number} with a config; see its trials in the dashboard or `report`")
    return trials[0]


def cmd_run(args: argparse.Namespace) -> None:

    from search.data import load_mnist, load_split, resolve_data_dir
    from search.export import export_best
    from search.report import publish_best
    from search.storage import default_storage, fail_stale, heartbeat_enabled, open_storage, stale_trials
    from search.runner import create_or_resume, run_workers, trial_line
    from search.confirm import best_trial
    from search.study import load_study_spec

    options = {"name": ("--study", args.study), "trials": ("--trials", args.trials), "max_params": ("--max-params", args.max_params),
               "seed": ("--seed", args.seed), "training.epochs": ("--epochs", args.epochs), "training.subset": ("--subset", args.subset)}
    spec = load_study_spec(args.study_file, {field: option for field, option in options.items() if option[1] is not None})
    training = spec.training
    out = args.out or Path("studies") / spec.name
    writable_folder(out, "--out")
    device = _device(args.device)
    data_dir = resolve_data_dir(args.data_dir)
    if args.workers == 1:  # load the data before touching the study: a data error leaves the study as it was
        split = load_split(data_dir, device, validation=True, subset=training.subset)
        split_loader = lambda: split  # noqa: E731
    else:
        load_mnist(data_dir, train=True)  # the same check; each worker then loads its own copy
        split_loader = None
    url = args.storage or default_storage(out, args.workers)
    storage = open_storage(url, (spec.heartbeat_interval, spec.grace_period))
    study, created = create_or_resume(spec, storage, url)
    stale = [] if heartbeat_enabled(storage) else stale_trials(study)  # RDB heartbeats re-queue dead workers' trials
    for trial in stale:
        print(f"trial {trial.number} is RUNNING but its worker {trial.user_attrs['worker']} is gone"
              + ("; marking it FAIL" if args.fail_stale else "; rerun with --fail-stale to mark it FAIL"))
    if stale and args.fail_stale:
        fail_stale(study, stale)
    threads = max(1, (os.cpu_count() or 1) // args.workers) if device.type == "cpu" else None
    print(f"study {spec.name!r} ({spec.family} family): {spec.trials} trials, {training.epochs} epochs on {training.subset:,} training images a trial, "
          f"limit {spec.max_params:,} params, device {device}, {args.workers} worker(s), storage {mask(url)}", flush=True)
    run_workers(spec, study, created, url, out, device, data_dir, split_loader, args.timeout, args.workers, threads)
    if not any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)):
        print("no trial has completed yet, so there is no best.json; rerun to go on")
        return
    if spec.confirm.after_run:
        _confirm(study, url, spec.confirm.top, spec.confirm.seeds, device, data_dir, args.workers, spec.confirm.subset)
    best = best_trial(study)
    path = export_best(study, out)
    publish_best(study)
    print(f"best: {trial_line(best)}" + (" (best confirmed mean)" if study.user_attrs.get("confirmed") else ""))
    print(f"best config: {path}  (python -m search reproduce {path} --seeds 1 2 3)")
    default_place = not args.storage and out == Path("studies") / spec.name
    ours = f"python -m search dashboard --study {spec.name}" + ("" if default_place else f" --storage {mask(url)} --artifacts {out}")
    print(f"dashboard: {ours}   (or: optuna-dashboard {mask(url)} --artifact-dir {out / 'artifacts'})")


def cmd_export(args: argparse.Namespace) -> None:
    from search.confirm import format_row
    from search.export import export_best, export_target
    from search.storage import load_existing_study

    from search.confirm import best_trial

    study = load_existing_study(args.study, args.storage)
    best_trial(study)  # a study with nothing to export is refused before any folder is made
    out = args.out or Path("studies") / args.study
    writable_folder(out, "--out")
    if args.target_acc is not None:
        path, row = export_target(study, out, args.target_acc)
        print(f"smallest confirmed config reaching {args.target_acc:g} %: {format_row(row)}; written to {path}")
        return
    path = export_best(study, out)
    print(f"best config written to {path}")


def cmd_confirm(args: argparse.Namespace) -> None:
    from search.data import load_mnist, resolve_data_dir
    from search.export import export_best
    from search.report import publish_best
    from search.storage import load_existing_study, storage_of_existing

    study = load_existing_study(args.study, args.storage)
    url = storage_of_existing(args.study, args.storage)
    defaults = study.user_attrs["spec"].get("confirm", {})
    top, seeds = args.top or defaults.get("top", 3), args.seeds or defaults.get("seeds", 2)
    out = args.out or Path("studies") / args.study
    writable_folder(out, "--out")  # before hours of training, not after
    data_dir = resolve_data_dir(args.data_dir)
    load_mnist(data_dir, train=True)  # a data error before any run is enqueued
    _confirm(study, url, top, seeds, _device(args.device), data_dir, args.workers, defaults.get("subset", 50_000))
    path = export_best(study, out)
    publish_best(study)
    print(f"best config (best confirmed mean) written to {path}")


def _confirm(study, url: str, top: int, seeds: int, device, data_dir: Path, workers: int, subset: int) -> None:
    """Confirm `study`'s candidates and print the table of mean ± std per candidate."""
    from search.confirm import candidates, confirmed_rows, format_row
    from search.runner import confirm

    if workers > 1 and url.startswith("sqlite"):
        raise UsageError(f"{mask(url)} is SQLite, which is not safe for several workers; rerun with --workers 1 or use a journal file or PostgreSQL")
    if not candidates(study, top):
        raise UsageError(f"study {study.study_name!r} has no COMPLETE trial to confirm; run it longer first")
    threads = max(1, (os.cpu_count() or 1) // workers) if device.type == "cpu" else None
    confirm(study, url, top, seeds, device, data_dir, workers, threads, subset)
    rows = confirmed_rows(study)
    print(f"confirmed {len(rows)} candidate(s), smallest first:")
    for row in rows:
        print("  " + format_row(row))


def cmd_report(args: argparse.Namespace) -> None:
    from search.report import write_report
    from search.storage import load_existing_study

    study = load_existing_study(args.study, args.storage)
    out = args.out or Path("studies") / args.study / "report"
    writable_folder(out, "--out")
    written = write_report(study, out)
    print("wrote " + ", ".join(str(p) for p in written))


def cmd_dashboard(args: argparse.Namespace) -> None:
    import socket

    import optuna_dashboard

    from optuna.artifacts import FileSystemArtifactStore

    from search.artifacts import ARTIFACTS
    from search.storage import load_existing_study

    study = load_existing_study(args.study, args.storage)
    with socket.socket() as probe:  # a clear message now beats a traceback from inside the server
        try:
            probe.bind((args.host, args.port))
        except OSError:
            raise UsageError(f"port {args.port} on {args.host} is in use (or not bindable); pass --port with a free port") from None
    study_id = study._storage.get_study_id_from_name(study.study_name)
    folder = args.artifacts or Path("studies") / args.study
    store = FileSystemArtifactStore(folder / ARTIFACTS) if (folder / ARTIFACTS).is_dir() else None  # serve, never create
    print(f"optuna-dashboard for study {args.study!r}: http://{args.host}:{args.port}/dashboard/studies/{study_id}  (Ctrl-C stops it)", flush=True)
    optuna_dashboard.run_server(study._storage, host=args.host, port=args.port, artifact_store=store)


def mask(url: str) -> str:
    from search.storage import mask_password

    return mask_password(url)


def cmd_bench(args: argparse.Namespace) -> None:
    from search.bench import bench
    from search.data import resolve_data_dir

    bench(resolve_data_dir(args.data_dir), _device(args.device), args.steps, args.rounds, args.warmup)


def _device(name: str):
    from search.train import resolve_device

    try:
        return resolve_device(name)
    except ValueError as e:
        raise UsageError(str(e)) from None


# ---------------------------------------------------------------- parser


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, instead of argparse's usage block
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m search", description="Find tiny MNIST classifiers under a hard parameter limit with Optuna.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    def existing_study(p: argparse.ArgumentParser, required: bool = True) -> None:
        p.add_argument("--study", required=required, help="study name")
        p.add_argument("--storage", help="the study's storage URL or journal file (default: studies/NAME/study.db or journal.log)")

    def data_and_device(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", help="folder holding MNIST/raw/ (default: $SEARCH_DATA_DIR, else ./data)")
        p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present, else CPU")

    p = commands.add_parser("summary", help="layer table and exact parameter count of a config")
    p.add_argument("config", type=Path)
    p.add_argument("--max-params", type=positive_int, default=DEFAULT_MAX_PARAMS)
    p.set_defaults(func=cmd_summary)

    p = commands.add_parser("run", help="run (or resume) a search study")
    p.add_argument("study_file", type=Path, metavar="STUDY.toml")
    p.add_argument("--study", help="study name (default: the study file's name field)")
    p.add_argument("--trials", type=positive_int, help="run until the study holds N finished trials")
    p.add_argument("--timeout", type=seconds, help="stop starting trials after S seconds (0: start none, only report)")
    p.add_argument("--epochs", type=positive_int, help="epochs per trial")
    p.add_argument("--subset", type=positive_int, help="train each trial on the first N images of the training split")
    p.add_argument("--max-params", type=positive_int, help="hard parameter limit")
    p.add_argument("--seed", type=int, help="seed of the sampler and of every trial")
    p.add_argument("--storage", help="Optuna storage URL, or a journal file path (default: OUT/study.db, SQLite; "
                   "OUT/journal.log with several --workers)")
    p.add_argument("--out", type=Path, help="output folder (default: studies/NAME/)")
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes sharing the study on this machine (default: 1)")
    p.add_argument("--fail-stale", action="store_true", help="mark trials left RUNNING by dead workers on this host as FAIL")
    data_and_device(p)
    p.set_defaults(func=cmd_run)

    p = commands.add_parser("export", help="write a study's best trial as best.json")
    existing_study(p)
    p.add_argument("--target-acc", type=option_type(float, lambda v: 0 <= v <= 100, "a percentage in [0, 100]"),
                   help="instead: the smallest confirmed config whose mean validation accuracy reaches this (%%), as target-ACC.json")
    p.add_argument("--out", type=Path, help="output folder (default: studies/NAME/)")
    p.set_defaults(func=cmd_export)

    p = commands.add_parser("confirm", help="retrain a study's candidates at the export budget with more seeds (validation split)")
    existing_study(p)
    p.add_argument("--top", type=positive_int, help="candidates: the K most accurate of the Pareto front, or the top K trials (default: the study file's)")
    p.add_argument("--seeds", type=positive_int, help="seeds per candidate, after the study's own (default: the study file's, else 2)")
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes sharing the study (default: 1)")
    p.add_argument("--out", type=Path, help="where best.json goes (default: studies/NAME/)")
    data_and_device(p)
    p.set_defaults(func=cmd_confirm)

    p = commands.add_parser("reproduce", help="train a config (or a study's best trial) on all 60,000 images; report test accuracy")
    p.add_argument("config", type=Path, nargs="?", help="a config file, or --study NAME for its best trial (or --trial N)")
    existing_study(p, required=False)
    p.add_argument("--trial", type=non_negative_int, help="with --study: this trial instead of the best")
    p.add_argument("--as-trained", action="store_true", help="with --trial: retrain exactly as the study did (its split, subset, seed, epochs)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1], help="one run per seed (default: 1)")
    p.add_argument("--epochs", type=positive_int, help="override the config's epoch count")
    p.add_argument("--out", type=Path, help="JSON record of the run (default: runs/reproduce-NAME-TIME.json, or in the study's folder)")
    p.add_argument("--max-params", type=positive_int, default=DEFAULT_MAX_PARAMS)
    p.add_argument("--allow-over-limit", action="store_true", help="train a config over --max-params")
    data_and_device(p)
    p.set_defaults(func=cmd_reproduce)

    p = commands.add_parser("evaluate", help="test accuracy of a saved model (.onnx through onnxruntime, or .safetensors)")
    p.add_argument("model", type=Path, metavar="MODEL", help="a .onnx or .safetensors file written by `reproduce`")
    p.add_argument("--config", type=Path, help="the model's config (default: from the run record beside the file)")
    data_and_device(p)
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser("report", help="trials.csv, plots and a top-5 table of a study")
    existing_study(p)
    p.add_argument("--out", type=Path, help="output folder (default: studies/NAME/report/)")
    p.set_defaults(func=cmd_report)

    p = commands.add_parser("dashboard", help="serve optuna-dashboard on a study")
    existing_study(p)
    p.add_argument("--artifacts", type=Path, help="the study's output folder holding artifacts/ (default: studies/NAME/)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=port_number, default=8080)
    p.set_defaults(func=cmd_dashboard)

    p = commands.add_parser("bench", help="images/s of our pipeline against the seed's PIL DataLoader")
    p.add_argument("--steps", type=positive_int, default=40, help="training steps of 128 images per round (default: 40)")
    p.add_argument("--rounds", type=positive_int, default=15, help="timed rounds per pipeline, alternating (default: 15)")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed rounds per pipeline first (default: 2)")
    data_and_device(p)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # `kill -INT` acts as Ctrl-C even in a process started in the background (nohup, `cmd &` in a
    # script), which inherits SIGINT ignored; the workers (search/runner.py) do the same
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        args.func(args)
    except (ConfigError, DataError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (WorkerDied, TargetMissed, Diverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        resume = "; the running trial is marked FAIL: rerun the same command to resume" if args.command in ("run", "confirm") else ""
        print(f"interrupted{resume}", file=sys.stderr)
        return 130
    return 0
