"""The command line: `python -m search COMMAND ...`.

Each command parses its options, turns user mistakes into one-line errors (exit 2) and
calls one module that does the work. Heavy imports (torch, optuna) happen inside the
commands, so `summary` and `--help` answer at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from search.errors import DataError, UsageError
from space.config import DEFAULT_MAX_PARAMS, ConfigError, RunConfig, count_params, layer_rows, load_config


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


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

    config = load_config(args.config)
    if args.epochs:
        config = replace(config, epochs=args.epochs)
    check_limit(config, str(args.config), args.max_params, args.allow_over_limit)
    device = _device(args.device)
    split = load_split(resolve_data_dir(args.data_dir), device, validation=False)
    out = args.out or Path("runs") / f"reproduce-{config.name or Path(args.config).stem}-{datetime.now():%Y%m%d-%H%M%S}.json"
    reproduce(config, args.seeds, split, out)


def cmd_bench(args: argparse.Namespace) -> None:
    from search.bench import bench
    from search.data import resolve_data_dir

    bench(resolve_data_dir(args.data_dir), _device(args.device), args.steps, args.rounds)


def _device(name: str):
    from search.train import resolve_device

    try:
        return resolve_device(name)
    except ValueError as e:
        raise UsageError(str(e)) from None


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m search", description="Find tiny MNIST classifiers under a hard parameter limit with Optuna.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def data_and_device(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", help="folder holding MNIST/raw/ (default: $SEARCH_DATA_DIR, else ./data)")
        p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present, else CPU")

    p = commands.add_parser("summary", help="layer table and exact parameter count of a config")
    p.add_argument("config", type=Path)
    p.add_argument("--max-params", type=positive_int, default=DEFAULT_MAX_PARAMS)
    p.set_defaults(func=cmd_summary)

    p = commands.add_parser("reproduce", help="train a config on all 60,000 images and report test accuracy")
    p.add_argument("config", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[1], help="one run per seed (default: 1)")
    p.add_argument("--epochs", type=positive_int, help="override the config's epoch count")
    p.add_argument("--out", type=Path, help="JSON record of the run (default: runs/reproduce-NAME-TIME.json)")
    p.add_argument("--max-params", type=positive_int, default=DEFAULT_MAX_PARAMS)
    p.add_argument("--allow-over-limit", action="store_true", help="train a config over --max-params")
    data_and_device(p)
    p.set_defaults(func=cmd_reproduce)

    p = commands.add_parser("bench", help="images/s of our pipeline against the seed's PIL DataLoader")
    p.add_argument("--steps", type=positive_int, default=60, help="training steps of 128 images per round (default: 60)")
    p.add_argument("--rounds", type=positive_int, default=3, help="rounds per pipeline, alternating (default: 3)")
    data_and_device(p)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, DataError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
