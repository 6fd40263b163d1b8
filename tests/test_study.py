"""The search study end to end on a tiny budget: hard limit, storage, export, reproduction, resume."""

import json
import shutil
import signal
import subprocess
import sys
import time

import optuna
import pytest

from conftest import ROOT, TINY, assert_one_line_error, copy_study, journal, run_cli, write_study
from space.config import count_params, load_config

@pytest.fixture()
def tiny_study(shared_tiny_study):
    """The session's tiny study (conftest), read-only: (its folder, the study, what `run` printed)."""
    run = shared_tiny_study
    return run.folder, optuna.load_study(study_name="tiny", storage=run.storage), run.stdout


def test_run_prints_a_line_per_trial_and_the_best(tiny_study):
    _, study, stdout = tiny_study
    assert len(study.trials) == 8
    for trial in study.trials:
        assert f"trial {trial.number:>4}  params" in stdout
    assert "best config:" in stdout and "optuna-dashboard sqlite:///" in stdout


def test_hard_limit_is_never_trained_and_recorded(tiny_study):
    _, study, _ = tiny_study
    over = [t for t in study.trials if t.user_attrs["n_params"] > 4000]
    assert over, "the tiny space (widths up to 16) must produce configs over 4,000 params"
    for trial in study.trials:
        assert isinstance(trial.user_attrs["n_params"], int)
        config = load_config_dict(trial.user_attrs["config"])
        assert count_params(config) == trial.user_attrs["n_params"]
        assert trial.constraints == {"params_over_limit": trial.user_attrs["n_params"] - 4000}
    for trial in over:
        assert trial.state == optuna.trial.TrialState.PRUNED
        assert trial.user_attrs["reason"].startswith("over the parameter limit")
        assert "epochs" not in trial.user_attrs and not trial.intermediate_values  # never trained
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete and all(t.user_attrs["n_params"] <= 4000 for t in complete)


def load_config_dict(raw):
    from space.config import config_from_dict

    return config_from_dict(raw)


def test_trained_trials_carry_their_record(tiny_study):
    _, study, _ = tiny_study
    trained = [t for t in study.trials if "epochs" in t.user_attrs]
    assert trained
    for trial in trained:
        epochs = trial.user_attrs["epochs"]
        assert [m["epoch"] for m in epochs] == list(range(1, len(epochs) + 1))
        assert trial.intermediate_values == {m["epoch"]: m["val_acc"] for m in epochs}
        assert trial.user_attrs["seed"] == 3 and trial.user_attrs["subset"] == 256 and trial.user_attrs["device"] == "cpu"
        assert trial.user_attrs["seconds"] > 0
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert trial.value == pytest.approx(sum(m["val_acc"] for m in epochs[-3:]) / 3)


def test_the_reference_is_not_enqueued_over_the_limit(tiny_study):
    _, study, _ = tiny_study
    # widths up to 16 hold the reference (10, 15, 10, 16, 16, 16), but its 7,944 params are over this study's 4,000
    assert study.trials[0].user_attrs["n_params"] != 7944


def test_first_trial_is_the_hand_made_reference_when_space_and_limit_hold_it(tmp_path, data_dir):
    result = run_cli("run", str(write_study(tmp_path)), "--out", str(tmp_path / "out"), "--device", "cpu", "--trials", "1", "--max-params", "8000")
    assert result.returncode == 0, result.stderr
    (trial,) = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}").trials
    # step size 6 of 15 epochs scales to 1 of 3
    assert trial.params["conv2_width"] == 15 and trial.params["step_size"] == 1
    assert trial.user_attrs["n_params"] == 7944 and trial.state == optuna.trial.TrialState.COMPLETE


