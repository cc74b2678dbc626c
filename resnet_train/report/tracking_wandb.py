"""logger=wandb: one W&B run per run directory, resumed by its id (online, or offline for
`wandb sync` to upload later)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path


class WandbTracker:
    DURABLE = False  # its service writes the records later: kept for sure once the run is finished
    HINT = "; log in with `wandb login` (or set WANDB_API_KEY), or run with wandb.mode=offline"

    def __init__(self, settings, workdir: Path, saved: dict | None, config: dict, flat: dict):
        import wandb

        same = saved and saved.get("project") == settings.project and saved.get("entity") == settings.entity
        self.id = saved["id"] if same else uuid.uuid4().hex[:16]
        self.settings = settings
        if settings.mode == "offline":
            # Offline is offline: W&B's process-wide telemetry follows the global settings, not
            # this run's, and would otherwise look up its server (measured with wandb 0.31).
            wandb.setup(settings=wandb.Settings(mode="offline"))
        self.run = wandb.init(
            id=self.id,
            resume="allow",
            project=settings.project,
            entity=settings.entity,
            mode=settings.mode,
            dir=settings.dir,
            name=str(workdir),
            config=config,
            allow_val_change=True,  # a resumed run may have changed runtime.* settings
            reinit="create_new",  # sweep members in one process: one run each
            settings=wandb.Settings(silent=True, console="off"),
        )

    def identity(self) -> dict:
        return {"id": self.id, "project": self.settings.project, "entity": self.settings.entity}

    def where(self) -> str:
        return f"run {self.id} of project {self.settings.project} ({self.settings.mode})"

    def log(self, step: int, values: dict) -> None:
        self.run.log(values, step=int(step))

    def results(self, numbers: dict, results: dict) -> None:
        self.run.summary.update(numbers)

    def file(self, path: Path) -> None:
        # A copy in the run's files folder, which W&B uploads when the run finishes (wandb.save
        # would symlink the file and warn that later changes need another save).
        shutil.copy2(path, Path(self.run.dir) / path.name)

    def close(self, status: str) -> None:
        if status == "KILLED":
            self.run.mark_preempting()  # to be continued: W&B shows it preempted, not crashed
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)
