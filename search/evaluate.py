"""`evaluate`: the test accuracy of a model file written by `reproduce` (search/model_files.py),
checked against the accuracy its run recorded."""

from __future__ import annotations

from pathlib import Path

from search.data import resolve_data_dir
from search.errors import UsageError
from space.config import load_config
from space.datasets import DATASETS, DEFAULT_DATASET

MODEL_SUFFIXES = (".onnx", ".safetensors")


def evaluate_command(model_file: Path, config_file: Path | None, data_dir: str | None, device: str) -> None:
    """`evaluate`: the test accuracy of a .onnx (through onnxruntime) or .safetensors file written by
    `reproduce`, and whether it is the accuracy its run recorded."""
    if model_file.suffix not in MODEL_SUFFIXES:
        raise UsageError(f"{model_file}: expected a {' or '.join(MODEL_SUFFIXES)} file written by `reproduce`")
    if not model_file.is_file():
        raise UsageError(f"{model_file}: no such model file")
    from search.data import load_images  # torch and onnxruntime only now: the mistakes above answer at once
    from search.device import resolve_device
    from search.model_files import embedded_config, evaluate_model_file, find_config, recorded_accuracy

    config = source = None
    if model_file.suffix == ".safetensors":  # the ONNX graph is self-contained; the weights need their network
        config, source = (load_config(config_file), str(config_file)) if config_file else find_config(model_file)
    try:
        described = config or embedded_config(model_file)  # an ONNX file carries its config, and with it its dataset
    except Exception:  # a damaged file: refused below, where evaluating it fails
        described = None
    dataset = DATASETS[described.dataset if described else DEFAULT_DATASET]
    images, labels = load_images(resolve_data_dir(data_dir), train=False, dataset=dataset)
    try:
        accuracy = evaluate_model_file(model_file, config, images.to(resolve_device(device)), labels)
    except Exception as e:  # a damaged file, or weights that do not fit the config
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{model_file}: cannot be evaluated ({first[:200]})" + ("; check --config" if config else "")) from None
    print(f"{model_file}" + (f" (config from {source})" if source else "") + f": test accuracy {accuracy:.2f}% on {len(labels):,} {dataset.title} test images")
    recorded = recorded_accuracy(model_file)
    if recorded is not None:
        print(f"recorded final test accuracy of this run: {recorded:.2f}% ({'the same' if abs(recorded - accuracy) < 1e-9 else 'DIFFERENT'})")