def test_best_json_is_a_reference_format_config(tiny_study):
    tmp, study, _ = tiny_study
    path = tmp / "out" / "best.json"
    config = load_config(path)
    best = study.best_trial
    assert count_params(config) == best.user_attrs["n_params"] <= 4000
    assert config.epochs == 6  # export_epochs
    assert config.scheduler.step_size == 2 * best.params["step_size"]  # scaled by 6 / 3
    assert config.optimizer.lr == best.params["lr"] and config.augment.rotation == best.params["rotation"]
    result = run_cli("summary", str(path), "--max-params", "4000")
    assert result.returncode == 0 and f"total params: {count_params(config):,}" in result.stdout
    # export writes the same file again
    (tmp / "again").mkdir()
    result = run_cli("export", "--study", "tiny", "--storage", f"sqlite:///{tmp / 'out' / 'study.db'}", "--out", str(tmp / "again"))
    assert result.returncode == 0, result.stderr
    assert (tmp / "again" / "best.json").read_text() == path.read_text()


def test_as_trained_reproduces_the_recorded_curve_exactly(tiny_study):
    tmp, study, _ = tiny_study
    trial = next(t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE)
    result = run_cli("reproduce", "--study", "tiny", "--storage", f"sqlite:///{tmp / 'out' / 'study.db'}", "--trial", str(trial.number),
                     "--as-trained", "--max-params", "4000", "--device", "cpu", "--out", str(tmp / "as-trained.json"))
    assert result.returncode == 0, result.stderr
    assert "matches the study's record exactly: yes" in result.stdout
    record = json.loads((tmp / "as-trained.json").read_text())
    assert [m["val_acc"] for m in record["runs"][0]["epochs"]] == [m["val_acc"] for m in trial.user_attrs["epochs"]]


def test_rerun_with_more_trials_resumes_to_the_total(shared_tiny_study, tmp_path):
    tmp = copy_study(shared_tiny_study, tmp_path).folder
    again = run_cli("run", str(tmp / "tiny.toml"), "--out", str(tmp / "out"), "--device", "cpu", "--trials", "10")
    assert again.returncode == 0, again.stderr
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp / 'out' / 'study.db'}")
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))) == 10
    done = run_cli("run", str(tmp / "tiny.toml"), "--out", str(tmp / "out"), "--device", "cpu", "--trials", "10")
    assert done.returncode == 0 and "already holds 10 finished trials" in done.stdout


def test_a_study_made_before_the_dataset_and_typed_settings_resumes_and_exports(tmp_path, data_dir):
    """tests/data/study-before-35: a Pareto study (4 trials, confirmed) written by the code before
    issue 35 (commit 53b60bf), with the best.json that code exported; its stored settings name no dataset."""
    shutil.copytree(ROOT / "tests" / "data" / "study-before-35", tmp_path / "old")
    storage = str(tmp_path / "old" / "journal.log")
    before = optuna.load_study(study_name="old", storage=journal(tmp_path / "old" / "journal.log"))
    assert "dataset" not in before.user_attrs["spec"] and len(before.trials) == 4 and before.user_attrs["confirmed"]
    again = run_cli("run", str(tmp_path / "old" / "old.toml"), "--storage", storage, "--out", str(tmp_path / "out"), "--device", "cpu",
                    "--trials", "5")
    assert again.returncode == 0, again.stderr
    study = optuna.load_study(study_name="old", storage=journal(tmp_path / "old" / "journal.log"))
    assert len(study.trials) == 5 and study.trials[4].state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert study.user_attrs["confirmed"] == before.user_attrs["confirmed"]  # its confirmation kept as it was
    exported = run_cli("export", "--study", "old", "--storage", storage, "--out", str(tmp_path / "export"))
    assert exported.returncode == 0, exported.stderr
    # the best confirmed mean of the old runs, written as the old code wrote it (the new trial is unconfirmed)
    assert (tmp_path / "export" / "best.json").read_text() == (tmp_path / "old" / "best.json").read_text()


def test_changed_settings_do_not_touch_an_existing_study(shared_tiny_study, tmp_path):
    tmp = copy_study(shared_tiny_study, tmp_path).folder
    db = tmp / "out" / "study.db"
    before = db.read_bytes()
    result = run_cli("run", str(tmp / "tiny.toml"), "--out", str(tmp / "out"), "--epochs", "6")
    assert_one_line_error(result, "created from different settings (training.epochs: ", " -> 6)", "--study NEW_NAME")
    assert db.read_bytes() == before


