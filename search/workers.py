"""Worker processes: several processes sharing one study through its storage (a journal file
or an RDB server), for the search and for confirmation alike. Each is forked from a server
process that has imported torch and the training modules but run nothing (multiprocessing's
forkserver: no CUDA context and no thread pool to inherit, as clean as a spawned process, but
started in a fraction of a second instead of the 6-8 s each import takes on 2 cores; the
confirmation's workers after the search's come from the same server). Each takes Ctrl-C like
the command that started it, and is supervised: a worker that dies is reported with the fate
of its trial."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import optuna
import torch
from tqdm import tqdm

from search.errors import WorkerDied
from search.stale import fail_stale
from search.console import log_line

Job = TypeVar("Job")


def run_in_workers(body: Callable[[Job, int], None], job: Job, workers: int, threads: int | None, study: optuna.Study) -> None:
    """Run body(job, index) in `workers` fresh processes (`threads` CPU threads each) and
    supervise them; `job` is a frozen dataclass (what crosses to the process, typed); `study`
    is where their trials are."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOADED)  # (read when the server starts: at this process's first worker)
    supervise([context.Process(target=_worker, args=(body, job, i, threads, os.getpid())) for i in range(workers)], study)


PRELOADED = ["search.loop", "search.confirm"]  # imported once in the fork server: the search's and confirmation's workers and all they train with


def _worker(body: Callable[[Job, int], None], job: Job, index: int, threads: int | None, command: int) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # see search/cli.py main
    if threads:
        torch.set_num_threads(threads)
    # tqdm's default lock is a multiprocessing semaphore; a worker killed while holding one
    # makes the parent's resource tracker print warnings at exit. A thread lock is enough here.
    tqdm.set_lock(threading.RLock())
    threading.Thread(target=_stop_when_orphaned, args=(command,), daemon=True).start()
    try:
        body(job, index)
    except KeyboardInterrupt:
        sys.exit(130)


def _stop_when_orphaned(command: int) -> None:
    """A worker whose command (process `command`; its parent is the fork server) is gone, killed
    by `kill` or SIGKILL, which it cannot pass on as it does Ctrl-C, stops as after Ctrl-C, its
    trial marked FAIL, instead of training on unattended beside whatever runs next (seen: a
    killed run's workers wrote into the next run's study)."""
    while _alive(command):
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGINT)


def _alive(pid: int) -> bool:
    """Whether process `pid` exists and has not ended (a zombie has ended; its parent just has not reaped it yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):  # no /proc (not Linux): existing is all we know
        return True


def supervise(processes: list[Any], study: optuna.Study) -> None:
    """Start worker processes of `study` and wait for them; pass Ctrl-C on; a worker that died
    is reported with the fate of its trial (marked FAIL), and WorkerDied raised at the end."""
    for p in processes:
        p.start()
    try:
        # the fork server reaps a dead worker (its parent), so the others see its pid gone and take
        # over its trial; a list, not any(), so that every worker is polled on every round
        while any([p.is_alive() for p in processes]):
            time.sleep(0.5)
    except KeyboardInterrupt:  # Ctrl-C reaches the workers too; a plain `kill -INT` of this process must as well
        for p in processes:
            if p.is_alive():
                os.kill(p.pid, signal.SIGINT)
        for p in processes:
            p.join()
        raise
    codes = [p.exitcode for p in processes]
    if 130 in codes:
        raise KeyboardInterrupt
    dead = [(i, p) for i, p in enumerate(processes) if p.exitcode]
    for i, p in dead:
        how = f"was killed by signal {-p.exitcode}" if p.exitcode < 0 else f"exited with code {p.exitcode}"
        mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("worker") == f"{socket.gethostname()}:{p.pid}"]
        orphans = [t for t in mine if t.state == optuna.trial.TrialState.RUNNING]
        fail_stale(study, orphans, by="the run that started it")
        if orphans:
            fate = "; ".join(f"its trial {t.number} was marked FAIL" for t in orphans)
        elif mine and mine[-1].state == optuna.trial.TrialState.FAIL:
            fate = f"its trial {mine[-1].number} had already been marked FAIL (heartbeat)"
        else:
            fate = "it held no running trial"
        log_line(f"worker {i} (pid {p.pid}) {how}; {fate}; the other workers' trials are kept")
    if dead:
        raise WorkerDied(f"{len(dead)} of {len(processes)} workers died (see above); rerun the same command to resume")
