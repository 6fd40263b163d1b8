"""Errors a user can cause and fix. The command line prints them as one line and exits with 2.

Kept free of heavy imports so that every command can catch them cheaply."""

from space.config import ConfigError  # noqa: F401  (a bad config or study file: the config schema's own error)


class UsageError(Exception):
    """A mistake in how a command was called (a limit, a device, a study name, ...)."""


class DataError(Exception):
    """The data cannot be loaded; the message says where to put the files."""


class WorkerDied(Exception):
    """A worker process of `run --workers K` died; the study is kept and can be resumed (exit code 1)."""


class TargetMissed(Exception):
    """`export --target-acc`, `--target-loss` or `--target-elastic-loss`: no confirmed config reaches the level (exit code 1; the message names the closest)."""


class Diverged(Exception):
    """`reproduce`: the training loss diverged on every seed (exit code 1)."""
