"""`reproduce` leaves the trained model as .safetensors and .onnx files; `evaluate` scores them."""

import json

import numpy as np
import onnxruntime
import pytest
import torch

from conftest import assert_one_line_error, run_cli
from search.data import load_mnist
from search.model_files import Deployable, load_weights
from space.config import config_from_dict, save_config
from space.step3 import REFERENCE_PARAMS, config_from_params

# The step-3 topology at a quarter of its size: one epoch on 60,000 images stays short on 2 cores.
SMALL = {**REFERENCE_PARAMS, **{k: 4 for k in REFERENCE_PARAMS if k.endswith("_width")}}


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("reproduced")
    config_file = tmp / "small.json"
    save_config(config_from_params(SMALL, epochs=1, name="small"), config_file)
    record = tmp / "run.json"
    result = run_cli("reproduce", str(config_file), "--seeds", "5", "--out", str(record), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    return record, json.loads(record.read_text())


@pytest.fixture(scope="module")
def test_set(data_dir):
    return load_mnist(data_dir, train=False)


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
