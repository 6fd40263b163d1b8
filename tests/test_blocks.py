"""The blocks family: the hand-made nets are points of it, every sampled point is a config in
the usual format, invalid and over-limit points are refused before anything is built, and a
blocks study runs end to end."""

import re
from dataclasses import replace

import optuna
import pytest
import torch

from conftest import REFERENCE, assert_one_line_error, run_cli
from search.export import export_form
from search.objective import may_prune, settled_after
from search.study import create_or_resume
from search.studyfile import Training, first_points, load_study_spec, start_points
from space.blocks import (NET4838_PARAMS, STEP3_ONECYCLE_PARAMS, STEP3_PARAMS, Space, config_from_params, point_from_config, reference_point,
                          space_from_dict, suggest_params)
from space.config import (ConfigError, Conv, GlobalAvgPool, LogSoftmax, MaxPool, Scheduler, architecture, check_shapes, config_from_dict,
                          config_to_dict, count_params, load_config, over_limit)
from space.model import build_model

ROOT_STUDIES = REFERENCE.parent


def test_the_hand_made_step3_model_is_a_point_of_the_family():
    config = config_from_params(STEP3_PARAMS, epochs=15, name="step3")
    reference = load_config(REFERENCE / "step3.json")
    assert config == replace(reference, name="step3")  # layers and the whole recipe
    assert count_params(config) == 7944 == sum(p.numel() for p in build_model(config).parameters())


def test_the_public_4838_parameter_net_is_a_point_of_the_family():
    config = config_from_params(NET4838_PARAMS, epochs=15)
    stage = lambda width: [Conv(width, 3, padding=1, bias=True, bn=True, relu=True, dropout=True)] * 2  # noqa: E731
    assert config.layers == (*stage(4), MaxPool(2), *stage(8), MaxPool(2), *stage(16),
                             Conv(10, 1, bias=True), GlobalAvgPool(), LogSoftmax())
    assert len(config.layers) == 11
    assert count_params(config) == 4838 == sum(p.numel() for p in build_model(config).parameters())
    assert architecture(config) == "c3p1-4 c3p1-4 mp2 c3p1-8 c3p1-8 mp2 c3p1-16 c3p1-16 c1-10 gap"
    assert load_config(REFERENCE / "net4838.json") == replace(config, name="net4838")  # the committed reference config


NAME = re.compile(r"stages|s[1-4]_(convs|padding|transition|transition_width|c[1-3]_(width|kernel))|head|bias|dropout|dropout_at|optimizer|"
                  r"sgd_lr|adam_lr|momentum|weight_decay|schedule|step_size|gamma|warmup|label_smoothing|batch_size|"
                  r"rotation|translate|scale|brightness|contrast")


