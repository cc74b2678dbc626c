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

from resnet_train.config import flatten
from resnet_train.config.store import ADDED_LATER
from resnet_train.errors import RunDirError, first_line
from resnet_train.report.metrics import METRICS, write_atomic  # noqa: F401 -- METRICS: a run's file names in one place

log = logging.getLogger(__name__)

CONFIG = Path(".hydra") / "config.yaml"
OVERRIDES = Path(".hydra") / "overrides.yaml"
# The config that made the checkpoints, beside them. Hydra rewrites .hydra/ of a sweep member
# before the member's code runs, so that copy cannot tell whether a rerun has another config.
CHECKPOINTED_CONFIG = Path("checkpoints") / "config.yaml"
# What may change when a run is resumed: where and how it runs, and how long (a longer run
# recomputes its lr schedule for the new length), not what it computes.
# Where the data lives may change (data.path of a folder dataset too), provided the data found there is
# the run's own: check_same_data compares it with the run's dataset.json.
RESUMABLE_CHANGES = (
    "runtime.",
    "checkpoint.",
    "log.",  # and where the records go: none of these changes what is computed
    "logger",
    "mlflow.",
    "wandb.",
    "data.data_dir",
    "data.manual_dir",
    "data.path",
    "init_from",
    "distill.teacher",  # where it lives, not whether there is one (MOVED_ONLY); distill compares weights
    "epochs",
    "steps",
)
# Settings that may change between two values, never from or to null: a run trained with a teacher
# continues with one (distill.check_same_teacher then compares its weights), one without, without.
MOVED_ONLY = ("distill.teacher",)
# What `auto` settings resolved to when the run started, beside its checkpoints: a resume on other
# hardware keeps them (runtime.precision=auto would otherwise switch float16 <-> float32 between hosts).
RESOLVED = Path("checkpoints") / "resolved.json"
# The dataset description a resume must find again (the folder source's data.path may move).
DATASET = Path("dataset.json")
RESULTS = Path("results.json")  # written when the run finishes: its final metrics
CURVES = Path("curves.png")  # the training curves, redrawn after every epoch
CONFUSION = Path("confusion_test.png")  # the test split's confusion matrix, when the run finishes
FINAL_FILES = (CURVES, CONFUSION, RESULTS)  # what the experiment trackers get at the end
# Settings a run keeps from its own saved config whatever the command says, because its
# checkpoints only make sense with them, with the value that runs saved before the setting existed
# had. model.padding: "same" (TF's) until the papers' symmetric padding became the default; those
# checkpoints hold no padding layers and their weights were trained with that geometry.
# data.split_seed: runs made before it held out a TF shuffle mixed with the training seed ("legacy",
# data.carve_validation): resumed, they keep validating on the examples they never trained on.
# data.split_method: "uniform", how data.val_split drew before it held out each class's share.
RUN_OWNED = {f"{group}.{key}": value for group, keys in ADDED_LATER.items() for key, value in keys.items()}


def ensure_writable(workdir: Path) -> None:
    """Creates the run directory and proves it takes a file, before any work is done."""
    probe = workdir / f".write_test_{os.getpid()}"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # a full disk: the probe was created, its write failed
            probe.unlink(missing_ok=True)
        hint = "free disk space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "fix its permissions"
        raise RunDirError(
            f"cannot write to the run directory {workdir} ({e.strerror}): {hint}, "
            f"or choose another with hydra.run.dir=PATH"
        ) from None


def config_changes(saved_cfg, cfg) -> tuple[list[str], list[str]]:
    """(refused, allowed): the settings that differ between a run's saved config and `cfg`."""
    from omegaconf import OmegaConf

    old = flatten(OmegaConf.to_container(saved_cfg, resolve=False))
    new = flatten(OmegaConf.to_container(cfg, resolve=False))
    # A key the saved config lacks was added to the tool after that run: not a change of the run's.
    keys = sorted(k for k in new.keys() | old.keys() if k in old and old[k] != new.get(k, "<unset>"))
    say = {k: f"{k}: {old.get(k, '<unset>')} -> {new.get(k, '<unset>')}" for k in keys}
    resumable = {
        k for k in keys if k.startswith(RESUMABLE_CHANGES) and (k not in MOVED_ONLY or None not in (old[k], new.get(k)))
    }
    return [say[k] for k in keys if k not in resumable], [say[k] for k in keys if k in resumable]


