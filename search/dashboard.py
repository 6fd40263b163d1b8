"""`dashboard`: optuna-dashboard's own server on a study's storage, with its artifacts."""

from __future__ import annotations

import socket
from pathlib import Path

import optuna_dashboard

from search.artifacts import ARTIFACTS
from search.errors import UsageError
from search.optuna_internals import storage_of
from search.storage import load_existing_study


def dashboard_command(study_name: str, storage: str | None, artifacts: Path | None, host: str, port: int) -> None:
    """`dashboard`: serve optuna-dashboard on the study, with its artifacts when there are any."""
    from optuna.artifacts import FileSystemArtifactStore

    study = load_existing_study(study_name, storage)
    with socket.socket() as probe:  # a clear message now beats a traceback from inside the server
        try:
            probe.bind((host, port))
        except OSError:
            raise UsageError(f"port {port} on {host} is in use (or not bindable); pass --port with a free port") from None
    study_id = storage_of(study).get_study_id_from_name(study.study_name)
    folder = artifacts or Path("studies") / study_name
    store = FileSystemArtifactStore(folder / ARTIFACTS) if (folder / ARTIFACTS).is_dir() else None  # serve, never create
    print(f"optuna-dashboard for study {study_name!r}: http://{host}:{port}/dashboard/studies/{study_id}  (Ctrl-C stops it)", flush=True)
    optuna_dashboard.run_server(storage_of(study), host=host, port=port, artifact_store=store)
