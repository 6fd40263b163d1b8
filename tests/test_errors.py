"""Bad input: one line naming the problem and the fix, exit code 2, no traceback, no change to any study."""

import json
import shutil

import pytest

from conftest import REFERENCE, TINY, assert_one_line_error, copy_study, run_cli, write_study


@pytest.fixture(scope="module")
def existing(shared_tiny_study, tmp_path_factory):
    """A small finished study (a copy of the session's, conftest) whose storage file must never change under bad input."""
    return copy_study(shared_tiny_study, tmp_path_factory.mktemp("existing")).folder


def unchanged(tmp) -> bytes:
    return (tmp / "out" / "study.db").read_bytes()


def test_storage_that_cannot_connect_masks_the_password(tmp_path):
    result = run_cli("run", str(write_study(tmp_path)), "--storage", "postgresql+psycopg://alice:hunter2@127.0.0.1:1/optuna")
    assert_one_line_error(result, "cannot open storage", "alice:***@127.0.0.1:1", "check the URL")
    assert "hunter2" not in result.stdout + result.stderr


def test_storage_url_with_an_unknown_scheme(tmp_path):
    assert_one_line_error(run_cli("run", str(write_study(tmp_path)), "--storage", "nosuchdb://x/y"), "cannot open storage", "nosuchdb://x/y")


@pytest.mark.parametrize("option", ["--max-params", "--trials"])
@pytest.mark.parametrize("value", ["0", "-5"])
def test_non_positive_limits_are_refused_before_anything_runs(existing, option, value):
    before = unchanged(existing)
    result = run_cli("run", str(existing / "tiny.toml"), "--out", str(existing / "out"), option, value)
    assert_one_line_error(result, option, "must be a positive integer")
    assert unchanged(existing) == before


def test_missing_data_directory(existing, tmp_path):
    before = unchanged(existing)
    result = run_cli("run", str(existing / "tiny.toml"), "--out", str(existing / "out"), "--data-dir", str(tmp_path / "nowhere"))
    assert_one_line_error(result, "nowhere", "does not exist", "--data-dir")
    assert unchanged(existing) == before


def broken_copy(data_dir, tmp_path, damage) -> str:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (data_dir / "MNIST" / "raw").glob("*-ubyte"):
        shutil.copy(f, raw / f.name)
    damage(raw / "train-images-idx3-ubyte")
    return str(tmp_path)


def test_truncated_idx_file(existing, data_dir, tmp_path):
    def truncate(path):
        path.write_bytes(path.read_bytes()[:100_000])

    before = unchanged(existing)
    result = run_cli("run", str(existing / "tiny.toml"), "--out", str(existing / "out"), "--data-dir", broken_copy(data_dir, tmp_path, truncate))
    assert_one_line_error(result, "MNIST/raw", "truncated or corrupt", "intact copy")
    assert unchanged(existing) == before


def test_wrong_magic_number(data_dir, tmp_path):
    def bad_magic(path):
        data = bytearray(path.read_bytes())
        data[0:4] = b"\x00\x00\x99\x99"
        path.write_bytes(bytes(data))

    result = run_cli("reproduce", str(REFERENCE / "step3.json"), "--data-dir", broken_copy(data_dir, tmp_path, bad_magic))
    assert_one_line_error(result, "MNIST/raw", "truncated or corrupt", "intact copy")


def test_data_directory_without_mnist_says_where_to_put_it(tmp_path):
    result = run_cli("reproduce", str(REFERENCE / "step3.json"), "--data-dir", str(tmp_path))
    assert_one_line_error(result, "MNIST is not in", "download failed", "train-images-idx3-ubyte", "SEARCH_DATA_DIR")


@pytest.mark.parametrize("command", [["export"], ["reproduce"], ["dashboard"], ["report"]])
def test_commands_on_a_study_that_does_not_exist(existing, command):
    storage = f"sqlite:///{existing / 'out' / 'study.db'}"
    before = unchanged(existing)
    assert_one_line_error(run_cli(*command, "--study", "nope", "--storage", storage), "no study named 'nope'", "tiny")
    assert_one_line_error(run_cli(*command, "--study", "nope", cwd=existing), "study 'nope' not found")
    assert unchanged(existing) == before


