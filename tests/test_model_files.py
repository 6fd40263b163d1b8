"""`reproduce` leaves the trained model as .safetensors and .onnx files; `evaluate` scores them."""

import json

import numpy as np
import onnxruntime
import pytest
import torch

from conftest import SMALL_PARAMS, assert_one_line_error, run_cli
from search.data import load_images
from search.model_files import Deployable, load_weights
from space.config import config_from_dict, save_config
from space.step3 import config_from_params

SMALL = SMALL_PARAMS


@pytest.fixture()
def reproduced(shared_reproduction):
    """`reproduce` of a small net, seed 5, record run.json (conftest: with ema, elastic and a teacher)."""
    return shared_reproduction


@pytest.fixture(scope="module")
def test_set(data_dir):
    return load_images(data_dir, train=False)


def test_reproduce_writes_weights_and_onnx_named_after_the_record(reproduced):
    record, data = reproduced
    run = data["runs"][0]
    assert (run["weights"], run["onnx"]) == ("run-seed5.safetensors", "run-seed5.onnx")
    assert (record.parent / run["weights"]).is_file() and (record.parent / run["onnx"]).is_file()
    assert sorted(p.name for p in record.parent.iterdir() if p.name.startswith("run-seed5")) == ["run-seed5.onnx", "run-seed5.safetensors"]


def test_onnx_matches_pytorch_and_the_recorded_accuracy(reproduced, test_set):
    record, data = reproduced
    images, labels = test_set
    session = onnxruntime.InferenceSession(str(record.parent / data["runs"][0]["onnx"]), providers=["CPUExecutionProvider"])
    model = Deployable(load_weights(record.parent / data["runs"][0]["weights"], config_from_dict(data["config"])))
    pixels = images[:100].unsqueeze(1).float() / 255.0
    ours = session.run(["log_probs"], {"image": pixels.numpy()})[0]
    with torch.inference_mode():
        expected = model(pixels).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    for batch in (1, 7):  # the batch dimension is dynamic
        assert session.run(["log_probs"], {"image": pixels[:batch].numpy()})[0].shape == (batch, 10)
    all_pixels = images.unsqueeze(1).float().numpy() / 255.0
    predictions = np.concatenate([session.run(["log_probs"], {"image": all_pixels[i : i + 1000]})[0] for i in range(0, 10_000, 1000)]).argmax(1)
    accuracy = 100.0 * (predictions == labels.numpy()).sum() / len(labels)
    assert accuracy == data["runs"][0]["final_acc"]
    assert accuracy > 50.0  # it learned something in one epoch


@pytest.mark.parametrize("kind", ["onnx", "weights"])
def test_evaluate_reports_the_recorded_test_accuracy(reproduced, kind):
    record, data = reproduced
    result = run_cli("evaluate", str(record.parent / data["runs"][0][kind]), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert f"test accuracy {data['runs'][0]['final_acc']:.2f}%" in result.stdout
    assert "(the same)" in result.stdout


def test_evaluate_weights_without_a_record_use_the_config_inside_or_given(reproduced, tmp_path):
    record, data = reproduced
    moved = tmp_path / "model.safetensors"
    moved.write_bytes((record.parent / data["runs"][0]["weights"]).read_bytes())
    result = run_cli("evaluate", str(moved), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert f"test accuracy {data['runs'][0]['final_acc']:.2f}%" in result.stdout and "(metadata)" in result.stdout
    wrong = tmp_path / "wrong.json"
    save_config(config_from_params({**SMALL, "conv1_width": 6}, epochs=1), wrong)
    assert_one_line_error(run_cli("evaluate", str(moved), "--config", str(wrong)), "cannot be evaluated", "check --config")


def test_evaluate_refuses_what_it_cannot_read(tmp_path):
    assert_one_line_error(run_cli("evaluate", str(tmp_path / "missing.onnx")), "no such model file")
    assert_one_line_error(run_cli("evaluate", str(tmp_path / "model.pt")), "expected a .onnx or .safetensors file")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    assert_one_line_error(run_cli("evaluate", str(broken)), "cannot be evaluated")


def test_both_model_files_say_how_to_feed_them(reproduced):
    import onnx
    from safetensors import safe_open

    record, data = reproduced
    run = data["runs"][0]
    with safe_open(str(record.parent / run["weights"]), framework="pt") as f:
        weights = f.metadata()
    graph = {p.key: p.value for p in onnx.load(str(record.parent / run["onnx"])).metadata_props}
    assert (weights["mean"], weights["std"], weights["pixel_range"]) == ("0.1307", "0.3081", "[0, 1]")
    assert "(p - 0.1307) / 0.3081" in weights["input"]  # the weights take normalised pixels
    assert "normalised inside with mean 0.1307, std 0.3081" in graph["input"]  # the ONNX graph takes [0, 1] pixels
    assert weights["config"] == graph["config"] and json.loads(weights["config"])["name"] == "small"


def test_reproduce_goes_on_after_a_diverged_seed(tmp_path, data_dir, monkeypatch, capsys):
    import search.reproduce as reproduce_module
    import search.train as train_module
    from search.data import load_split
    from search.train import DivergedError, train

    def train_or_diverge(config, split, **kwargs):
        if config.seed == 2:
            raise DivergedError("training loss is nan in epoch 1")
        return train(config, split, **kwargs)

    monkeypatch.setattr(train_module, "train", train_or_diverge)  # reproduce imports it when it trains
    split = load_split(data_dir, torch.device("cpu"), validation=True, subset=256, eval_subset=1000)
    record = reproduce_module.reproduce(config_from_params(SMALL, epochs=1, name="small"), [1, 2, 3], split, tmp_path / "r.json")
    out = capsys.readouterr().out
    assert out.count("DIVERGED") == 1 and "seed   2: DIVERGED (training loss is nan in epoch 1)" in out
    assert [r["seed"] for r in record["runs"]] == [1, 3] and record["diverged"] == [{"seed": 2, "diverged": "training loss is nan in epoch 1"}]
    assert "over 2 seed(s)" in out and "1 of 3 seed(s) diverged" in out
    assert not list(tmp_path.glob("r-seed2.*"))  # no model for the diverged seed


def test_reproduce_of_a_config_that_diverges_on_every_seed_is_one_line(tmp_path):
    path = tmp_path / "nan.json"
    save_config(config_from_params({**SMALL, "lr": 1e20}, epochs=1, name="nan"), path)
    result = run_cli("reproduce", str(path), "--seeds", "1", "2", "--epochs", "1", "--out", str(tmp_path / "r.json"), "--device", "cpu")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr
    assert "diverged on every seed (1, 2)" in lines[0]
    assert result.stdout.count("DIVERGED") == 2