def check_resumable(workdir: Path, cfg) -> list[str]:
    """A run directory with checkpoints is continued only with the config that made them, up to
    RESUMABLE_CHANGES (returned, for the log)."""

    saved_cfg = load_saved_config(workdir)
    if saved_cfg is None:
        return []
    saved = saved_config_path(workdir)
    changes, allowed = config_changes(saved_cfg, cfg)
    changes = [c for c in changes if c.split(":", 1)[0] not in RUN_OWNED]  # the run's own win (run_owned)
    if changes:
        if saved.parent.name == "checkpoints" and (workdir / CONFIG).exists():  # Hydra rewrote .hydra/ (a sweep)
            restore_record(workdir)
        shown = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
        raise RunDirError(
            f"{workdir} holds a run with another config ({shown}): rerun with its config to continue it, "
            f"or choose a new hydra.run.dir (init_from={workdir} starts a new run from its weights)"
        )
    return allowed


def saved_config_path(workdir: Path) -> Path | None:
    """The file of the config that made the run's checkpoints (None: a directory without progress)."""
    saved = workdir / CHECKPOINTED_CONFIG
    if not saved.exists():  # a run from before the copy beside the checkpoints existed
        saved = workdir / CONFIG
    if not saved.exists() or not has_progress(workdir):
        return None
    return saved


def load_saved_config(workdir: Path):
    """The config that made the run in `workdir` (None: no run there yet). An empty or unparsable
    one (a power loss during its write) is damage, not "no constraints": refused, so that a rerun
    with any other config cannot continue the run's checkpoints."""
    from omegaconf import DictConfig, OmegaConf

    path = saved_config_path(workdir)
    if path is None:
        return None
    try:
        saved = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 -- yaml's and OmegaConf's errors alike
        saved = e
    if not isinstance(saved, DictConfig) or not saved:
        if isinstance(saved, Exception):
            why = f"{type(saved).__name__}: {first_line(saved, 120)}"
        else:
            why = "empty" if not saved else f"a {type(saved).__name__}, not a mapping"
        raise RunDirError(
            f"{path} ({why}) is damaged, so it cannot tell which config made the run's checkpoints: write "
            f"the run's config back into it (e.g. from its .hydra/config.yaml or the command that started it) "
            f"and rerun, or start a new hydra.run.dir with init_from={workdir}"
        )
    return saved


def has_progress(workdir: Path) -> bool:
    """Whether training happened in `workdir`: a checkpoint, damaged ones set aside, a best/, or
    metrics past step 0. Such a directory is never taken for a new run, whatever is left of it."""
    from resnet_train.report.metrics import read_metrics

    checkpoints = workdir / "checkpoints"
    corrupt = checkpoints / "corrupt"
    return (
        any(checkpoints.glob("ckpt-*.index"))
        or (corrupt.is_dir() and any(corrupt.iterdir()))
        or any(checkpoints.glob("best/ckpt-*.index"))
        or any(r.get("step", 0) > 0 for r in read_metrics(workdir))
    )


def run_owned(workdir: Path, cfg):
    """(`cfg` with the RUN_OWNED settings of the run in `workdir`, if it holds one; the lines that
    say which were kept, for the log once the run's checks pass)."""
    from omegaconf import OmegaConf

    saved = load_saved_config(workdir)
    if saved is None:
        return cfg, []
    cfg, kept = cfg.copy(), []
    for key, legacy in RUN_OWNED.items():
        theirs = OmegaConf.select(saved, key, default=legacy)
        if OmegaConf.select(cfg, key) != theirs:
            kept.append(f"Continuing {workdir} with its own {key}={theirs} (its checkpoints were made with it)")
            OmegaConf.update(cfg, key, theirs, force_add=True)
    return cfg, kept


# A run's record: .hydra/<name>, which save_config also keeps as checkpoints/<name> (hydra.yaml only
# in sweeps; runs made before that copy existed kept config.yaml only).
RECORD = ("config.yaml", "overrides.yaml", "hydra.yaml")


