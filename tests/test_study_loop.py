"""A study loop whose numbers can be trusted: pruning gate, exported schedule, overrides,
deterministic resume, thread counts, a dead local worker."""

import os
import shutil
import signal
import subprocess
import sys
import time

import optuna
import pytest

from conftest import FINISHED, ROOT, TINY, assert_one_line_error, journal, run_cli, write_study
from search.export import export_form
from search.objective import may_prune
from search.studyfile import Training, load_study_spec
from space.config import ConfigError
from space.step3 import REFERENCE_PARAMS, config_from_params

STORAGE = "sqlite:///{}"


# ---------------------------------------------------------------- pruning


@pytest.mark.parametrize("epochs", range(1, 16))
def test_a_trial_is_judged_only_after_its_first_drop_and_before_its_last_epoch(epochs):
    for step_size in range(1, epochs + 1):
        judged = [e for e in range(1, epochs + 1) if may_prune(e, step_size, epochs)]
        assert epochs not in judged  # pruning after the last epoch saves nothing
        assert all(e > step_size for e in judged)
        assert judged == list(range(step_size + 1, epochs))


def test_no_trial_of_a_study_is_pruned_at_its_last_epoch(tmp_path, data_dir):
    result = run_cli("run", str(write_study(tmp_path, TINY.replace("startup_trials = 2", "startup_trials = 0"))),
                     "--out", str(tmp_path / "out"), "--device", "cpu", "--trials", "10")
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="tiny", storage=STORAGE.format(tmp_path / "out" / "study.db"))
    trained = [t for t in study.trials if t.intermediate_values]
    for trial in trained:
        if trial.state == optuna.trial.TrialState.PRUNED:
            assert max(trial.intermediate_values) < 3 and trial.params["step_size"] < max(trial.intermediate_values)
        else:
            assert max(trial.intermediate_values) == 3


def test_startup_trials_means_completed_trials_before_any_pruning(tmp_path, data_dir):
    result = run_cli("run", str(write_study(tmp_path, TINY.replace("startup_trials = 2", "startup_trials = 4"))),
                     "--out", str(tmp_path / "out"), "--device", "cpu", "--trials", "10")
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="tiny", storage=STORAGE.format(tmp_path / "out" / "study.db"))
    for trial in study.trials:
        if "pruner" in trial.user_attrs.get("reason", ""):
            completed_before = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE
                                and t.datetime_complete < trial.datetime_complete]
            assert len(completed_before) >= 4


# ---------------------------------------------------------------- the exported schedule


def drops(step_size: int, epochs: int) -> list[float]:
    """Where StepLR lowers the learning rate, as fractions of training (only drops that some epoch trains with)."""
    return [k * step_size / epochs for k in range(1, epochs) if k * step_size < epochs]


@pytest.mark.parametrize("export_epochs", [15, 20, 30])
def test_export_keeps_the_number_and_place_of_learning_rate_drops(export_epochs):
    checked = 0
    for epochs in range(3, 31):
        text = TINY.replace("epochs = 3", f"epochs = {epochs}").replace("export_epochs = 6", f"export_epochs = {export_epochs}")
        training = Training(epochs=epochs, export_epochs=export_epochs)
        if export_epochs % epochs:
            with pytest.raises(ConfigError, match="must be a multiple of training.epochs"):
                load_study_spec(_write(text))
            continue
        load_study_spec(_write(text))
        for step_size in range(1, epochs + 1):
            trial = config_from_params({**REFERENCE_PARAMS, "step_size": step_size}, epochs=epochs)
            exported = export_form(trial, training, "x")
            assert drops(exported.scheduler.step_size, exported.epochs) == pytest.approx(drops(step_size, epochs))
            checked += 1
    assert checked > 0


def _write(text: str):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "study.toml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------- overrides


@pytest.mark.parametrize("args,words", [
    (["--epochs", "1"], ["--epochs 1", "training.epochs", "must be >= 3"]),
    (["--subset", "999999"], ["--subset 999999", "50,000 images"]),
    (["--study", "a b"], ["--study a b", "letters, digits"]),
    (["--timeout", "-1"], ["--timeout", "finite number of seconds >= 0"]),
    (["--timeout", "nan"], ["--timeout", "finite number of seconds >= 0"]),
    (["--timeout", "inf"], ["--timeout", "finite number of seconds >= 0"]),
], ids=["epochs", "subset", "name", "timeout-negative", "timeoutnan", "timeoutinf"])
def test_overrides_get_the_study_files_checks(tmp_path, args, words):
    result = run_cli("run", str(write_study(tmp_path)), "--out", str(tmp_path / "out"), *args)
    assert_one_line_error(result, *words)
    assert not (tmp_path / "out").exists()


