"""The run directory's own files: is it writable, which config made it, does this config fit it.

Nothing here changes an existing run before the checks pass: a rerun with a bad or different
config leaves the run's files as they were.
"""
from __future__ import annotations

import errno
import logging
import logging.handlers
import os
from pathlib import Path

from resnet_train.errors import RunDirError
from resnet_train.report import write_atomic

log = logging.getLogger(__name__)

CONFIG = Path(".hydra") / "config.yaml"
OVERRIDES = Path(".hydra") / "overrides.yaml"
# The config that made the checkpoints, beside them. Hydra rewrites .hydra/ of a sweep member
# before the member's code runs, so that copy cannot tell whether a rerun has another config.
CHECKPOINTED_CONFIG = Path("checkpoints") / "config.yaml"
# What may change when a run is resumed: where and how it runs, and how long (a longer run
# recomputes its lr schedule for the new length), not what it computes.
RESUMABLE_CHANGES = ("runtime.", "checkpoint.", "data.data_dir", "data.manual_dir", "init_from", "epochs", "steps")
# Settings a run keeps from its own saved config whatever the command says, because its
# checkpoints only make sense with them, with the value that runs saved before the setting existed
# had. model.padding: "same" (TF's) until the papers' symmetric padding became the default; those
# checkpoints hold no padding layers and their weights were trained with that geometry.
# data.split_seed: runs made before it held out a TF shuffle mixed with the training seed ("legacy",
# data.carve_validation): resumed, they keep validating on the examples they never trained on.
RUN_OWNED = {"model.padding": "same", "data.split_seed": "legacy"}


def ensure_writable(workdir: Path) -> None:
    """Creates the run directory and proves it takes a file, before any work is done."""
    probe = workdir / f".write_test_{os.getpid()}"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        hint = "free disk space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "fix its permissions"
        raise RunDirError(f"cannot write to the run directory {workdir} ({e.strerror}): {hint}, "
                          f"or choose another with hydra.run.dir=PATH") from None


def flatten(node, prefix="") -> dict:
    """{"optimizer.lr": 0.1, ...}: the leaves of a nested mapping under dotted keys."""
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(saved_cfg, cfg) -> tuple[list[str], list[str]]:
    """(refused, allowed): the settings that differ between a run's saved config and `cfg`."""
    from omegaconf import OmegaConf

    old = flatten(OmegaConf.to_container(saved_cfg, resolve=False))
    new = flatten(OmegaConf.to_container(cfg, resolve=False))
    # A key the saved config lacks was added to the tool after that run: not a change of the run's.
    keys = sorted(k for k in new.keys() | old.keys() if k in old and old[k] != new.get(k, "<unset>"))
    say = {k: f"{k}: {old.get(k, '<unset>')} -> {new.get(k, '<unset>')}" for k in keys}
    return ([say[k] for k in keys if not k.startswith(RESUMABLE_CHANGES)],
            [say[k] for k in keys if k.startswith(RESUMABLE_CHANGES)])


def check_resumable(workdir: Path, cfg) -> list[str]:
    """A run directory with checkpoints is continued only with the config that made them, up to
    RESUMABLE_CHANGES (returned, for the log)."""
    from omegaconf import OmegaConf

    saved = saved_config_path(workdir)
    if saved is None:
        return []
    changes, allowed = config_changes(OmegaConf.load(saved), cfg)
    changes = [c for c in changes if c.split(":", 1)[0] not in RUN_OWNED]  # the run's own win (run_owned)
    if changes:
        if saved.parent.name == "checkpoints" and (workdir / CONFIG).exists():  # Hydra rewrote it (a sweep)
            write_atomic(workdir / CONFIG, saved.read_text(encoding="utf-8"))
        shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise RunDirError(
            f"{workdir} holds a run with another config ({shown}): rerun with its config to continue it, "
            f"or choose a new hydra.run.dir (init_from={workdir} starts a new run from its weights)")
    return allowed


def saved_config_path(workdir: Path) -> Path | None:
    """The file of the config that made the run's checkpoints (None: a directory without them)."""
    saved = workdir / CHECKPOINTED_CONFIG
    if not saved.exists():  # a run from before the copy beside the checkpoints existed
        saved = workdir / CONFIG
    if not saved.exists() or not any((workdir / "checkpoints").glob("ckpt-*.index")):
        return None
    return saved


def run_owned(workdir: Path, cfg):
    """(`cfg` with the RUN_OWNED settings of the run in `workdir`, if it holds one; the lines that
    say which were kept, for the log once the run's checks pass)."""
    from omegaconf import OmegaConf

    path = saved_config_path(workdir)
    if path is None:
        return cfg, []
    saved, cfg, kept = OmegaConf.load(path), cfg.copy(), []
    for key, legacy in RUN_OWNED.items():
        theirs = OmegaConf.select(saved, key, default=legacy)
        if OmegaConf.select(cfg, key) != theirs:
            kept.append(f"Continuing {workdir} with its own {key}={theirs} (its checkpoints were made with it)")
            OmegaConf.update(cfg, key, theirs, force_add=True)
    return cfg, kept


def save_config(workdir: Path, cfg, overrides=None) -> None:
    """The config (and the command-line overrides) beside the run, as Hydra would write them; the
    tools (resnet-eval, -export, ...) and sweep reports read them back."""
    from omegaconf import OmegaConf

    text = OmegaConf.to_yaml(cfg)
    for place in (CONFIG, CHECKPOINTED_CONFIG):
        write_atomic(workdir / place, text)
    if overrides is not None:
        OmegaConf.save(OmegaConf.create(list(overrides)), workdir / OVERRIDES)



class HeldLog:
    """Holds back the log lines meant for files in the run directory (train.log) until the run's
    checks pass, so that a refused rerun does not append to an existing run's log. On the
    terminal they appear at once. `release()` writes them; `close(failed=True)` drops them when the
    log file existed before (an existing run), else writes them (a new run's log of its attempt)."""

    def __init__(self, workdir: Path):
        root, workdir = logging.getLogger(), Path(workdir).resolve()
        self._swaps = []
        for handler in list(root.handlers):
            name = getattr(handler, "baseFilename", None)
            if name and Path(name).resolve().is_relative_to(workdir):
                memory = logging.handlers.MemoryHandler(1_000_000, flushLevel=logging.CRITICAL + 1,
                                                        target=handler, flushOnClose=False)
                memory.setLevel(handler.level)
                memory.setFormatter(handler.formatter)
                root.removeHandler(handler)
                root.addHandler(memory)
                self._swaps.append((memory, handler, Path(name).exists()))

    def release(self) -> None:
        self._restore(write=True)

    def close(self, failed: bool) -> None:
        self._restore(write=not failed)

    def _restore(self, write: bool) -> None:
        root = logging.getLogger()
        for memory, handler, existed in self._swaps:
            if write or not existed:
                memory.flush()
            memory.buffer.clear()
            root.removeHandler(memory)
            root.addHandler(handler)
        self._swaps = []
