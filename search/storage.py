"""Where studies live: SQLite by default, a journal file for several workers on one machine,
PostgreSQL (or any RDB URL) for several machines.

An RDB storage runs heartbeats: a trial whose worker died (SIGKILL, power loss) is marked
FAIL after the grace period and re-queued once by RetryHeartbeatStaleTrialCallback. The
journal file has no heartbeat: search/stale.py finds the trials of dead workers there.
"""

from __future__ import annotations

import atexit
import os
import re
import time
import warnings
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from sqlalchemy import event

from search.errors import UsageError

SQLITE_FILE, JOURNAL_FILE = "study.db", "journal.log"
HEARTBEAT_INTERVAL, GRACE_PERIOD = 10, 30  # seconds; a dead worker's trial is re-queued about 30 s later


def mask_password(text: str) -> str:
    """`text` with the password of any URL in it replaced by ***, safe to print."""
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


def is_journal(url: str) -> bool:
    """A storage given as a file path (no scheme) is a journal file."""
    return "://" not in url


def default_storage(out: Path, workers: int) -> str:
    """An existing study's own storage in `out`; for a new one SQLite, or a journal file for several workers
    (SQLite's locking is not safe for several writing processes)."""
    if (out / JOURNAL_FILE).exists():
        return str(out / JOURNAL_FILE)
    if (out / SQLITE_FILE).exists():
        if workers > 1:
            raise UsageError(f"{out / SQLITE_FILE} is SQLite, which is not safe for several workers; rerun with --workers 1, "
                             f"or start a new study (--study NEW_NAME) or pass --storage postgresql://...")
        return f"sqlite:///{out / SQLITE_FILE}"
    return str(out / JOURNAL_FILE) if workers > 1 else f"sqlite:///{out / SQLITE_FILE}"


def check_workers(url: str, workers: int) -> None:
    """Refuse SQLite for several workers with one line: its locking is not safe for several writing processes."""
    if workers > 1 and url.startswith("sqlite"):
        raise UsageError(f"{mask_password(url)} is SQLite, which is not safe for several workers; rerun with --workers 1, "
                         f"or use a journal file or PostgreSQL (--storage postgresql://...)")


def open_storage(url: str, heartbeat: tuple[int, int] = (HEARTBEAT_INTERVAL, GRACE_PERIOD)) -> optuna.storages.BaseStorage:
    """Open `url` (an RDB URL or a journal file path); a one-line UsageError when that fails."""
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats and retries are "experimental" since Optuna 2.8
    try:
        if is_journal(url):
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(url, lock_obj=JournalFileOpenLock(url)))
        interval, grace = heartbeat
        for attempt in range(3):  # workers started together race to create the tables; the losers just retry
            try:
                storage = RDBStorage(url, heartbeat_interval=interval, grace_period=grace,
                                     heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
                                     engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None)
                if url.startswith("sqlite"):
                    _commit_without_waiting_for_the_disk(storage)
                return storage
            except Exception as e:
                if attempt == 2 or "duplicate key" not in str(e) and "already exists" not in str(e):
                    raise
                time.sleep(1)
    except ModuleNotFoundError as e:
        raise UsageError(f"storage {mask_password(url)} needs the Python module {e.name!r}; for PostgreSQL: pip install -e '.[postgres]'") from None
    except Exception as e:  # SQLAlchemy's errors: bad URL, refused connection, bad password, missing database
        reason = mask_password(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        raise UsageError(f"cannot open storage {mask_password(url)} ({reason[:200]}); check the URL and that the server is up") from None


def _commit_without_waiting_for_the_disk(storage: RDBStorage) -> None:
    """SQLite in WAL mode with synchronous=NORMAL. Every suggested parameter is a commit, and with
    SQLite's defaults each commit waits for the disk: a refused trial of the blocks family (about
    30 parameters) spent most of its time there. In WAL mode a crash of the process loses
    nothing committed and a power loss can lose the last commits but not damage the file.
    At exit the -wal file is folded back into study.db (a checkpoint), even while another
    process still has the study open, so a finished command leaves its work in study.db."""

    def pragmas(connection, _record) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    def checkpoint() -> None:
        try:
            with storage.engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except Exception:  # a reader elsewhere holds the WAL: the next command folds it in
            pass
        storage.engine.dispose()

    event.listen(storage.engine, "connect", pragmas)
    storage.engine.dispose()  # connections opened before the listener get the pragmas too
    atexit.register(checkpoint)


def output_folder(folder: Path, option: str) -> Path:
    """`folder`, created if needed and proven to take a file, before any work starts (a one-line
    UsageError naming `option` otherwise)."""
    return writable_folder(folder, option, f"pass {option} a writable folder")


def writable_folder(folder: Path, name: str, fix: str) -> Path:
    """`folder`, created if needed and proven to take a file; a one-line UsageError naming it as
    `name` and saying the `fix` otherwise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"{name} {folder}: cannot create or write there ({e.strerror or type(e).__name__}); {fix}") from None
    return folder


def has_heartbeat(url: str) -> bool:
    """Whether the storage `open_storage` opens for `url` runs heartbeats: every RDB storage (a
    dead worker's trial becomes FAIL and is re-queued once), no journal file."""
    return not is_journal(url)


def storage_of_existing(name: str, storage: str | None) -> str:
    """The storage of a study that must exist: `storage`, else its file in studies/NAME/."""
    if storage is not None:
        return storage
    folder = Path("studies") / name
    for candidate in (folder / JOURNAL_FILE, folder / SQLITE_FILE):
        if candidate.exists():
            return str(candidate) if candidate.name == JOURNAL_FILE else f"sqlite:///{candidate}"
    raise UsageError(f"study {name!r} not found: there is no {folder / SQLITE_FILE} or {folder / JOURNAL_FILE}; "
                     f"run `python -m search run STUDY.toml` first, or pass --storage URL")


def load_existing_study(name: str, storage: str | None) -> optuna.Study:
    """A study that must already exist, in `storage` or, by default, in studies/NAME/."""
    url = storage_of_existing(name, storage)
    opened = open_storage(url)
    try:
        return optuna.load_study(study_name=name, storage=opened, sampler=optuna.samplers.RandomSampler())
    except KeyError:
        names = optuna.get_all_study_names(opened)
        raise UsageError(f"no study named {name!r} in {mask_password(url)} (it holds: {', '.join(names) or 'no study'}); check --study") from None
