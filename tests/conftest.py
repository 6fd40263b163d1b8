"""Shared test set-up: the MNIST copy beside the repository, the helpers every module uses, and
one tiny study of each kind (accuracy, Pareto), run once per session. A test that changes a
shared study works on its own copy (`copy_study`)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import pytest

from space.config import Augment, Conv, Distill, Elastic, LogSoftmax, Optimizer, RunConfig, Scheduler, save_config
from space.step3 import REFERENCE_PARAMS, config_from_params as step3_config

# One thread per process: the suite runs on two pytest-xdist workers (`-n 2`), each training in
# its own process, on two cores. A test that depends on the thread count sets it itself.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a test that asks for two threads must not spin against the other worker
# torch.compile (one test) compiles in its own process, not in a pool that would take the other worker's core
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
# Tests and CI read MNIST from ../shared/data unless SEARCH_DATA_DIR says otherwise.
os.environ.setdefault("SEARCH_DATA_DIR", str(ROOT.parent / "shared" / "data"))
DATA_DIR = Path(os.environ["SEARCH_DATA_DIR"])
REFERENCE = ROOT / "studies" / "reference"
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]

TINY = """
name = "tiny"
trials = 8
max_params = 4000
seed = 3

[training]
epochs = 3
subset = 256
export_epochs = 6
validation = 1000

[pruner]
kind = "median"
startup_trials = 2

[space]
conv1 = [4, 16]
conv2 = [4, 16]
transition = [4, 16]
conv3 = [4, 16]
conv4 = [4, 16]
conv5 = [4, 16]
"""

PARETO = """
name = "tinypareto"
objective = "pareto"
trials = 8
max_params = 4000
seed = 3

[training]
epochs = 3
subset = 512
export_epochs = 3
validation = 1000

[fidelity]
rungs = 2
eta = 2

[confirm]
top = 2
seeds = 2
after_run = true
subset = 512

""" + TINY[TINY.index("[space]"):]  # the step-3 space of the tiny accuracy study


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m search ARGS` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "search", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, one line on stderr starting with 'error:', no traceback, naming each fragment."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def write_study(tmp: Path, text: str = TINY) -> Path:
    path = tmp / "tiny.toml"
    path.write_text(text)
    return path


def journal(path: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, seconds: float = 60) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.communicate()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode()
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {seconds} s")


@dataclass(frozen=True)
class StudyRun:
    """A study made by `run`: its folder (with the study file), output folder, storage URL and what `run` printed."""

    folder: Path
    study_file: Path
    stdout: str
    stderr: str = ""

    @property
    def out(self) -> Path:
        return self.folder / "out"

    @property
    def storage(self) -> str:
        return f"sqlite:///{self.out / 'study.db'}"


def copy_study(run: StudyRun, tmp: Path) -> StudyRun:
    """A copy of a shared study in `tmp`, to change without disturbing the other tests."""
    shutil.copytree(run.out, tmp / "out")
    shutil.copy(run.study_file, tmp / run.study_file.name)
    return StudyRun(tmp, tmp / run.study_file.name, run.stdout)


def _shared_study(tmp_path_factory, key: str, text: str, *options: str) -> StudyRun:
    """The study `run` makes of `text` (with `options`), made once per session even under
    pytest-xdist: the first worker to ask runs it under a file lock, the other finds it done."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this session
    folder = root / f"shared-{key}"
    with FileLock(str(root / f"shared-{key}.lock")):
        if not (folder / "stdout.txt").exists():
            folder.mkdir(parents=True, exist_ok=True)
            study_file = folder / "tiny.toml"
            study_file.write_text(text)
            result = run_cli("run", str(study_file), "--out", str(folder / "out"), "--device", "cpu", *options)
            assert result.returncode == 0, result.stderr
            (folder / "stderr.txt").write_text(result.stderr)
            (folder / "stdout.txt").write_text(result.stdout)  # written last: the study is complete
    return StudyRun(folder, folder / "tiny.toml", (folder / "stdout.txt").read_text(), (folder / "stderr.txt").read_text())


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.fail(f"MNIST not found under {DATA_DIR}; set SEARCH_DATA_DIR")
    return DATA_DIR


@pytest.fixture(scope="session")
def shared_tiny_study(tmp_path_factory, data_dir) -> StudyRun:
    """TINY, run once: 8 trials of the step-3 space on 256 images. Read it; change a copy."""
    return _shared_study(tmp_path_factory, "tiny", TINY)


@pytest.fixture(scope="session")
def shared_pareto_study(tmp_path_factory, data_dir) -> StudyRun:
    """PARETO, run once: two rungs, then two front points (its smallest and largest) confirmed with seeds 4 and 5."""
    return _shared_study(tmp_path_factory, "pareto", PARETO)


@pytest.fixture(scope="session")
def shared_two_worker_study(tmp_path_factory, data_dir) -> StudyRun:
    """TINY run to 6 trials by `--workers 2` on one machine (a journal file), once. Read it; change a copy."""
    return _shared_study(tmp_path_factory, "workers", TINY, "--workers", "2", "--trials", "6")


# The step-3 topology at a quarter of its size: one epoch on 60,000 images stays short on 2 cores.
SMALL_PARAMS = {**REFERENCE_PARAMS, **{k: 4 for k in REFERENCE_PARAMS if k.endswith("_width")}}
# A teacher that trains in seconds: one 28x28 convolution, a linear classifier (about 92 % after one epoch).
TINY_TEACHER = RunConfig(layers=(Conv(10, kernel=28), LogSoftmax()), dropout=0.0, optimizer=Optimizer(lr=0.05),
                         scheduler=Scheduler(step_size=1, gamma=1.0), epochs=1, batch_size=128, augment=Augment(), name="tiny-teacher")


@pytest.fixture(scope="session")
def shared_reproduction(tmp_path_factory, data_dir) -> tuple[Path, dict]:
    """`reproduce` of SMALL_PARAMS for one epoch, seed 5, with every recipe option: weights
    averaged (ema 0.9), elastic distortion, distilled from a tiny teacher (cached in the
    folder's cache/): (the run record's path, the record). Made once per session."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder = root / "shared-reproduction"
    record = folder / "run.json"
    with FileLock(str(root / "shared-reproduction.lock")):
        if not record.exists():
            folder.mkdir(parents=True, exist_ok=True)
            small = step3_config(SMALL_PARAMS, epochs=1, name="small")
            save_config(TINY_TEACHER, folder / "teacher.json")
            student = replace(small, ema=0.9, augment=replace(small.augment, elastic=Elastic(34.0, 4.0)),
                              distill=Distill(str(folder / "teacher.json"), weight=0.7, temperature=3.0))
            save_config(student, folder / "small.json")
            result = run_cli("reproduce", str(folder / "small.json"), "--seeds", "5", "--out", str(record), "--device", "cpu",
                             env={"SEARCH_CACHE_DIR": str(folder / "cache")})
            assert result.returncode == 0, result.stderr
    return record, json.loads(record.read_text())
