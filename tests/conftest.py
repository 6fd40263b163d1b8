"""Shared test set-up: the MNIST copy beside the repository, the helpers every module uses, and
one tiny study of each kind (accuracy, Pareto), run once per session. A test that changes a
shared study works on its own copy (`copy_study`)."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

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


def _run_study(tmp: Path, name: str, text: str, *options: str) -> StudyRun:
    study_file = tmp / name
    study_file.write_text(text)
    result = run_cli("run", str(study_file), "--out", str(tmp / "out"), "--device", "cpu", *options)
    assert result.returncode == 0, result.stderr
    return StudyRun(tmp, study_file, result.stdout, result.stderr)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.fail(f"MNIST not found under {DATA_DIR}; set SEARCH_DATA_DIR")
    return DATA_DIR


@pytest.fixture(scope="session")
def shared_tiny_study(tmp_path_factory, data_dir) -> StudyRun:
    """TINY, run once: 8 trials of the step-3 space on 256 images. Read it; change a copy."""
    return _run_study(tmp_path_factory.mktemp("tiny"), "tiny.toml", TINY)


@pytest.fixture(scope="session")
def shared_pareto_study(tmp_path_factory, data_dir) -> StudyRun:
    """PARETO, run once: two rungs, then its two most accurate front points confirmed with seeds 4 and 5."""
    return _run_study(tmp_path_factory.mktemp("pareto"), "tiny.toml", PARETO)


@pytest.fixture(scope="session")
def shared_two_worker_study(tmp_path_factory, data_dir) -> StudyRun:
    """TINY run to 6 trials by `--workers 2` on one machine (a journal file), once. Read it; change a copy."""
    return _run_study(tmp_path_factory.mktemp("workers"), "tiny.toml", TINY, "--workers", "2", "--trials", "6")