def test_numeric_options_outside_their_meaning_are_refused(tmp_path):
    assert_one_line_error(run_cli("dashboard", "--study", "x", "--port", "70000"), "--port", "1-65535")
    assert_one_line_error(run_cli("reproduce", "--study", "x", "--trial", "-1"), "--trial", ">= 0")
    assert_one_line_error(run_cli("bench", "--warmup", "-1"), "--warmup", ">= 0")
    assert_one_line_error(run_cli("bench", "--steps", "500", "--device", "cpu"), "--steps", "MNIST has 60,000", "--steps <= 468")


# ---------------------------------------------------------------- reproducible numbers


def test_a_resumed_study_continues_the_same_way_every_time(tmp_path, data_dir):
    first = tmp_path / "first"
    result = run_cli("run", str(write_study(tmp_path)), "--out", str(first), "--device", "cpu", "--trials", "3")
    assert result.returncode == 0, result.stderr
    params = []
    for copy in ("a", "b"):  # the same study, resumed twice from the same state, in different processes
        shutil.copytree(first, tmp_path / copy)
        result = run_cli("run", str(tmp_path / "tiny.toml"), "--out", str(tmp_path / copy), "--device", "cpu", "--trials", "6")
        assert result.returncode == 0, result.stderr
        study = optuna.load_study(study_name="tiny", storage=STORAGE.format(tmp_path / copy / "study.db"))
        params.append([t.params for t in study.trials[3:]])
    assert params[0] == params[1] and len(params[0]) == 3


# ---------------------------------------------------------------- several workers


def test_worker_trials_record_their_threads_and_reproduce_exactly(shared_two_worker_study, tmp_path):
    log = shared_two_worker_study.out / "journal.log"  # `run --workers 2` (conftest)
    study = optuna.load_study(study_name="tiny", storage=journal(log))
    trained = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert trained and all(t.user_attrs["threads"] == max(1, (os.cpu_count() or 1) // 2) for t in trained)
    trial = trained[0]
    again = run_cli("reproduce", "--study", "tiny", "--storage", str(log), "--trial", str(trial.number), "--as-trained",
                    "--max-params", "4000", "--device", "cpu", "--out", str(tmp_path / "as-trained.json"))
    assert again.returncode == 0, again.stderr
    assert "matches the study's record exactly: yes" in again.stdout


def test_a_killed_local_worker_is_reported_and_the_study_kept(tmp_path, data_dir):
    study_file = write_study(tmp_path, TINY.replace("subset = 256", "subset = 2000"))
    log = tmp_path / "out" / "journal.log"
    run = subprocess.Popen([sys.executable, "-m", "search", "run", str(study_file), "--device", "cpu", "--out", str(tmp_path / "out"),
                            "--workers", "2", "--trials", "5"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.3)
        if not log.exists():
            continue
        try:
            trials = optuna.load_study(study_name="tiny", storage=journal(log)).trials
        except KeyError:
            continue
        victim = next((t for t in trials if t.state == optuna.trial.TrialState.RUNNING and t.intermediate_values), None)
    assert victim is not None, "no trial started training"
    pid = int(victim.user_attrs["worker"].rpartition(":")[2])
    os.kill(pid, signal.SIGKILL)
    stdout, stderr = run.communicate(timeout=600)
    assert run.returncode == 1
    assert "Traceback" not in stdout + stderr
    assert f"(pid {pid}) was killed by signal 9; its trial {victim.number} was marked FAIL" in stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "rerun the same command to resume" in lines[0]
    study = optuna.load_study(study_name="tiny", storage=journal(log))
    assert study.trials[victim.number].state == optuna.trial.TrialState.FAIL
    assert len([t for t in study.trials if t.state in FINISHED]) == 5  # the survivor finished the count
    resumed = subprocess.run([sys.executable, "-m", "search", "run", str(study_file), "--device", "cpu", "--out", str(tmp_path / "out"),
                              "--trials", "5"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and "already holds 5 finished trials" in resumed.stdout
