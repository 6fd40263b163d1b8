"""The command line: `python -m search COMMAND ...`.

Each command parses its options, turns user mistakes into one-line errors (exit 2) and
calls one module that does the work. Heavy imports (torch, optuna) happen inside the
commands, so `summary` and `--help` answer at once.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from pathlib import Path
from typing import Callable

from search.answer import MAX_LOSS_LEVEL
from search.errors import ConfigError, DataError, Diverged, TargetMissed, UsageError, WorkerDied


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
percentage = option_type(float, lambda v: 0 <= v <= 100, "a percentage in [0, 100]")
points = option_type(float, lambda v: 0 <= v <= 100, "accuracy points in [0, 100]")
loss_ratio = option_type(float, lambda v: v == 0 or (math.isfinite(v) and v >= 1), "a ratio >= 1 (0: no band)")
loss_level = option_type(float, lambda v: 0 < v <= MAX_LOSS_LEVEL, f"a validation loss in (0, {MAX_LOSS_LEVEL:g}]")


# ---------------------------------------------------------------- commands: each calls one function


def cmd_summary(a: argparse.Namespace) -> None:
    from search.summary import summary_command

    summary_command(a.config, a.max_params)


def cmd_run(a: argparse.Namespace) -> None:
    from search.runner import RunOptions, run_command

    run_command(RunOptions(a.study_file, name=a.study, trials=a.trials, max_params=a.max_params, seed=a.seed, epochs=a.epochs,
                           subset=a.subset, timeout=a.timeout, storage=a.storage, out=a.out, workers=a.workers, fail_stale=a.fail_stale,
                           data_dir=a.data_dir, device=a.device))


def cmd_confirm(a: argparse.Namespace) -> None:
    from search.confirm import ConfirmOptions, confirm_command

    confirm_command(ConfirmOptions(a.study, storage=a.storage, top=a.top, near=a.near, near_loss=a.near_loss, seeds=a.seeds, max_seeds=a.max_seeds, timeout=a.timeout,
                                   workers=a.workers, out=a.out, data_dir=a.data_dir, device=a.device, trials=tuple(a.trial or ())))


def cmd_export(a: argparse.Namespace) -> None:
    from search.answer import Level
    from search.export import export_command

    given = {"acc": a.target_acc, "loss": a.target_loss, "elastic_loss": a.target_elastic_loss}
    level = next((Level(value, measure) for measure, value in given.items() if value is not None), None)
    export_command(a.study, a.storage, a.out, level)


def cmd_reproduce(a: argparse.Namespace) -> None:
    from search.reproduce import ReproduceOptions, reproduce_command

    reproduce_command(ReproduceOptions(a.config, study=a.study, storage=a.storage, trial=a.trial, as_trained=a.as_trained,
                                       seeds=tuple(a.seeds), epochs=a.epochs, out=a.out, max_params=a.max_params,
                                       allow_over_limit=a.allow_over_limit, data_dir=a.data_dir, device=a.device))


def cmd_evaluate(a: argparse.Namespace) -> None:
    from search.evaluate import evaluate_command

    evaluate_command(a.model, a.config, a.data_dir, a.device)


def cmd_report(a: argparse.Namespace) -> None:
    from search.report import report_command

    report_command(a.study, a.storage, a.out)


def cmd_dashboard(a: argparse.Namespace) -> None:
    from search.dashboard import dashboard_command

    dashboard_command(a.study, a.storage, a.artifacts, a.host, a.port)


def cmd_bench(a: argparse.Namespace) -> None:
    from search.bench import bench_command

    bench_command(a.data_dir, a.device, a.steps, a.rounds, a.warmup, a.recipe, a.nets)


# ---------------------------------------------------------------- parser


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, instead of argparse's usage block
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from search.summary import DEFAULT_MAX_PARAMS  # (no torch)

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
    p.add_argument("--max-params", type=positive_int, default=DEFAULT_MAX_PARAMS, help=f"(default: {DEFAULT_MAX_PARAMS:,})")
    p.set_defaults(func=cmd_summary)

    p = commands.add_parser("run", help="run (or resume) a search study")
    p.add_argument("study_file", type=Path, metavar="STUDY.toml")
    p.add_argument("--study", help="study name (default: the study file's name field)")
    p.add_argument("--trials", type=positive_int, help="run until the study holds N finished trials")
    p.add_argument("--timeout", type=seconds, help="a hard bound on the search: nothing trains past S seconds (0: start none, only report)")
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

    p = commands.add_parser("export", help="write a study's best trial as best.json, and the answer to its [region] answer_elastic_loss "
                            "(else answer_loss, else answer_acc, else target_acc)")
    existing_study(p)
    level = p.add_mutually_exclusive_group()
    level.add_argument("--target-acc", type=percentage,
                       help="instead: the smallest confirmed config whose mean validation accuracy reaches this (%%), as target-ACC.json "
                            "(default: best.json, and the answer to the study's own level: target-elastic-loss-LOSS.json for its [region] "
                            "answer_elastic_loss, target-loss-LOSS.json for its answer_loss, else target-ACC.json for its answer_acc, else its target_acc)")
    level.add_argument("--target-loss", type=loss_level,
                       help="instead: the smallest confirmed config whose mean final validation loss is at most this, as target-loss-LOSS.json")
    level.add_argument("--target-elastic-loss", type=loss_level,
                       help="instead: the smallest confirmed config whose mean final validation loss under elastic distortion is at most this, "
                            "as target-elastic-loss-LOSS.json")
    p.add_argument("--out", type=Path, help="output folder (default: studies/NAME/)")
    p.set_defaults(func=cmd_export)

    p = commands.add_parser("confirm", help="retrain a study's candidates at the export budget with more seeds (validation split)")
    existing_study(p)
    p.add_argument("--top", type=positive_int, help="candidates: K at most, the region's trials in promotion order (each front's ends, "
                   "then spread by size; with --near, those near the target; with --near-loss, those near the region's lowest loss), or the best trials (default: the study file's)")
    p.add_argument("--near", type=points, metavar="P", help="only the region's trials at most P points under the study's answer level "
                   "([region] answer_acc, else target_acc; refused with an answer_loss or answer_elastic_loss) at the last rung, else the most accurate (default: the study file's [confirm] near; 0: every trial of the region)")
    p.add_argument("--near-loss", type=loss_ratio, metavar="R", help="only the region's trials whose last-rung validation loss is at "
                   "most R times the region's lowest; under --timeout the time left takes them first, then the others by that loss "
                   "(default: the study file's [confirm] near_loss; 0: every trial of the region)")
    p.add_argument("--trial", type=non_negative_int, nargs="+", metavar="N", help="instead: these COMPLETE trials, and only these")
    p.add_argument("--seeds", type=positive_int, help="seeds per candidate in the first round, never the search's (default: the study file's, else 2)")
    p.add_argument("--max-seeds", type=non_negative_int, help="then more seeds, up to this many, for a candidate whose interval holds the "
                   "study's answer level ([region] answer_elastic_loss, answer_loss, else answer_acc, else target_acc) (default: the study file's; 0: none)")
    p.add_argument("--timeout", type=seconds, help="a hard bound: a round starts only for the runs expected to end within S seconds of "
                   "the start of confirmation, and none trains past it (default: the study file's [confirm] timeout, else none)")
    p.add_argument("--workers", type=positive_int, default=1, help="worker processes sharing the study (default: 1)")
    p.add_argument("--out", type=Path, help="where best.json goes (default: studies/NAME/)")
    data_and_device(p)
    p.set_defaults(func=cmd_confirm)

    p = commands.add_parser("reproduce", help="train a config (or a study's best trial) on all 60,000 images; report test accuracy")
    p.add_argument("config", type=Path, nargs="?", help="a config file, or --study NAME for its best trial (or --trial N)")
    existing_study(p, required=False)
    p.add_argument("--trial", type=non_negative_int, help="with --study: this trial instead of the best")
    p.add_argument("--as-trained", action="store_true", help="with --trial: retrain exactly as the study did (its split, training and validation images, seed, epochs)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1], help="one run per seed (default: 1)")
    p.add_argument("--epochs", type=positive_int, help="override the config's epoch count")
    p.add_argument("--out", type=Path, help="JSON record of the run (default: runs/reproduce-NAME-TIME.json, or in the study's folder)")
    p.add_argument("--max-params", type=positive_int, help=f"(default: a study's own limit with --study, else {DEFAULT_MAX_PARAMS:,})")
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
    p.add_argument("--steps", type=positive_int, default=40, help="training steps per round (of 128 images; with --recipe, of the config's batch) (default: 40)")
    p.add_argument("--rounds", type=positive_int, default=15, help="timed rounds per pipeline, alternating (default: 15)")
    p.add_argument("--warmup", type=non_negative_int, default=2, help="untimed rounds per pipeline first (default: 2)")
    instead = p.add_mutually_exclusive_group()
    instead.add_argument("--recipe", type=Path, nargs="+", metavar="CONFIG",
                   help="instead: ms a training step of each CONFIG takes with none / ema / elastic / distill, side by side")
    instead.add_argument("--nets", type=Path, nargs="*", metavar="CONFIG",
                   help="instead: each CONFIG's training step against the machine (images/s, GFLOP/s, share of a large matrix "
                        "product's rate; forward, backward, optimizer apart) on each training path (default: step3, "
                        "front3991-onecycle, pareto-cpu-s1-trial32)")
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
