"""The trained model as files a user can deploy: weights as `.safetensors`, the network as `.onnx`.

Both sit next to the run record they belong to and are named after it
(`runs/reproduce-step3-TIME.json` -> `runs/reproduce-step3-TIME-seed1.safetensors` and
`...-seed1.onnx`). The ONNX graph takes what `torchvision.transforms.ToTensor` gives, float
pixels in [0, 1] of shape (batch, 1, 28, 28) with any batch size, normalises them itself and
returns log-probabilities (batch, 10), so it runs without this tool. The `.safetensors`
file holds the state dict of `build_model(config)`, the bare network, which takes
normalised pixels. Both files' metadata carry the config JSON and the input convention
(mean, std, [0, 1] pixels), so either file says what it is and how to feed it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy
import torch
from torch import nn

from search.errors import UsageError
from search.train import evaluate
from space.config import RunConfig, config_from_dict, config_to_dict, count_params
from space.datasets import DATASETS, MNIST, Dataset
from space.model import build_model


class Deployable(nn.Module):
    """The trained network with the input normalisation in front: ToTensor's [0, 1] pixels in, log-probabilities out."""

    def __init__(self, net: nn.Module, dataset: Dataset = MNIST) -> None:
        super().__init__()
        self.net, self.mean, self.std = net, dataset.mean, dataset.std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net((image - self.mean) / self.std)


def model_paths(record: Path, seed: int) -> tuple[Path, Path]:
    """(weights, onnx) for `seed` of the run recorded in `record`."""
    stem = record.with_suffix("")
    return stem.parent / f"{stem.name}-seed{seed}.safetensors", stem.parent / f"{stem.name}-seed{seed}.onnx"


def record_of(model_file: Path) -> tuple[Path, int] | None:
    """The run record a model file belongs to and its seed, from the name `model_paths` gives; None otherwise."""
    match = re.fullmatch(r"(.+)-seed(-?\d+)", model_file.with_suffix("").name)
    if match is None:
        return None
    return model_file.parent / f"{match[1]}.json", int(match[2])


def save_model_files(model: nn.Module, config: RunConfig, record: Path, seed: int) -> tuple[Path, Path]:
    """Write `model`'s weights and its ONNX export for `seed` next to `record`; return both paths."""
    from safetensors.torch import save_file

    weights, onnx_path = model_paths(record, seed)
    weights.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights), metadata=file_metadata(config))
    export_onnx(model, config, onnx_path)
    return weights, onnx_path


def file_metadata(config: RunConfig) -> dict[str, str]:
    """What both model files carry: the config, the size and how to feed the network. The
    .safetensors weights are the bare network: it takes normalised pixels, (p - mean) / std
    with p in [0, 1] (ToTensor's); the ONNX graph normalises by itself (its "input" says so)."""
    d = DATASETS[config.dataset]
    return {"config": json.dumps(config_to_dict(config)), "n_params": str(count_params(config)), "dataset": d.name,
            "input": f"normalised pixels (p - {d.mean}) / {d.std} for float pixels p in [0, 1], shape (batch, {_shape(d)})",
            "mean": str(d.mean), "std": str(d.std), "pixel_range": "[0, 1]", "output": f"log-probabilities, shape (batch, {d.classes})"}


def _shape(dataset: Dataset) -> str:
    return ", ".join(map(str, dataset.image_shape))


def export_onnx(model: nn.Module, config: RunConfig, path: Path) -> None:
    """ONNX with a dynamic batch dimension; the input normalisation is part of the graph."""
    import onnx

    dataset = DATASETS[config.dataset]
    deployable = Deployable(model, dataset).eval()
    example = torch.rand(2, *dataset.image_shape)
    torch.onnx.export(deployable, (example,), str(path), input_names=["image"], output_names=["log_probs"],
                      dynamic_shapes={"image": {0: torch.export.Dim("batch")}}, dynamo=True, verbose=False,
                      external_data=False)  # one self-contained file (the weights are a few KB)
    graph = onnx.load(str(path))  # the config and the input convention travel with the file
    metadata = file_metadata(config) | {"input": f"float pixels in [0, 1], shape (batch, {_shape(dataset)}); normalised inside with "
                                                 f"mean {dataset.mean}, std {dataset.std}"}
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


def load_weights(path: Path, config: RunConfig) -> nn.Module:
    """`build_model(config)` with the weights of a `.safetensors` file, in evaluation mode."""
    from safetensors.torch import load_file

    model = build_model(config)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def onnx_log_probs(path: Path, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Run an exported model in onnxruntime on uint8 images (N, 28, 28): log-probabilities (N, 10)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixels = images.unsqueeze(1).float().div(255.0).cpu().numpy()
    outs = [session.run(["log_probs"], {"image": pixels[i : i + batch]})[0] for i in range(0, len(pixels), batch)]
    return torch.from_numpy(numpy.concatenate(outs))


def embedded_config(model_file: Path) -> RunConfig | None:
    """The config stored in a model file itself (safetensors or ONNX metadata), if any."""
    if model_file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(model_file), framework="pt") as f:
            text = (f.metadata() or {}).get("config")
    else:
        import onnx

        props = {p.key: p.value for p in onnx.load(str(model_file), load_external_data=False).metadata_props}
        text = props.get("config")
    return config_from_dict(json.loads(text)) if text else None


def find_config(model_file: Path) -> tuple[RunConfig, str]:
    """The config of a model file and where it came from: the run record beside it, else the file's own metadata."""
    found = record_of(model_file)
    if found is not None and found[0].is_file():
        record = json.loads(found[0].read_text())
        return config_from_dict(record["config"]), str(found[0])
    config = embedded_config(model_file)
    if config is None:
        raise UsageError(f"{model_file}: no run record beside it and no config inside it; pass --config CONFIG.json")
    return config, f"{model_file} (metadata)"


def recorded_accuracy(model_file: Path) -> float | None:
    """The final test accuracy the run record beside `model_file` holds for its seed, if any."""
    found = record_of(model_file)
    if found is None or not found[0].is_file():
        return None
    record, seed = json.loads(found[0].read_text()), found[1]
    runs = [r for r in record.get("runs", []) if r.get("seed") == seed]
    return runs[0]["final_acc"] if runs and record.get("eval_set") == "test" else None


def evaluate_model_file(model_file: Path, config: RunConfig | None, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Test accuracy (%) of a saved model on uint8 `images`: ONNX through onnxruntime, safetensors through torch."""
    if model_file.suffix == ".safetensors":  # the trainer's own evaluation, as `reproduce` recorded it
        return evaluate(load_weights(model_file, config).to(images.device), images, labels.to(images.device), DATASETS[config.dataset])[1]
    log_probs = onnx_log_probs(model_file, images)
    return 100.0 * (log_probs.argmax(1) == labels.cpu()).sum().item() / len(labels)