def test_export_of_a_study_without_complete_trial(tmp_path, data_dir):
    run = run_cli("run", str(write_study(tmp_path)), "--out", str(tmp_path / "out"), "--max-params", "100", "--trials", "3")
    assert run.returncode == 0 and "no trial has completed yet" in run.stdout, run.stderr
    result = run_cli("export", "--study", "tiny", "--storage", f"sqlite:///{tmp_path / 'out' / 'study.db'}", "--out", str(tmp_path / "x"))
    assert_one_line_error(result, "has no COMPLETE trial")
    assert not (tmp_path / "x").exists()


def test_a_config_of_a_dataset_the_tool_does_not_know_is_one_line(tmp_path):
    path = tmp_path / "cifar.json"
    path.write_text(json.dumps({**json.loads((REFERENCE / "step3.json").read_text()), "dataset": "cifar10"}))
    for command in (["reproduce", str(path)], ["summary", str(path)]):
        assert_one_line_error(run_cli(*command), "dataset", "must be one of mnist", "cifar10")
    study = write_study(tmp_path, TINY.replace("seed = 3", 'seed = 3\ndataset = "cifar10"'))
    assert_one_line_error(run_cli("run", str(study)), "dataset", "must be one of mnist", "cifar10")


def test_reproduce_over_the_limit_needs_allow_over_limit():
    assert_one_line_error(run_cli("reproduce", str(REFERENCE / "step1.json")), "6,969,866 parameters", "over the 8,000 limit", "--allow-over-limit")
    assert_one_line_error(run_cli("reproduce", str(REFERENCE / "step2.json")), "12,862 parameters", "--allow-over-limit")


@pytest.mark.parametrize("kind", ["study", "config"])
def test_unreadable_files_are_one_line(tmp_path, kind):
    command = ["run"] if kind == "study" else ["summary"]
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("name = \"caf\xe9\"\n".encode("latin-1"))
    assert_one_line_error(run_cli(*command, str(latin1)), "not UTF-8 text")
    assert_one_line_error(run_cli(*command, str(tmp_path)), "is a folder")
    deep = tmp_path / "deep.txt"
    deep.write_text("[" * 100_000 + "]" * 100_000 if kind == "config" else "a = " + "[" * 100_000 + "]" * 100_000)
    result = run_cli(*command, str(deep))
    assert_one_line_error(result, str(deep))


def test_output_folders_that_cannot_be_written_are_found_before_any_work(existing, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    storage = f"sqlite:///{existing / 'out' / 'study.db'}"
    before = unchanged(existing)
    for command in (["run", str(existing / "tiny.toml"), "--study", "other"], ["export", "--study", "tiny", "--storage", storage],
                    ["report", "--study", "tiny", "--storage", storage], ["reproduce", str(REFERENCE / "step3.json")]):
        target = blocker / "out" if command[0] != "reproduce" else blocker / "out" / "record.json"
        result = run_cli(*command, "--out", str(target))
        assert_one_line_error(result, "--out", "cannot create or write there", "writable folder")
    assert unchanged(existing) == before


def test_absurd_geometry_within_the_limit_is_refused_at_load(tmp_path):
    config = json.loads((REFERENCE / "step3.json").read_text())
    config["layers"][0]["padding"] = 400  # 10 channels of 826x826: few parameters, an enormous feature map
    path = tmp_path / "wide.json"
    path.write_text(json.dumps(config))
    assert_one_line_error(run_cli("summary", str(path)), "layers[0]", "10x826x826", "values an image", "lower its padding")


def test_reproduce_of_a_config_file_refuses_trial_options(tmp_path):
    assert_one_line_error(run_cli("reproduce", str(REFERENCE / "step3.json"), "--trial", "3", "--as-trained"), "--trial and --as-trained", "--study NAME")


def test_sqlite_for_several_workers_is_refused_before_anything_runs(tmp_path):
    result = run_cli("run", str(write_study(tmp_path)), "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--workers", "2",
                     "--out", str(tmp_path / "out"))
    assert_one_line_error(result, "is SQLite", "not safe for several workers", "--workers 1")
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["summary", "reproduce"])
def test_a_batch_larger_than_the_training_set_is_refused_before_anything_runs(tmp_path, command):
    config = json.loads((REFERENCE / "step3.json").read_text()) | {"batch_size": 1_000_000_000}
    (tmp_path / "big.json").write_text(json.dumps(config))
    options = ["--out", str(tmp_path / "r.json"), "--device", "cpu"] if command == "reproduce" else []
    result = run_cli(command, str(tmp_path / "big.json"), *options)
    assert_one_line_error(result, "big.json", "batch_size: must be in 1..60,000 (MNIST's training set)")
    assert result.stdout == "" and not (tmp_path / "r.json").exists()
