"""The study's storage, opened the same way by the search (the sweeper) and by its members.

hydra.sweeper.storage is
- a file path (the default, <sweep dir>/optuna.journal): Optuna's JournalStorage on a
  JournalFileBackend. Every write is one appended line under a file lock, so the search and its
  members (other processes, other machines on a shared file system) can write at once; it needs
  no database library and `optuna-dashboard <file>` reads it.
- a database URL (sqlite:///..., postgresql://...): Optuna's RDBStorage, as before.
- null: an in-memory study, kept by nothing.

A study written by hydra-optuna-sweeper (Optuna 2.10: sqlite:///<sweep dir>/optuna.db, a table
schema Optuna 4 does not read) is refused with the command that upgrades it; nothing is changed.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from resnet_train.errors import UserError

OLD_DEFAULT = "optuna.db"  # where hydra-optuna-sweeper's search kept its study (our old default)


class OldStudy(UserError):
    """A study Optuna cannot use as it is (an older table schema)."""


def is_url(spec: str) -> bool:
    return "://" in spec


def open_storage(spec, sweep_dir=None):
    """The storage `spec` names (see the module's docstring), or None for an in-memory study."""
    if spec is None or str(spec).strip() in ("", "None", "null"):
        return None
    spec = str(spec)
    if is_url(spec):
        return _database(spec)
    import optuna

    path = Path(spec).expanduser()
    if not path.exists():
        refuse_old_default(path, sweep_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
    backend = optuna.storages.journal.JournalFileBackend(str(path))
    return optuna.storages.JournalStorage(backend)


def refuse_old_default(journal: Path, sweep_dir) -> None:
    """A new journal beside an old plugin's optuna.db would start the study again in members that
    hold its trials: the user chooses (upgrade and point at it, or a new sweep directory)."""
    old = Path(sweep_dir or journal.parent) / OLD_DEFAULT
    if old.exists():
        raise OldStudy(
            f"{old} holds a study of the former Optuna sweeper (hydra-optuna-sweeper); to continue it run "
            f"`optuna storage upgrade --storage sqlite:///{old}` and add hydra.sweeper.storage=sqlite:///{old}, "
            f"or start a new search in another hydra.sweep.dir (nothing was changed)"
        )


def _database(url: str):
    """RDBStorage, refused without a change when its tables are of an older schema."""
    import optuna

    if url.startswith("sqlite:///") and not _has_tables(url[len("sqlite:///") :]):
        return optuna.storages.RDBStorage(url)  # a new file (or an empty one): Optuna creates the tables
    try:  # the tables exist: their schema checked before anything is created or written
        existing = optuna.storages.RDBStorage(url, skip_compatibility_check=True, skip_table_creation=True)
        current, head = existing.get_current_version(), existing.get_head_version()
    except Exception as e:  # noqa: BLE001 -- a remote database without tables yet: Optuna makes them
        if url.startswith("sqlite:"):
            raise _old(url, f"{type(e).__name__}: {e}") from None
        return optuna.storages.RDBStorage(url)
    if current != head:
        raise _old(url, f"its table schema is {current}, Optuna {optuna.__version__} reads {head}")
    return optuna.storages.RDBStorage(url)


def _old(url: str, why: str) -> OldStudy:
    return OldStudy(
        f"the study storage {url} was written by an older Optuna ({why}): run `optuna storage upgrade "
        f"--storage {url}` to continue it, or start a new search in another hydra.sweep.dir (nothing was changed)"
    )


def _has_tables(path: str) -> bool:
    """Whether the sqlite file holds tables (read only: a missing file is not created)."""
    if not path or path == ":memory:" or not Path(path).exists():
        return False
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        return db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0] > 0
