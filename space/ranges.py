"""A family's [space] table: inclusive [low, high] ranges, lists of choices and single settings
(a word, such as the scale a range is sampled on), one parser for every family. The family's
`Space` dataclass names the keys and their defaults; its `Rules` say which ranges are integers
or log-scaled, their bounds, the type (and allowed values) of each list of choices, and the
words each setting may be."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from space.config import ConfigError, check


@dataclass(frozen=True)
class Rules:
    integers: tuple[str, ...] = ()  # [low, high] of whole numbers
    log_scale: tuple[str, ...] = ()  # sampled on a log scale: low must be > 0
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)  # where a range must lie
    choices: dict[str, type] = field(default_factory=dict)  # lists of the values to try, by type
    allowed: dict[str, tuple[Callable[[Any], bool], str]] = field(default_factory=dict)  # which choices make sense, and in words
    settings: dict[str, tuple[str, ...]] = field(default_factory=dict)  # one word each, of these


def parse_space(raw: Any, space: type, rules: Rules, where: str = "space") -> Any:
    """Validate a [space] table into the dataclass `space` (raises a one-line ConfigError)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must be a table, got {json.dumps(raw)}")
    known = [f.name for f in fields(space)]
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{where}.{key}"
        check(key in known, name, f"unknown key (expected one of: {', '.join(known)})")
        if key in rules.settings:
            words = rules.settings[key]
            check(value in words, name, f"must be one of {', '.join(json.dumps(w) for w in words)}, got {json.dumps(value)}")
            values[key] = value
        else:
            values[key] = _choices(value, rules, key, name) if key in rules.choices else _range(value, rules, key, name)
    return space(**values)


def _choices(value: Any, rules: Rules, key: str, name: str) -> tuple:
    t = rules.choices[key]
    ok = isinstance(value, list) and len(value) >= 1 and all(
        isinstance(v, t) and (t is bool or not isinstance(v, bool)) or (t is float and type(v) is int) for v in value)
    check(ok, name, f"must be a non-empty list of the {t.__name__} values to try, got {json.dumps(value)}")
    ok, meaning = rules.allowed.get(key, (lambda v: True, ""))
    bad = [v for v in value if not ok(v)]
    check(not bad, name, f"{json.dumps(bad[0]) if bad else ''} is not allowed here (each must be {meaning})")
    return tuple(dict.fromkeys(t(v) for v in value))


def _range(value: Any, rules: Rules, key: str, name: str) -> tuple:
    integer = key in rules.integers
    ok = isinstance(value, list) and len(value) == 2 and all(
        isinstance(v, int if integer else (int, float)) and not isinstance(v, bool) for v in value)
    check(ok, name, f"must be [low, high] with two {'integers' if integer else 'numbers'}, got {json.dumps(value)}")
    low, high = value
    check(math.isfinite(low) and math.isfinite(high), name, f"must be finite, got [{low}, {high}]")
    check(low <= high, name, f"low must be <= high, got [{low}, {high}]")
    lo, hi = rules.bounds.get(key, (-math.inf, math.inf))
    check(lo <= low and high <= hi, name, f"must lie within [{lo:g}, {hi:g}], got [{low}, {high}]")
    check(key not in rules.log_scale or low > 0, name, f"low must be > 0 (log scale), got {low}")
    return (low, high) if integer else (float(low), float(high))
