"""Trials left RUNNING by dead workers or by Ctrl-C. A journal file has no heartbeat (an RDB
storage, SQLite included, re-queues such trials by its heartbeats: search/storage.py), so every
trial records its worker (host:pid), and a later run on the same host can tell which RUNNING
trials belong to processes that no longer exist, and mark them FAIL (`run --fail-stale`); a
process that takes Ctrl-C marks its own (`optimize_one`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence

import optuna

from search.optuna_internals import set_trial_user_attr


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_is_gone(trial: optuna.trial.FrozenTrial) -> bool:
    """True when a RUNNING trial's worker was a process on this host that no longer exists."""
    host, _, pid = trial.user_attrs.get("worker", "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's worker, or not started yet: assume alive
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def stale_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)) if worker_is_gone(t)]


def fail_stale(study: optuna.Study, trials: list[optuna.trial.FrozenTrial], by: str = "--fail-stale") -> None:
    for trial in trials:
        set_trial_user_attr(study, trial, "reason", f"its worker {trial.user_attrs['worker']} died; marked FAIL by {by}")
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def optimize_one(study: optuna.Study, func: Callable[[optuna.Trial], float | Sequence[float]], **options) -> None:
    """study.optimize(func, n_trials=1, **options), and on Ctrl-C no trial of this process left
    RUNNING once `func` has recorded its worker. Optuna marks a trial FAIL when Ctrl-C reaches `func`;
    when it strikes while Optuna stores a finished trial, Optuna raises an UnboundLocalError of its
    own in its place and the trial may stay RUNNING: that trial is marked FAIL here, with a second
    Ctrl-C held off meanwhile (with several workers each gets one from the terminal and one passed on
    by the command), and KeyboardInterrupt goes on up."""
    try:
        study.optimize(func, n_trials=1, gc_after_trial=False, **options)
    except BaseException as e:
        if not interrupted(e):
            raise
        with ctrl_c_held_off():
            me = worker_id()
            for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if trial.user_attrs.get("worker") == me:
                    set_trial_user_attr(study, trial, "reason", "interrupted (Ctrl-C)")
                    study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        raise KeyboardInterrupt from None


@contextlib.contextmanager
def ctrl_c_held_off() -> Iterator[None]:
    """SIGINT ignored inside (where a signal handler can be set: the main thread), restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)


def interrupted(error: BaseException | None) -> bool:
    """Whether `error` is Ctrl-C or was raised while Ctrl-C was being handled."""
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return True
        error = error.__context__
    return False