def sampled_points(n: int, space: Space = Space()) -> list[tuple[dict, dict]]:
    """(Optuna's params, the full point) for n random points of `space`."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    points = []
    for _ in range(n):
        trial = study.ask()
        point = suggest_params(trial, space, 3)
        points.append((dict(trial.params), point))
        study.tell(trial, 0.0)
    return points


def test_every_sampled_point_is_a_config_and_every_parameter_is_sampled_in_every_trial():
    invalid = 0
    names = None
    for params, point in sampled_points(300):
        assert all(NAME.fullmatch(name) for name in params), params
        assert names is None or set(params) == names  # fixed length: the same parameters in every trial, whatever applies
        names = set(params)
        assert {"s4_c3_width", "s3_transition_width", "sgd_lr", "adam_lr", "step_size", "gamma", "warmup"} <= names
        assert "s1_c1_kernel" not in params and "bias" not in params  # one choice: fixed, not a parameter
        config = config_from_params(point, epochs=3)  # reads the parameters that apply
        assert len([layer for layer in config.layers if isinstance(layer, MaxPool)]) == point["stages"] - 1
        assert config.optimizer.lr == point["sgd_lr" if point["optimizer"] in ("sgd", "nesterov") else "adam_lr"]
        assert config.scheduler.kind == point["schedule"]
        as_dict = config_to_dict(config)
        try:
            check_shapes(config.layers)
        except ConfigError:
            invalid += 1
            continue
        assert config_from_dict(as_dict) == config  # the usual format, round trip
    assert 0 < invalid < 300


def test_a_parameter_that_no_point_can_use_is_not_sampled():
    narrowed = replace(Space(), optimizer=("nesterov", "sgd"), schedule=("onecycle",))
    params, point = sampled_points(1, narrowed)[0]
    assert "sgd_lr" in params and "adam_lr" not in params and "warmup" in params and "step_size" not in params and "gamma" not in params


def test_an_invalid_or_over_limit_point_is_refused_before_anything_is_built(monkeypatch):
    """The refusal reads only the config's channel counts: no module of torch is made for it (its
    cost, about 0.3 ms a point, is a measurement in docs/design.md, not a test)."""
    points = [point for _, point in sampled_points(100)]
    monkeypatch.setattr(torch.nn.Module, "__init__", lambda *args, **kwargs: pytest.fail("a network was built to refuse a point"))
    refused = 0
    for point in points:
        config = config_from_params(point, epochs=3)
        try:
            check_shapes(config.layers)
        except ConfigError:
            refused += 1
            continue
        refused += over_limit(count_params(config), 8000)
    assert 0 < refused < len(points)


def test_widths_are_sampled_on_the_scale_the_space_names():
    def width_distributions(space: Space) -> set:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        trial = study.ask()
        suggest_params(trial, space, 3)
        return {d for name, d in trial.distributions.items() if name.endswith("width")}

    assert width_distributions(Space()) == {optuna.distributions.IntDistribution(4, 32)}  # linear, as every study made before the key
    log = replace(Space(), width_scale="log")
    assert width_distributions(log) == {optuna.distributions.IntDistribution(4, 32, log=True)}
    # on a log scale a random width is as often in [4, 8) as in [16, 32): more of the small nets the Pareto question asks for
    widths = [v for params, _ in sampled_points(200, log) for name, v in params.items() if name.endswith("width")]
    assert 4 <= min(widths) and max(widths) <= 32
    assert sum(w < 8 for w in widths) > 2 * sum(w < 8 for params, _ in sampled_points(200) for name, w in params.items() if name.endswith("width"))
    assert reference_point(log, 15) == STEP3_PARAMS  # the hand-made net (trial 0) is still a point of the space


def test_a_study_made_before_the_width_scale_resumes_on_the_linear_scale_and_refuses_another():
    from search.errors import UsageError
    from search.studyfile import spec_to_dict

    spec = load_study_spec(ROOT_STUDIES / "blocks-quick.toml")
    storage = optuna.storages.InMemoryStorage()
    study, _ = create_or_resume(spec, storage, "memory", first_points(spec))
    before = spec_to_dict(spec)
    del before["space"]["width_scale"]  # the settings as a study made before the key stored them
    study.set_user_attr("spec", before)
    assert create_or_resume(spec, storage, "memory", first_points(spec))[1] is False  # resumes, on the linear scale
    # a study keeps its scale: Optuna would refuse the first width of another scale in the middle of a trial
    log = replace(spec, space=replace(spec.space, width_scale="log"))
    with pytest.raises(UsageError, match=r"\(space\.width_scale: 'linear' -> 'log'\); restore the study file, or start a new study") as e:
        create_or_resume(log, storage, "memory", first_points(log))
    assert "\n" not in str(e.value)


def test_the_reference_is_in_the_default_space_and_out_of_a_narrower_one():
    assert reference_point(Space(), 3) == {**STEP3_PARAMS, "step_size": 1}
    assert reference_point(Space(), 15) == STEP3_PARAMS
    assert reference_point(replace(Space(), width=(4, 12)), 3) is None
    assert reference_point(replace(Space(), optimizer=("adam",)), 3) is None


def test_a_space_without_steplr_starts_from_the_hand_made_net_with_the_one_cycle_recipe():
    onecycle = replace(Space(), schedule=("onecycle",), dropout=(0.0, 0.1))
    assert reference_point(onecycle, 15) == reference_point(onecycle, 3) == STEP3_ONECYCLE_PARAMS
    exported = load_config(REFERENCE / "step3-onecycle.json")
    assert config_from_params(STEP3_ONECYCLE_PARAMS, epochs=15, name=exported.name, seed=exported.seed) == exported
    assert reference_point(replace(onecycle, rotation=(0.0, 5.0)), 15) is None  # neither recipe in the space


@pytest.mark.parametrize("text, fragments", [
    ('padding = [0, 1]', None),
    ('bogus = [1, 2]', ["space.bogus", "unknown key"]),
    ('head = ["gap_conv", "mlp"]', ["space.head", '"mlp" is not allowed', "gap_conv, conv_gap, conv_reduce"]),
    ('batch_size = [128, 1000000000]', ["space.batch_size", "1000000000 is not allowed here (each must be 1..60,000 (MNIST's training set))"]),
    ('optimizer = []', ["space.optimizer", "non-empty list"]),
    ('width = [32, 4]', ["space.width", "low must be <= high"]),
    ('stages = [1, 6]', ["space.stages", "within [1, 4]"]),
    ('adam_lr = [0.0, 0.01]', ["space.adam_lr", "log scale"]),
    ('width_scale = "log"', None),
    ('width_scale = ["log"]', ["space.width_scale", 'must be one of "linear", "log", got ["log"]']),
    ('width_scale = "cubic"', ["space.width_scale", 'must be one of "linear", "log", got "cubic"']),
])
def test_space_table_errors_are_one_line(text, fragments):
    key, _, value = text.partition(" = ")
    import tomllib
    raw = tomllib.loads(text)
    if fragments is None:
        space_from_dict(raw)
        return
    with pytest.raises(ConfigError) as e:
        space_from_dict(raw)
    for fragment in fragments:
        assert fragment in str(e.value)


def test_a_blocks_study_file_refuses_recipe_keys_in_training(tmp_path):
    text = (ROOT_STUDIES / "blocks-quick.toml").read_text().replace("export_epochs = 15", "export_epochs = 15\nmomentum = 0.9")
    path = tmp_path / "b.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="training.momentum: the blocks family searches it"):
        load_study_spec(path)
    path.write_text(text.replace('family = "blocks"', 'family = "resnet"'))
    with pytest.raises(ConfigError, match="family: must be one of step3, blocks"):
        load_study_spec(path)


@pytest.mark.parametrize("path", sorted(ROOT_STUDIES.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_study_file_loads(path):
    """A study file no test runs (the GPU's studies/pareto.toml) still parses and passes every check."""
    assert load_study_spec(path).name


def test_the_gpu_study_file_reads_its_answer_as_the_cpu_file_does():
    gpu, cpu = load_study_spec(ROOT_STUDIES / "pareto.toml"), load_study_spec(ROOT_STUDIES / "pareto-cpu.toml")
    assert (gpu.fidelity.rank, gpu.region.answer_level) == (cpu.fidelity.rank, cpu.region.answer_level)
    assert (gpu.tpe_spread, cpu.tpe_spread) == ("stages", "s1_convs")  # the CPU file's spread follows its own band's runs


def test_both_study_files_load_and_share_one_space():
    full, quick = load_study_spec(ROOT_STUDIES / "blocks.toml"), load_study_spec(ROOT_STUDIES / "blocks-quick.toml")
    assert full.family == quick.family == "blocks" and full.space == quick.space
    assert full.training.epochs == 15 and quick.training.epochs == 3 and quick.training.subset < full.training.subset
    assert load_study_spec(ROOT_STUDIES / "quick.toml").family == "step3"


def test_onecycle_exports_unscaled_and_is_judged_after_its_warm_up():
    config = config_from_params({**STEP3_PARAMS, "schedule": "onecycle", "warmup": 0.3}, epochs=3)
    assert config.scheduler == Scheduler(kind="onecycle", warmup=0.3)
    exported = export_form(config, Training(epochs=3, export_epochs=15), "x")
    assert exported.epochs == 15 and exported.scheduler == config.scheduler
    assert settled_after(config) == 1 and [may_prune(e, settled_after(config), 3) for e in (1, 2, 3)] == [False, True, False]


def test_a_tiny_blocks_study_runs_records_refusals_and_exports(tmp_path, data_dir):
    text = (ROOT_STUDIES / "blocks-quick.toml").read_text()
    path = tmp_path / "b.toml"
    path.write_text(text.replace('name = "blocks-quick"', 'name = "bt"').replace("trials = 80 ", "trials = 12 ")
                    .replace("subset = 8000 ", "subset = 256\nvalidation = 1000 ").replace("width = [4, 32]", "width = [4, 12]"))
    out = tmp_path / "out"
    result = run_cli("run", str(path), "--out", str(out), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="bt", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 12
    refused = [t for t in study.trials if t.user_attrs.get("reason", "").startswith(("invalid shape", "over the parameter limit"))]
    assert refused, "the space must produce refused points in 12 trials"
    for trial in study.trials:
        n_params = trial.user_attrs["n_params"]
        if trial.user_attrs.get("reason", "").startswith("invalid shape"):  # its config is recorded, but is no valid config
            with pytest.raises(ConfigError):
                config_from_dict(trial.user_attrs["config"])
        else:
            assert count_params(config_from_dict(trial.user_attrs["config"])) == n_params
        if trial in refused:
            assert trial.state == optuna.trial.TrialState.PRUNED and not trial.intermediate_values
            assert trial.constraints["params_over_limit"] > 0
        else:
            assert trial.constraints == {"params_over_limit": n_params - 8000}
    best = load_config(out / "best.json")
    assert best.epochs == 15 and count_params(best) <= 8000
    summary = run_cli("summary", str(out / "best.json"))
    assert summary.returncode == 0 and f"{count_params(best):,}" in summary.stdout


def test_blocks_overrides_go_through_the_checks(tmp_path):
    result = run_cli("run", str(ROOT_STUDIES / "blocks-quick.toml"), "--out", str(tmp_path / "o"), "--epochs", "2")
    assert_one_line_error(result, "--epochs 2", "training.epochs")


@pytest.mark.parametrize("text, fragments", [
    ('ema = [0.0, 0.999]', None),
    ('ema = [0.0, 1.0]', ["space.ema", "1.0 is not allowed"]),
    ('elastic_alpha = [0.0, -3.0]', ["space.elastic_alpha", "-3.0 is not allowed"]),
    ('elastic_sigma = [9.0]', ["space.elastic_sigma", "9.0 is not allowed"]),
    ('distill_weight = [0.0, 2.0]', ["space.distill_weight", "2.0 is not allowed"]),
    ('distill_temperature = ["hot"]', ["space.distill_temperature", "list of the float values"]),
    ('teacher = [""]', ["space.teacher", "is not allowed"]),
])
def test_recipe_option_keys_are_checked(text, fragments):
    import tomllib
    raw = tomllib.loads(text)
    if fragments is None:
        assert space_from_dict(raw).ema == (0.0, 0.999)
        return
    with pytest.raises(ConfigError) as e:
        space_from_dict(raw)
    for fragment in fragments:
        assert fragment in str(e.value)


def test_recipe_options_are_off_by_default_and_become_config_fields():
    assert config_from_params(STEP3_PARAMS, epochs=15) == config_from_params({**STEP3_PARAMS, "ema": 0.0, "elastic_alpha": 0.0,
                                                                             "distill_weight": 0.0}, epochs=15)
    on = config_from_params({**STEP3_PARAMS, "ema": 0.99, "elastic_alpha": 34.0, "elastic_sigma": 4.0, "distill_weight": 0.5,
                             "distill_temperature": 3.0, "teacher": "t.json"}, epochs=15)
    assert on.ema == 0.99 and (on.augment.elastic.alpha, on.augment.elastic.sigma) == (34.0, 4.0)
    assert (on.distill.teacher, on.distill.weight, on.distill.temperature) == ("t.json", 0.5, 3.0)
    assert Space().ema == (0.0,) and Space().distill_weight == (0.0,)  # nothing new is searched unless the study file asks


def test_a_blocks_study_searches_the_recipe_options_and_shows_them(tmp_path, data_dir):
    from conftest import TINY_TEACHER
    from space.config import save_config

    save_config(TINY_TEACHER, tmp_path / "teacher.json")
    text = (ROOT_STUDIES / "blocks-quick.toml").read_text()
    path = tmp_path / "b.toml"
    path.write_text(text.replace('name = "blocks-quick"', 'name = "recipe"').replace("trials = 80 ", "trials = 8 ")
                    .replace("subset = 8000 ", "subset = 256\nvalidation = 1000 ").replace("width = [4, 32]", "width = [4, 8]")
                    + f'ema = [0.0, 0.99]\nelastic_alpha = [0.0, 34.0]\ndistill_weight = [0.0, 0.5]\nteacher = ["{tmp_path / "teacher.json"}"]\n')
    out = tmp_path / "out"
    env = {"SEARCH_CACHE_DIR": str(tmp_path / "cache")}
    result = run_cli("run", str(path), "--out", str(out), "--device", "cpu", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.index("teacher ") < result.stdout.index("trial    0")  # trained before the first trial, on its own line
    study = optuna.load_study(study_name="recipe", storage=f"sqlite:///{out / 'study.db'}")
    sampled = [t for t in study.trials if "ema" in t.params]
    assert sampled and all("distill_weight" in t.params and "elastic_alpha" in t.params for t in sampled)
    for t in sampled:  # each trial's config is what its parameters say
        config = t.user_attrs["config"]
        assert config.get("ema", 0.0) == t.params["ema"]
        assert ("distill" in config) == (t.params["distill_weight"] > 0) and ("elastic" in config["augment"]) == (t.params["elastic_alpha"] > 0)
        if "distill" in config and "epochs" in t.user_attrs:
            assert t.user_attrs["teacher"]["name"] == "tiny-teacher"
    report = run_cli("report", "--study", "recipe", "--storage", f"sqlite:///{out / 'study.db'}", "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    import pandas as pd

    assert {"ema", "elastic_alpha", "distill_weight"} <= set(pd.read_csv(tmp_path / "report" / "trials.csv").columns)


def test_a_config_file_is_read_back_as_the_point_that_builds_it():
    wide = replace(Space(), bias=(False, True))  # net4838's convs carry biases
    for name in ("step3", "front3991", "net4838-onecycle"):
        config = load_config(REFERENCE / f"{name}.json")
        point = point_from_config(config, wide, 15)
        assert config_from_params(point, epochs=15, seed=config.seed, name=config.name) == config
    step3 = point_from_config(load_config(REFERENCE / "step3.json"), Space(), 15)
    assert step3 == {**STEP3_PARAMS, "ema": 0.0, "elastic_alpha": 0.0, "distill_weight": 0.0}
    assert point_from_config(load_config(REFERENCE / "front3991.json"), Space(), 5)["step_size"] == 2  # 6 of 15 epochs: 2 of 5
    with pytest.raises(ConfigError, match="not a net of the blocks family"):
        point_from_config(load_config(REFERENCE / "step1.json"), Space(), 15)  # no BatchNorm
    with pytest.raises(ConfigError, match=r"not a point of the study's \[space\]: bias = True \(offered: \[False\]\)"):
        point_from_config(load_config(REFERENCE / "net4838.json"), Space(), 15)
    bilinear = load_config(REFERENCE / "front3991.json")
    with pytest.raises(ConfigError, match="its augment is not one the blocks family builds"):
        point_from_config(replace(bilinear, augment=replace(bilinear.augment, interpolation="bilinear")), Space(), 15)
    # one conv per stage: both dropout places build the same net, so the point takes the one the space offers
    single = config_from_params({**NET4838_PARAMS, "bias": False, "s1_convs": 1, "s2_convs": 1, "s3_convs": 1}, epochs=15)
    for place in ("every_conv", "stage_end"):
        assert point_from_config(single, replace(Space(), dropout_at=(place,)), 15)["dropout_at"] == place
    late = replace(bilinear, scheduler=replace(bilinear.scheduler, step_size=20))  # never drops in 15 epochs: at 3, step 3
    assert point_from_config(late, Space(), 3)["step_size"] == 3


START_STUDY = (ROOT_STUDIES / "blocks-quick.toml").read_text().replace('name = "blocks-quick"', 'name = "st"')


def test_start_configs_are_the_trials_after_the_hand_made_model(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(f'start = ["{REFERENCE / "front3991.json"}", "{REFERENCE / "step3.json"}"]\n' + START_STUDY)
    spec = load_study_spec(path)
    study, created = create_or_resume(spec, optuna.storages.InMemoryStorage(), "memory", first_points(spec))
    assert created
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    front3991 = point_from_config(load_config(REFERENCE / "front3991.json"), spec.space, spec.training.epochs)
    # trial 0 the hand-made model; step3.json again is that same point, so it is not enqueued twice
    assert [t.system_attrs["fixed_params"] for t in waiting] == [reference_point(spec.space, 3), front3991]
    assert [t.user_attrs for t in waiting] == [{"enqueued": "reference"},  # the dashboard shows where each came from
                                               {"enqueued": str(REFERENCE / "front3991.json"), "start": str(REFERENCE / "front3991.json")}]
    assert front3991["s2_c2_width"] == 15 and front3991["step_size"] == 1  # its step size of 6 in 15 epochs, at 3 epochs


def test_a_start_trial_lost_to_a_crash_is_enqueued_again_on_resume(tmp_path):
    from search.study import requeue_lost

    path = tmp_path / "s.toml"
    path.write_text(f'start = ["{REFERENCE / "front3991.json"}"]\n' + START_STUDY)
    spec = load_study_spec(path)
    storage = optuna.storages.InMemoryStorage()
    study, _ = create_or_resume(spec, storage, "memory", first_points(spec))
    reference, start = study.ask(), study.ask()  # both taken by a worker that then died: FAIL
    assert (reference.user_attrs["enqueued"], start.user_attrs["start"]) == ("reference", str(REFERENCE / "front3991.json"))
    study.tell(start, state=optuna.trial.TrialState.FAIL)
    study.tell(reference, 90.0)
    resumed, created = create_or_resume(spec, storage, "memory", first_points(spec))
    assert not created and requeue_lost(resumed, first_points(spec)) == [str(REFERENCE / "front3991.json")]  # the lost one only
    (waiting,) = resumed.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert waiting.system_attrs["fixed_params"] == start_points(spec)[0][1] and waiting.user_attrs["start"] == str(REFERENCE / "front3991.json")
    assert requeue_lost(resumed, first_points(spec)) == []  # waiting already: not enqueued twice
    # a study made before trials carried "enqueued": its trial 0 is the reference, its start trials carry "start"
    legacy = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    legacy.enqueue_trial(reference_point(spec.space, 3))
    legacy.enqueue_trial(start_points(spec)[0][1], user_attrs={"start": str(REFERENCE / "front3991.json")})
    first, second = legacy.ask(), legacy.ask()
    legacy.tell(first, 90.0)
    legacy.tell(second, 91.0)
    assert requeue_lost(legacy, first_points(spec)) == []


@pytest.mark.parametrize("line, fragments", [
    ('start = "front3991.json"', ["start: must be a list of config file paths"]),
    ('start = [3]', ["start: must be a list of config file paths"]),
    ('start = ["nowhere.json"]', ["start:", "nowhere.json"]),
    ('start = ["studies/reference/step1.json"]', ["start: studies/reference/step1.json: not a net of the blocks family"]),
    ('start = ["studies/reference/net4838.json"]', ["start: studies/reference/net4838.json: not a point of the study's [space]: bias = True"]),
    ('start = ["studies/reference/step3.json"]\nmax_params = 5000', ["start: studies/reference/step3.json has 7,944 parameters, over max_params (5,000)"]),
    ('start = ["studies/reference/step3.json"]\ntrials = 1', ["start: 1 start configs need trials > 1 (got 1)"]),
])
def test_bad_start_configs_are_one_line_errors_before_anything_is_written(tmp_path, line, fragments):
    path = tmp_path / "s.toml"
    text = "\n".join(row for row in START_STUDY.splitlines() if row.split("=")[0].strip() not in ("max_params", "trials") or row.split("=")[0].strip() not in line)
    path.write_text(line + "\n" + text)
    result = run_cli("run", str(path), "--out", str(tmp_path / "out"), "--device", "cpu")
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "out").exists()