def test_sigint_mid_trial_then_rerun_ends_with_exactly_the_requested_trials(tmp_path, data_dir):
    study_file = write_study(tmp_path, TINY.replace("subset = 256", "subset = 2000"))
    args = [sys.executable, "-m", "search", "run", str(study_file), "--out", str(tmp_path / "out"), "--device", "cpu", "--trials", "5"]
    storage = f"sqlite:///{tmp_path / 'out' / 'study.db'}"
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait until a trial is training (it has reported an epoch), then interrupt it as Ctrl-C does
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name="tiny", storage=storage).trials
        except (KeyError, Exception):
            continue
        if any(t.state == optuna.trial.TrialState.RUNNING and t.intermediate_values for t in trials):
            break
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "rerun the same command to resume" in stderr
    study = optuna.load_study(study_name="tiny", storage=storage)
    interrupted = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(interrupted) == 1 and not any(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)
    kept = {t.number for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)}

    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="tiny", storage=storage)
    finished = {t.number for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)}
    assert len(finished) == 5 and kept <= finished  # exactly the requested number, none lost


BAD_STUDIES = [
    ("trials = 8", "trials = 0", ["trials", "must be > 0"]),
    ("seed = 3", "seed = 3\ncolour = 1", ["colour", "unknown key"]),
    ("seed = 3", "seed = 3\ntpe_startup_trials = -1", ["tpe_startup_trials", "must be >= 0, got -1"]),
    ("seed = 3", "seed = 3\ntpe_spread = \"conv1\"", ["tpe_spread", "must name a linear integer range or a choice parameter", "got 'conv1'"]),
    ("[pruner]", "[fidelity]\nwithin = \"conv1\"\n[pruner]", ["fidelity.within", "needs objective = \"pareto\""]),
    ("epochs = 3", "epochs = \"3\"", ["training.epochs", "must be an integer"]),
    ("conv1 = [4, 16]", "conv1 = [16, 4]", ["space.conv1", "low must be <= high"]),
    ("conv1 = [4, 16]", "conv9 = [4, 16]", ["space.conv9", "unknown key"]),
    ('kind = "median"', 'kind = "asha"', ["pruner.kind", "must be one of"]),
    ('kind = "median"', 'kind = "hyperband"', ["pruner.kind", "hyperband is not supported", "use \"median\""]),
    ("export_epochs = 6", "export_epochs = 10", ["training.export_epochs", "must be a multiple of training.epochs (3)"]),
    ("[training]", "[training", ["not valid TOML"]),
    ("validation = 1000", "validation = 20000", ["training.validation", "must be in 1..10,000"]),
    ("validation = 1000", "validation = 0", ["training.validation", "must be in 1..10,000"]),
    ("validation = 1000", "validation = 1000\nprecision = \"half\"", ["training.precision", "must be one of fp32, bf16"]),
]


@pytest.mark.parametrize("old,new,words", BAD_STUDIES, ids=[b[1] for b in BAD_STUDIES])
def test_bad_study_file_is_one_line_and_creates_nothing(tmp_path, old, new, words):
    result = run_cli("run", str(write_study(tmp_path, TINY.replace(old, new))), "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "tiny.toml", *words)
    assert not (tmp_path / "out").exists()


def test_commands_on_a_missing_study_are_one_line(tmp_path):
    for args in (["export", "--study", "nope"], ["reproduce", "--study", "nope"]):
        assert_one_line_error(run_cli(*args, cwd=tmp_path), "study 'nope' not found")


def test_a_studys_precision_is_written_into_every_trials_config(tmp_path):
    from search.studyfile import config_from_point
    from search.studyfile import load_study_spec
    from space.step3 import REFERENCE_PARAMS

    plain = load_study_spec(write_study(tmp_path, TINY))
    bf16 = load_study_spec(write_study(tmp_path, TINY.replace("validation = 1000", 'validation = 1000\nprecision = "bf16"')))
    assert config_from_point(plain, REFERENCE_PARAMS, "t").precision == "fp32"
    assert config_from_point(bf16, REFERENCE_PARAMS, "t").precision == "bf16"
