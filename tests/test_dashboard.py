"""optuna-dashboard on a study made by `run`: our `dashboard` command in a real headless
Chromium, the plain `optuna-dashboard` command, and the one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import get_all_artifact_meta

from conftest import CHROMIUM, CHROMIUM_FLAGS, ROOT, assert_one_line_error, free_port, run_cli, wait_for_http
from search import optuna_internals


@pytest.fixture()
def study_dir(shared_tiny_study):
    """The output folder of the session's tiny study (conftest)."""
    return shared_tiny_study.out


def storage_of(out: Path) -> str:
    return f"sqlite:///{out / 'study.db'}"


@pytest.fixture()
def dashboard(study_dir):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "search", "dashboard", "--study", "tiny", "--storage", storage_of(study_dir),
                                "--artifacts", str(study_dir), "--port", str(port)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/dashboard", process)
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_best_trial_carries_config_and_learning_curve_artifacts(study_dir):
    study = optuna.load_study(study_name="tiny", storage=storage_of(study_dir))
    names = {meta.filename: meta for meta in get_all_artifact_meta(study.best_trial, storage=optuna_internals.storage_of(study))}
    assert set(names) == {"export-config.json", "learning-curve.png"}
    stored = study_dir / "artifacts" / names["export-config.json"].artifact_id
    assert stored.read_text() == (study_dir / "best.json").read_text()
    assert (study_dir / "artifacts" / names["learning-curve.png"].artifact_id).read_bytes()[:4] == b"\x89PNG"
    # the trained config and its compact architecture line sit beside n_params
    assert study.best_trial.user_attrs["architecture"].startswith("c3-") and study.best_trial.user_attrs["architecture"].endswith("gap c1-10")


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is installed by .ci/run")
def test_dashboard_in_headless_chromium_shows_study_trials_and_best_n_params(study_dir, dashboard, tmp_path):
    from playwright.sync_api import sync_playwright

    base, _ = dashboard
    study = optuna.load_study(study_name="tiny", storage=storage_of(study_dir))
    study_id = optuna_internals.storage_of(study).get_study_id_from_name("tiny")
    best = study.best_trial
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/dashboard/studies/{study_id}")
        page.get_by_text(f"Best Trial (number={best.number})").wait_for(timeout=30_000)
        assert "tiny" in page.inner_text("body")
        page.screenshot(path=str(tmp_path / "dashboard-study.png"), full_page=True)

        page.goto(f"{base}/dashboard/studies/{study_id}/trials")
        page.get_by_text(f"{len(study.trials)} Trials").wait_for(timeout=30_000)
        page.get_by_text("Best Trial").first.click()
        page.get_by_text("n_params").first.wait_for(timeout=30_000)
        text = page.inner_text("body")
        assert f"Trial {best.number} (trial_id=" in text
        assert f"n_params {best.user_attrs['n_params']}" in " ".join(text.split())
        page.screenshot(path=str(tmp_path / "dashboard-best-trial.png"))

        page.goto(f"{base}/dashboard/studies/{study_id}/note")
        page.get_by_text(f"Best trial: {best.number}").wait_for(timeout=30_000)
        assert f"{best.user_attrs['n_params']:,} (limit 4,000)" in page.inner_text("body")
        browser.close()
    assert (tmp_path / "dashboard-study.png").stat().st_size > 10_000
    print(f"screenshots in {tmp_path}")


def test_plain_optuna_dashboard_command_opens_the_study(study_dir):
    port = free_port()
    command = Path(sys.executable).parent / "optuna-dashboard"  # this environment's, whether or not it is activated
    process = subprocess.Popen([str(command), storage_of(study_dir), "--host", "127.0.0.1", "--port", str(port),
                                "--artifact-dir", str(study_dir / "artifacts")], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        studies = json.loads(wait_for_http(f"http://127.0.0.1:{port}/api/studies", process))["study_summaries"]
        assert [s["study_name"] for s in studies] == ["tiny"]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_dashboard_errors_are_one_line(study_dir, dashboard):
    base, _ = dashboard
    busy = base.rsplit(":", 1)[1]
    result = run_cli("dashboard", "--study", "tiny", "--storage", storage_of(study_dir), "--port", busy)
    assert_one_line_error(result, f"port {busy}", "in use", "--port")
    result = run_cli("dashboard", "--study", "other", "--storage", storage_of(study_dir))
    assert_one_line_error(result, "no study named 'other'", "tiny")


def test_report_writes_csv_plots_and_top5(study_dir, tmp_path):
    import pandas as pd

    result = run_cli("report", "--study", "tiny", "--storage", storage_of(study_dir), "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "trials.csv")
    study = optuna.load_study(study_name="tiny", storage=storage_of(study_dir))
    assert list(table["number"]) == [t.number for t in study.trials]
    assert {"number", "state", "objective", "n_params", "conv1_width", "lr", "seconds", "reason"} <= set(table.columns)
    assert list(table["n_params"]) == [t.user_attrs["n_params"] for t in study.trials]
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert len(pngs) >= 4, result.stdout
    assert all((tmp_path / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert "top 5" in result.stdout and str(study.best_trial.number) in result.stdout
    over = [t.user_attrs.get("reason", "").startswith("over the parameter limit") for t in study.trials]
    assert any(over)  # the tiny study's limit refuses some of its points
    half = len(over) // 2
    assert (f"refused before training: {sum(over[:half]) / half:.0%} over the limit, 0% invalid in the first {half} trials; "
            f"{sum(over[-half:]) / half:.0%} over the limit, 0% invalid in the last {half}; a refused trial took") in result.stdout
