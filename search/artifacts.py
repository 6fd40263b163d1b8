"""Files the dashboard offers for download: every completed trial's config in its export form
(`export-config.json`: best.json's format, the study's export epochs, the step size scaled; the
config it was trained with is its `config` user attribute) and its learning curve, kept under
OUT/trials/N/ and uploaded to Optuna's file-system artifact store at OUT/artifacts/. Optuna
only attaches artifacts to a trial while it runs, so each trial attaches its own; the best
trial's export-config.json is the study's best.json."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from optuna.artifacts import FileSystemArtifactStore, upload_artifact  # noqa: E402

from space.config import RunConfig, save_config  # noqa: E402

ARTIFACTS = "artifacts"


def artifact_store(out: Path) -> FileSystemArtifactStore:
    (out / ARTIFACTS).mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(out / ARTIFACTS)


def plot_learning_curve(title: str, epochs: list[dict], path: Path) -> None:
    """Train accuracy per epoch, and validation accuracy where it was measured."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([m["epoch"] for m in epochs], [m["train_acc"] for m in epochs], "o-", label="train (augmented)")
    scored = [m for m in epochs if "val_acc" in m]
    ax.plot([m["epoch"] for m in scored], [m["val_acc"] for m in scored], "o-", label="validation")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def attach_trial_files(trial: optuna.Trial, export: RunConfig, n_params: int, history: list[dict], out: Path) -> None:
    """Write trial N's export-config.json and learning-curve.png to OUT/trials/N/ and attach both to the running trial."""
    folder = out / "trials" / str(trial.number)
    folder.mkdir(parents=True, exist_ok=True)
    save_config(export, folder / "export-config.json")
    plot_learning_curve(f"trial {trial.number}: {n_params:,} params", history, folder / "learning-curve.png")
    store = artifact_store(out)
    upload_artifact(artifact_store=store, file_path=str(folder / "export-config.json"), study_or_trial=trial, mimetype="application/json")
    upload_artifact(artifact_store=store, file_path=str(folder / "learning-curve.png"), study_or_trial=trial, mimetype="image/png")
