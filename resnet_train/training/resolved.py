"""What `auto` resolved to when a run started (today the precision policy), kept beside its
checkpoints in checkpoints/resolved.json, so that a resumed run continues with it on any host."""

from __future__ import annotations

import json
from pathlib import Path

from resnet_train.errors import RunDirError
from resnet_train.report.metrics import write_json
from resnet_train.training.run_dir import RESOLVED, has_progress


def save(workdir: Path, precision: str) -> None:
    path = workdir / RESOLVED
    record = {"runtime.precision": precision}
    if not path.exists() or json.loads(path.read_text() or "{}") != record:
        write_json(path, record)


def resumed_precision(workdir: Path, requested: str) -> tuple[str, str | None]:
    """(the precision to run with, a line for the log or None). A resumed run keeps the policy its
    checkpoints were made with: `auto` resolves to it on any host. float16 keeps a loss scale in the
    optimizer state, so another policy cannot continue a float16 run, nor float16 another's: refused
    with the run's own policy named. float32 <-> bfloat16 fit the same checkpoints (an explicit
    switch is allowed, like every runtime.* change)."""
    path = workdir / RESOLVED
    if not path.exists() or not has_progress(workdir):
        return requested, None
    try:
        theirs = json.loads(path.read_text())["runtime.precision"]
    except (OSError, ValueError, KeyError, TypeError):
        raise RunDirError(
            f'{path} is damaged: write {{"runtime.precision": "POLICY"}} into it with the policy '
            f"the run was trained with (its train.log names it), then rerun"
        ) from None
    if requested == "auto":
        return theirs, (
            None
            if theirs == requested
            else f"runtime.precision=auto: continuing with {theirs}, the policy the run started with"
        )
    if requested != theirs and "mixed_float16" in (requested, theirs):
        raise RunDirError(
            f"{workdir} was trained with runtime.precision={theirs}; {requested} cannot continue its checkpoints "
            f"(float16 keeps a loss scale in the optimizer state): rerun with runtime.precision={theirs} or auto, "
            f"or start a new hydra.run.dir with init_from={workdir}"
        )
    return requested, None