def restore_record(workdir: Path) -> None:
    """Puts .hydra/ back as the run wrote it, from the copy beside its checkpoints."""
    for name in RECORD:
        record, rewritten = workdir / CHECKPOINTED_CONFIG.parent / name, workdir / CONFIG.parent / name
        if record.exists() and (not rewritten.exists() or rewritten.read_bytes() != record.read_bytes()):
            write_atomic(rewritten, record.read_text(encoding="utf-8"))


def save_config(workdir: Path, cfg, overrides=None) -> None:
    """The config (and the command-line overrides) beside the run, as Hydra would write them; the
    tools (resnet-eval, -export, ...) and sweep reports read them back.

    The run's record, .hydra/{config,overrides,hydra}.yaml (hydra.yaml: a sweep member's, from
    Hydra), is also kept beside the checkpoints: Hydra rewrites a sweep member's .hydra/ before its
    code runs, and a rerun that does not take the directory (refused, or a finished member skipped)
    puts it back from there (check_resumable, sweep.SweepCallback)."""
    from omegaconf import OmegaConf

    kept = workdir / CHECKPOINTED_CONFIG.parent
    if overrides is not None:
        text = OmegaConf.to_yaml(OmegaConf.create(list(overrides)))
        for place in (workdir / OVERRIDES, kept / OVERRIDES.name):
            write_atomic(place, text)
    hydra_record = workdir / CONFIG.parent / "hydra.yaml"
    if hydra_record.exists():
        write_atomic(kept / hydra_record.name, hydra_record.read_text(encoding="utf-8"))
    text = OmegaConf.to_yaml(cfg)
    for place in (CONFIG, CHECKPOINTED_CONFIG):  # last: checkpoints/config.yaml completes the record
        write_atomic(workdir / place, text)


def check_same_data(workdir: Path, info) -> None:
    """A resumed run must find its own dataset, wherever it now lives: the same classes, image
    shape and split sizes as its dataset.json."""
    import json

    path = workdir / DATASET
    if not path.exists() or not has_progress(workdir):
        return
    try:
        theirs = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # rewritten from the data once the run's checkpoint is restored
    ours = info.to_dict()
    if isinstance(theirs, dict) and isinstance(theirs.get("class_names"), list):  # saved before names were displayable
        from resnet_train.data.info import displayable

        theirs["class_names"] = [displayable(str(n)) for n in theirs["class_names"]]
    # Not the name: a folder dataset is named after its directory, which may have moved.
    keys = ("num_classes", "image_shape", "train_size", "val_size", "test_size", "class_names")
    differ = [k for k in keys if k in theirs and _plain(theirs[k]) != _plain(ours.get(k))]
    if differ:
        shown = "; ".join(f"{k}: {_short(theirs[k])} -> {_short(ours.get(k))}" for k in differ[:3])
        raise RunDirError(
            f"the data found now is not the dataset {workdir} was trained on ({shown}): point the "
            f"data settings at the run's own data, or start a new hydra.run.dir with init_from={workdir}"
        )


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _short(value) -> str:
    text = str(_plain(value))
    return text if len(text) <= 60 else text[:57] + "..."


def finished(workdir: Path, cfg):
    """The saved results when `workdir` holds a finished run of this many epochs, else None."""
    import json

    from resnet_train.training.checkpoint import latest_in

    results = workdir / RESULTS
    if not results.exists():
        return None
    try:
        saved = json.loads(results.read_text())
    except ValueError:  # damaged: the run is resumed (and its results written again)
        return None
    latest = latest_in(workdir / "checkpoints")
    # By name: a run directory that was moved or copied is still recognised as finished.
    if (
        saved.get("config_hash") == config_hash(cfg)
        and latest
        and saved.get("checkpoint")
        and Path(latest).name == Path(saved["checkpoint"]).name
    ):
        return saved
    return None


def config_hash(cfg) -> str:
    """A fingerprint of the resolved config: a finished run is only skipped for the same config."""
    import hashlib

    from omegaconf import OmegaConf

    text = OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
