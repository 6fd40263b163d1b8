"""`summary`: a config's layer table and exact parameter count, against a limit (no torch: it answers at once)."""

from __future__ import annotations

from pathlib import Path

from space.config import DEFAULT_MAX_PARAMS, count_params, layer_rows, load_config, over_limit

__all__ = ["DEFAULT_MAX_PARAMS", "summary_command"]


def summary_command(config_file: Path, max_params: int = DEFAULT_MAX_PARAMS) -> None:
    config = load_config(config_file)
    rows = layer_rows(config)
    width = max(len(d) for d, _, _ in rows)
    print(f"{config_file}" + (f" ({config.name})" if config.name else ""))
    print(f"{'#':>3}  {'layer':<{width}}  {'output shape':<13} {'params':>10}")
    print(f"{'':>3}  {'input':<{width}}  {'1x28x28':<13} {0:>10}")
    for i, (description, shape, params) in enumerate(rows):
        print(f"{i:>3}  {description:<{width}}  {'x'.join(map(str, shape)):<13} {params:>10,}")
    total = count_params(config)
    verdict = "OVER" if over_limit(total, max_params) else "within"
    print(f"total params: {total:,} ({verdict} the {max_params:,} limit)")
