"""Sweeps: a Hydra callback that records each member's status, and the sweep summary table.

    resnet-train -m depth=20,32 optimizer.lr=0.05,0.1      # summary.csv / summary.md in the sweep dir
    resnet-sweep-report outputs/multirun/2026-11-29/10-00-00
"""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)

COLUMNS = ("member", "status", "overrides", "final_eval_accuracy", "best_eval_accuracy", "epochs",
           "wall_time_s", "error")


class SweepCallback(Callback):
    """After every member (finished or failed): its status file, then the refreshed summary."""

    def on_multirun_start(self, config, **kwargs) -> None:
        # The sweep directory exists before the sweeper opens its storage there (Optuna's sqlite).
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        member = Path(hydra_cfg.runtime.output_dir)
        failed = member / "failed.json"
        if job_return.status.name == "FAILED":
            error = job_return._return_value
            failed.write_text(json.dumps({"error": f"{type(error).__name__}: {error}"}, indent=2) + "\n")
        elif failed.exists():
            failed.unlink()  # a rerun that succeeded
        if hydra_cfg.mode == RunMode.MULTIRUN:
            write_summary(hydra_cfg.sweep.dir)


def member_row(member: Path) -> dict:
    from omegaconf import OmegaConf

    from resnet_train.report import read_metrics

    overrides_file = member / ".hydra" / "overrides.yaml"
    overrides = " ".join(OmegaConf.load(overrides_file)) if overrides_file.exists() else ""
    evals = [r for r in read_metrics(member) if r.get("split") == "eval"]
    row = {"member": member.name, "overrides": overrides, "status": "incomplete", "error": "",
           "final_eval_accuracy": evals[-1]["accuracy"] if evals else None,
           "best_eval_accuracy": max((r["accuracy"] for r in evals), default=None),
           "epochs": evals[-1]["epoch"] if evals else 0, "wall_time_s": None}
    results, failed = member / "results.json", member / "failed.json"
    if failed.exists():
        row.update(status="failed", error=json.loads(failed.read_text())["error"][:300])
    elif results.exists():
        r = json.loads(results.read_text())
        row.update(status="finished", final_eval_accuracy=r["eval"]["accuracy"], epochs=r["epochs"],
                   # Ranked on validation only: a member without a validation split counts with its
                   # final accuracy, never its best epoch on the test set.
                   best_eval_accuracy=r.get("best_val_accuracy", r["eval"]["accuracy"]),
                   wall_time_s=r.get("wall_time_s"))
    return row


def members(sweep_dir) -> list[Path]:
    return sorted((p for p in Path(sweep_dir).iterdir() if (p / ".hydra" / "overrides.yaml").exists()),
                  key=lambda p: p.name)


def write_summary(sweep_dir) -> list[dict]:
    """summary.csv and summary.md, best first (by best eval accuracy); failed members last."""
    sweep_dir = Path(sweep_dir)
    rows = [member_row(m) for m in members(sweep_dir)]
    rows.sort(key=lambda r: (r["status"] == "failed", -(r["best_eval_accuracy"] or -1.0)))
    with open(sweep_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)

    def cell(value):
        if isinstance(value, float):
            return f"{value:.4f}"
        return "" if value is None else str(value).replace("|", "/")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")
    return rows
