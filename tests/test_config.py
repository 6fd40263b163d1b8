import json
import math

import pytest

from conftest import REFERENCE, assert_one_line_error, run_cli
from space.config import ConfigError, config_from_dict, config_to_json, count_params, load_config
from space.model import build_model

EXPECTED_PARAMS = {"step1": 6_969_866, "step2": 12_862, "step3": 7_944}


@pytest.mark.parametrize("name", EXPECTED_PARAMS)
def test_reference_param_counts_are_exact(name):
    config = load_config(REFERENCE / f"{name}.json")
    assert count_params(config) == EXPECTED_PARAMS[name]
    assert sum(p.numel() for p in build_model(config).parameters()) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", EXPECTED_PARAMS)
def test_summary_prints_the_total(name):
    result = run_cli("summary", str(REFERENCE / f"{name}.json"))
    assert result.returncode == 0, result.stderr
    assert f"total params: {EXPECTED_PARAMS[name]:,}" in result.stdout


def test_step3_builds_the_documented_network():
    import torch

    model = build_model(load_config(REFERENCE / "step3.json"))
    convs = [m for m in model if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [
        (1, 10, 3), (10, 15, 3), (15, 10, 1), (10, 16, 3), (16, 16, 3), (16, 16, 3), (16, 10, 1)]
    assert all(c.bias is None for c in convs)
    out = model.eval()(torch.zeros(2, 1, 28, 28))
    assert out.shape == (2, 10)
    assert torch.allclose(out.exp().sum(1), torch.ones(2))  # log-probabilities


def test_config_file_round_trips(tmp_path):
    config = load_config(REFERENCE / "step3.json")
    assert config_to_json(config) == (REFERENCE / "step3.json").read_text()
    assert config_from_dict(json.loads(config_to_json(config))) == config


def step3_dict() -> dict:
    return json.loads((REFERENCE / "step3.json").read_text())


def with_change(path: str, value) -> dict:
    """step3 with the field at dotted `path` (list indices as numbers) set to `value`; DELETE removes it."""
    raw = step3_dict()
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = raw
    for p in parents:
        node = node[p]
    if value == "DELETE":
        del node[last]
    else:
        node[last] = value
    return raw


BAD_CONFIGS = [
    # (change, words the one-line message must contain)
    (("colour", "red"), ["colour", "unknown key"]),
    (("optimizer.nesterov", True), ["optimizer.nesterov", "unknown key"]),
    (("layers.0.stride", 2), ["layers[0].stride", "unknown key"]),
    (("epochs", "15"), ["epochs", "must be an integer"]),
    (("epochs", 1.5), ["epochs", "must be an integer"]),
    (("layers.0.bias", "no"), ["layers[0].bias", "true or false"]),
    (("optimizer.lr", "fast"), ["optimizer.lr", "must be a number"]),
    (("layers.1.out", 0), ["layers[1].out", "must be > 0"]),
    (("layers.4.out", -3), ["layers[4].out", "must be > 0"]),
    (("epochs", 0), ["epochs", "must be > 0"]),
    (("batch_size", -1), ["batch_size", "must be in 1..60,000"]),
    (("batch_size", 1_000_000_000), ["batch_size", "must be in 1..60,000 (MNIST's training set), got 1000000000"]),
    (("scheduler.gamma", 0), ["scheduler.gamma", "(0, 1]"]),
    (("scheduler.gamma", 1.5), ["scheduler.gamma", "(0, 1]"]),
    (("optimizer.lr", 0), ["optimizer.lr", "must be > 0"]),
    (("optimizer.lr", -0.1), ["optimizer.lr", "must be > 0"]),
    (("layers.8.kernel", 3), ["layers[8]", "kernel 3x3 is larger than the 1x1 feature map"]),
    (("layers.6.kernel", 9), ["layers[6]", "kernel 9x9 is larger than the 8x8 feature map"]),
    (("scheduler.step_size", "DELETE"), ["scheduler.step_size", "missing"]),
    (("layers.3.type", "avgpool"), ["layers[3].type", "must be one of"]),
    (("layers.8.out", 12), ["layers", "must end in 10x1x1"]),
    (("augment.interpolation", "cubic"), ["augment.interpolation", "nearest, bilinear"]),
    (("optimizer.kind", "rmsprop"), ["optimizer.kind", "sgd, nesterov, adam, adamw"]),
    (("scheduler.kind", "cosine"), ["scheduler.kind", "step, onecycle"]),
    (("scheduler.warmup", 0.3), ["scheduler.warmup", "only a onecycle schedule"]),
    (("label_smoothing", 1.0), ["label_smoothing", "[0, 1)"]),
    (("augment.translate", 0.7), ["augment.translate", "[0, 0.5]"]),
    (("augment.scale", -0.1), ["augment.scale", "[0, 1)"]),
]


RECIPE_CONFIGS = [
    # (changes to step3.json, words the message must contain, or None when the config is valid)
    ({"optimizer": {"kind": "adam", "lr": 0.003}}, None),
    ({"optimizer": {"kind": "nesterov", "lr": 0.1, "momentum": 0.9}}, None),
    ({"scheduler": {"kind": "onecycle", "warmup": 0.25}}, None),
    ({"optimizer": {"kind": "adamw", "lr": 0.003, "momentum": 0.9}}, ["optimizer.momentum", "only SGD has it"]),
    ({"optimizer": {"kind": "nesterov", "lr": 0.1, "momentum": 0.0}}, ["optimizer.momentum", "Nesterov needs"]),
    ({"scheduler": {"kind": "onecycle", "step_size": 6}}, ["scheduler.step_size", "a onecycle schedule has no step_size"]),
    ({"scheduler": {"kind": "onecycle", "warmup": 1.0}}, ["scheduler.warmup", "(0, 1)"]),
    ({"scheduler": {"kind": "step", "gamma": 0.1}}, ["scheduler.step_size", "missing"]),
    ({"dataset": "mnist"}, None),
    ({"dataset": "cifar10"}, ["dataset", "must be one of mnist", "cifar10"]),
]


@pytest.mark.parametrize("changes,words", RECIPE_CONFIGS, ids=[json.dumps(c) for c, _ in RECIPE_CONFIGS])
def test_recipe_fields_are_checked_and_written_back_as_read(tmp_path, changes, words):
    raw = {**json.loads((REFERENCE / "step3.json").read_text()), **changes}
    if words is None:
        config = config_from_dict(raw)
        assert config_from_dict(json.loads(config_to_json(config))) == config
        written = json.loads(config_to_json(config))
        assert ("momentum" in written["optimizer"]) == (not config.optimizer.kind.startswith("adam"))
        assert ("step_size" in written["scheduler"]) == (config.scheduler.kind == "step")
        return
    with pytest.raises(ConfigError) as excinfo:
        config_from_dict(raw)
    for word in words:
        assert word in str(excinfo.value)


def test_an_old_config_loads_with_todays_recipe_as_defaults():
    config = load_config(REFERENCE / "step3.json")
    assert (config.optimizer.kind, config.scheduler.kind, config.label_smoothing, config.augment.translate, config.augment.scale) == \
        ("sgd", "step", 0.0, 0.0, 0.0)


@pytest.mark.parametrize("change,words", BAD_CONFIGS, ids=[f"{c[0]}={c[1]}" for c, _ in BAD_CONFIGS])
def test_bad_config_is_rejected_with_one_line(tmp_path, change, words):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(with_change(*change)))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    message = str(excinfo.value)
    assert "\n" not in message
    for word in words:
        assert word in message


