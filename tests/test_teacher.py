"""Distillation teachers: trained once per data folder and split, cached, reused, retrained when their config changes."""

from dataclasses import replace

import pytest
import torch

from conftest import TINY_TEACHER, assert_one_line_error, run_cli
from search import teacher as teachers
from search.data import load_split
from search.errors import ConfigError
from search.train import DivergedError
from space.config import Distill, save_config



def test_a_teacher_is_trained_once_reused_and_retrained_when_its_config_changes(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv(teachers.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(teachers, "_loaded", {})
    save_config(TINY_TEACHER, tmp_path / "teacher.json")
    student = replace(TINY_TEACHER, distill=Distill(str(tmp_path / "teacher.json")))
    split = load_split(data_dir, torch.device("cpu"), validation=True, subset=256)
    model, record = teachers.teacher_for(student, split)
    out = capsys.readouterr().out
    assert "training it once" in out and f"trained in {record['seconds']:.0f} s" in out  # its time on its own line
    assert record["eval_set"] == "val" and record["name"] == "tiny-teacher" and not model.training
    (weights,) = (tmp_path / "cache").glob("teacher-*.safetensors")
    written = weights.stat().st_mtime_ns

    monkeypatch.setattr(teachers, "_loaded", {})  # as a new process: from the cache, not trained again
    again, same = teachers.teacher_for(student, split)
    assert "cached" in capsys.readouterr().out and same == record and weights.stat().st_mtime_ns == written
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))

    save_config(replace(TINY_TEACHER, seed=2), tmp_path / "teacher.json")  # a changed teacher is a new teacher
    _, changed = teachers.teacher_for(student, split)
    assert changed["key"] != record["key"] and "training it once" in capsys.readouterr().out
    assert len(list((tmp_path / "cache").glob("teacher-*.safetensors"))) == 2


def test_a_student_with_every_recipe_option_reproduces_its_files_and_names_its_teacher(shared_reproduction):
    record_path, record = shared_reproduction  # conftest: `reproduce` of a small net with ema, elastic and a tiny teacher
    teacher = str(record_path.parent / "teacher.json")
    assert record["teacher"]["teacher"] == teacher and record["teacher"]["eval_set"] == "test"
    assert record["teacher"]["name"] == "tiny-teacher"
    assert record["config"]["distill"] == {"teacher": teacher, "weight": 0.7, "temperature": 3.0}
    assert record["config"]["ema"] == 0.9 and record["config"]["augment"]["elastic"] == {"alpha": 34.0, "sigma": 4.0}
    # its .onnx and .safetensors (the averaged student) give the recorded accuracy, without the teacher:
    # test_model_files.py::test_evaluate_reports_the_recorded_test_accuracy evaluates these very files


def test_a_missing_or_distilling_teacher_is_one_line(tmp_path):
    student = replace(TINY_TEACHER, distill=Distill(str(tmp_path / "nope.json")))
    save_config(student, tmp_path / "student.json")
    assert_one_line_error(run_cli("reproduce", str(tmp_path / "student.json"), "--out", str(tmp_path / "r.json"), "--device", "cpu"),
                          "distill.teacher", "nope.json", "no such config file")
    save_config(student, tmp_path / "teacher.json")
    save_config(replace(TINY_TEACHER, distill=Distill(str(tmp_path / "teacher.json"))), tmp_path / "student.json")
    assert_one_line_error(run_cli("reproduce", str(tmp_path / "student.json"), "--out", str(tmp_path / "r.json"), "--device", "cpu"),
                          "distill.teacher", "learns from a teacher itself")


def test_a_teacher_that_diverges_is_one_line_and_caches_nothing(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv(teachers.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(teachers, "_loaded", {})

    def diverging(config, split, **kwargs):
        raise DivergedError("training loss is nan at epoch 1")

    monkeypatch.setattr(teachers, "train", diverging)  # as a teacher config with a runaway learning rate would
    save_config(TINY_TEACHER, tmp_path / "teacher.json")
    split = load_split(data_dir, torch.device("cpu"), validation=True, subset=256)
    with pytest.raises(ConfigError, match="teacher.json diverged in training .*nan.*lower its learning rate"):
        teachers.teacher(str(tmp_path / "teacher.json"), split)
    assert not list((tmp_path / "cache").glob("teacher-*"))


def test_an_unwritable_cache_is_one_line_before_any_training(tmp_path):
    (tmp_path / "a-file").write_text("in the way")
    save_config(TINY_TEACHER, tmp_path / "teacher.json")
    save_config(replace(TINY_TEACHER, distill=Distill(str(tmp_path / "teacher.json"))), tmp_path / "student.json")
    cache = tmp_path / "a-file" / "cache"  # cannot be created: a file stands where its parent folder would be
    result = run_cli("reproduce", str(tmp_path / "student.json"), "--out", str(tmp_path / "r.json"), "--device", "cpu",
                     env={teachers.CACHE_ENV: str(cache)})
    assert_one_line_error(result, f"teacher cache {cache}: cannot create or write there", f"set {teachers.CACHE_ENV}")
    assert "training it once" not in result.stdout and " epoch " not in result.stdout  # nothing trained
    assert not (tmp_path / "r.json").exists() and not cache.exists()  # nothing written


def test_a_cached_file_that_cannot_be_read_is_trained_again_with_a_line(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv(teachers.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(teachers, "_loaded", {})
    save_config(TINY_TEACHER, tmp_path / "teacher.json")
    split = load_split(data_dir, torch.device("cpu"), validation=True, subset=256)
    model, record = teachers.teacher(str(tmp_path / "teacher.json"), split)
    (weights,) = (tmp_path / "cache").glob("teacher-*.safetensors")
    weights.write_bytes(weights.read_bytes()[:100])  # half a file, as a crash mid-write before atomic writes could leave
    capsys.readouterr()
    monkeypatch.setattr(teachers, "_loaded", {})
    again, _ = teachers.teacher(str(tmp_path / "teacher.json"), split)
    out = capsys.readouterr().out
    assert f"the cached {weights.name}" in out and "cannot be read" in out and "training it again" in out and "training it once" in out
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))  # the same teacher
    monkeypatch.setattr(teachers, "_loaded", {})
    teachers.teacher(str(tmp_path / "teacher.json"), split)
    assert "cached (" in capsys.readouterr().out  # and the cache is whole again


def test_cache_files_appear_whole_or_not_at_all(tmp_path):
    target = tmp_path / "teacher-x.json"

    def crash_mid_write(temporary):
        temporary.write_text('{"half": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        teachers._write_atomically(target, crash_mid_write)
    assert list(tmp_path.iterdir()) == []  # neither the real name nor the temporary one
    teachers._write_atomically(target, lambda temporary: temporary.write_text("{}\n"))
    assert [p.name for p in tmp_path.iterdir()] == ["teacher-x.json"] and target.read_text() == "{}\n"


def test_a_second_process_waits_for_the_first_ones_teacher_instead_of_training_its_own(tmp_path, data_dir, monkeypatch):
    import os
    import subprocess
    import sys

    from filelock import FileLock

    from conftest import ROOT

    monkeypatch.setenv(teachers.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(teachers, "_loaded", {})
    save_config(TINY_TEACHER, tmp_path / "teacher.json")
    split = load_split(data_dir, torch.device("cpu"), validation=True, subset=256)
    (tmp_path / "cache").mkdir()
    lock = FileLock(str(teachers.lock_file(teachers.cache_key(TINY_TEACHER, split))))
    lock.acquire()  # this process is "the first one", training the teacher
    script = ("import torch; from pathlib import Path; from search.data import load_split; from search.teacher import teacher; "
              f"teacher({str(tmp_path / 'teacher.json')!r}, load_split(Path({str(data_dir)!r}), torch.device('cpu'), validation=True, subset=256))")
    second = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        first_line = second.stdout.readline()
        assert "another process is training or writing it" in first_line and "waiting for it" in first_line, second.stderr.read()
        key = teachers.cache_key(TINY_TEACHER, split)
        teachers._train_and_cache(str(tmp_path / "teacher.json"), TINY_TEACHER, split, key, str(data_dir.resolve()),
                                  tmp_path / "cache" / f"teacher-{key}.safetensors", tmp_path / "cache" / f"teacher-{key}.json")
    finally:
        lock.release()
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert "cached (" in out and "training it once" not in out  # it used the first one's teacher