@pytest.mark.parametrize("command", ["summary", "reproduce"])
def test_bad_config_on_the_command_line_exits_2_without_traceback(tmp_path, command):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(with_change("scheduler.gamma", 0)))
    assert_one_line_error(run_cli(command, str(path)), "bad.json", "scheduler.gamma", "(0, 1]")


def test_missing_file_and_broken_json_exit_2(tmp_path):
    assert_one_line_error(run_cli("summary", str(tmp_path / "nope.json")), "nope.json", "no such config file")
    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "x", "layers": [')
    assert_one_line_error(run_cli("summary", str(broken)), "broken.json", "not valid JSON", "line 1")
    not_object = tmp_path / "list.json"
    not_object.write_text("[1, 2]")
    assert_one_line_error(run_cli("summary", str(not_object)), "list.json", "must be an object (JSON {...}, TOML [table])")


def test_nan_in_config_is_rejected():
    with pytest.raises(ConfigError, match="finite"):
        config_from_dict(with_change("dropout", math.nan))


def test_architecture_line_of_the_reference():
    from space.config import architecture

    assert architecture(load_config(REFERENCE / "step3.json")) == "c3-10 c3-15 c1-10 mp2 c3-16 c3-16 c3-16 gap c1-10"


def test_a_dropout_rate_the_cpu_mask_cannot_draw_is_refused_in_one_line(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(with_change("dropout", 0.9999924)))
    assert_one_line_error(run_cli("summary", str(path)), "c.json", "dropout", "must be in [0, 0.99]")


RECIPE_OPTIONS = [
    ({"ema": 0.999}, None),
    ({"augment.elastic": {"alpha": 34.0, "sigma": 4.0}}, None),
    ({"distill": {"teacher": "studies/reference/teacher.json", "weight": 0.5, "temperature": 4.0}}, None),
    ({"ema": 1.0}, ["ema", "must be in [0, 1)"]),
    ({"ema": -0.5}, ["ema", "must be in [0, 1)"]),
    ({"ema": "yes"}, ["ema", "must be a number"]),
    ({"augment.elastic": {"alpha": 34.0, "sigma": 10.0}}, ["augment.elastic.sigma", "must be in (0, 6]"]),
    ({"augment.elastic": {"alpha": -1.0, "sigma": 4.0}}, ["augment.elastic.alpha", "must be in [0, 1000]"]),
    ({"augment.elastic": {"alpha": 34.0}}, ["augment.elastic.sigma", "missing"]),
    ({"augment.elastic": 3}, ["augment.elastic", "must be an object"]),
    ({"distill": {"teacher": "t.json", "weight": 1.5}}, ["distill.weight", "must be in [0, 1]"]),
    ({"distill": {"teacher": "t.json", "temperature": 0.0}}, ["distill.temperature", "must be in (0, 100]"]),
    ({"distill": {"teacher": ""}}, ["distill.teacher", "must name the teacher's config file"]),
    ({"distill": {"weight": 0.5}}, ["distill.teacher", "missing"]),
    ({"distill": {"teacher": "t.json", "alpha": 1}}, ["distill.alpha", "unknown key"]),
    ({"precision": "bf16"}, None),
    ({"precision": "fp16"}, ["precision", "must be one of fp32, bf16"]),
]


@pytest.mark.parametrize("changes,words", RECIPE_OPTIONS, ids=[json.dumps(c) for c, _ in RECIPE_OPTIONS])
def test_recipe_options_are_checked_and_written_back_as_read(tmp_path, changes, words):
    raw = step3_dict()
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = raw
        for p in parents:
            node = node[p]
        node[last] = value
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw))
    if words is None:
        config = load_config(path)
        assert config_to_json(load_config_text(config_to_json(config), tmp_path)) == config_to_json(config)  # round trip
        written = json.loads(config_to_json(config))
        for key, value in changes.items():
            *parents, last = key.split(".")
            node = written
            for p in parents:
                node = node[p]
            assert node[last] == value
    else:
        assert_one_line_error(run_cli("summary", str(path)), "c.json", *words)


def load_config_text(text: str, tmp_path):
    (tmp_path / "again.json").write_text(text)
    return load_config(tmp_path / "again.json")


def test_configs_without_the_recipe_options_are_written_as_before(tmp_path):
    text = config_to_json(load_config(REFERENCE / "step3.json"))
    assert "ema" not in text and "distill" not in text and "elastic" not in text and "precision" not in text
