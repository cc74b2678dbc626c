"""Sweeps: a Hydra callback that records each member's status, and the sweep summary table.

resnet-train -m depth=20,32 optimizer.lr=0.05,0.1      # summary.csv / summary.md in the sweep dir
resnet-sweep-report outputs/multirun/2026-11-29/10-00-00
"""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from pathlib import Path

from hydra.experimental.callback import Callback

from resnet_train.training.run_dir import OVERRIDES, RESULTS

log = logging.getLogger(__name__)

# best_val: the figure behind a member's best/ (training/selection.py), what members are ranked by;
# a member without a validation split is ranked by final_test alone, once it has finished (the
# test set is reported, never used to choose).
COLUMNS = (
    "member",
    "status",
    "overrides",
    "metric",
    "best_val",
    "final_val",
    "final_test",
    "epochs",
    "wall_time_s",
    "error",
)


class SweepCallback(Callback):
    """After every member (finished or failed): its status file, then the refreshed summary.

    Hydra rewrites a member's .hydra/ (config, overrides, hydra.yaml) before the member's code runs.
    A job that does not take a directory already holding a run (results.json or any progress),
    i.e. fails or returns before run_dir.save_config writes the run's record (refused: another
    config, a lock, a bad value; or a finished member skipped), leaves that run as it was: .hydra/
    is put back from the record, and a failure is reported (one line, and Hydra's own report) but
    not written as the member's failed.json. A failure of the member's own run writes failed.json."""

    def __init__(self) -> None:
        self._before = {}  # member -> (its record's stamp, whether it held a run) when its job started

    def on_multirun_start(self, config, **kwargs) -> None:
        # The sweep directory exists before the sweeper opens its storage there (Optuna's journal file).
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_multirun_end(self, config, **kwargs) -> None:
        # Once more after every member ended: under a parallel launcher the members' own writes
        # may land in any order, each seeing the others as they were then.
        write_summary(config.hydra.sweep.dir)

    def on_job_start(self, config, **kwargs) -> None:
        from resnet_train.training.run_dir import has_progress

        member = Path(config.hydra.runtime.output_dir)
        self._before[str(member)] = (_record_stamp(member), (member / RESULTS).exists() or has_progress(member))

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
        member = Path(hydra_cfg.runtime.output_dir)
        stamp, held = self._before.pop(str(member), (None, False))
        untouched = held and _record_stamp(member) == stamp  # the job did not take the directory
        if untouched:
            from resnet_train.training.run_dir import restore_record

            restore_record(member)
        failed = member / "failed.json"
        if job_return.status.name == "FAILED":
            error = job_return._return_value
            if untouched:
                error.member_left_as_it_was = (
                    True  # resnet_train_optuna/study.left_as_it_was(): not a failure of the member's run
                )
                # Printed: a log line would go to the member's train.log, which is the run's.
                print(
                    f"resnet-train: {member}: not run, the member's run was left as it was "
                    f"({type(error).__name__}: {error})",
                    file=sys.stderr,
                )
            else:
                from resnet_train.report.metrics import write_json

                write_json(failed, {"error": f"{type(error).__name__}: {error}"})  # atomic: never an empty one
        elif failed.exists():
            failed.unlink()  # a rerun that succeeded
        if hydra_cfg.mode == RunMode.MULTIRUN:
            write_summary(hydra_cfg.sweep.dir)


def _record_stamp(member: Path):
    """Changes whenever run_dir.save_config writes the record (write_atomic: a new file each time)."""
    from resnet_train.training.run_dir import RECORD

    stamps = []
    for name in RECORD:
        try:
            st = (member / "checkpoints" / name).stat()
            stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            stamps.append(None)
    return tuple(stamps)


def member_row(member: Path) -> dict:
    from omegaconf import OmegaConf

    from resnet_train.report.metrics import read_metrics
    from resnet_train.training import selection

    overrides_file = member / OVERRIDES
    overrides = " ".join(OmegaConf.load(overrides_file)) if overrides_file.exists() else ""
    cfg = _member_config(member)
    metric, has_val = cfg.checkpoint.best_metric, bool(cfg.data.val_split)
    records = read_metrics(member)  # read once: the summary is rewritten after every member
    chosen = [r for r in records if r.get("split") == selection.records_split(cfg) and metric in r]
    evals = [r for r in records if r.get("split") == "eval"]
    row = {
        "member": member.name,
        "overrides": overrides,
        "status": "incomplete",
        "error": "",
        "metric": metric + " (EMA)" * bool(cfg.ema.decay),
        "best_val": max((r[metric] for r in chosen), default=None) if has_val else None,
        "final_val": evals[-1][metric] if evals and has_val else None,
        "final_test": None,
        "epochs": evals[-1]["epoch"] if evals else 0,
        "wall_time_s": None,
    }
    results, failed = member / RESULTS, member / "failed.json"
    if failed.exists():
        row.update(status="failed", error=_failure(failed)[:300])
    elif results.exists():
        r = json.loads(results.read_text())
        row.update(
            status="pruned" if r.get("pruned_at_epoch") else "finished",  # hydra.sweeper.pruner stopped it
            best_val=selection.objective(cfg, r),
            final_val=r["eval"][metric] if r["eval_split"] == "val" else None,
            final_test=r["test"][metric],
            epochs=r.get("stopped_early_at_epoch") or r["epochs"],  # early_stop, pruned: the epochs it ran
            wall_time_s=r.get("wall_time_s"),
        )
    return row


def _failure(failed: Path) -> str:
    """A failed member's error from its failed.json; one that cannot be read (empty, cut short,
    edited) still marks the member failed, with a warning instead of the error."""
    try:
        return str(json.loads(failed.read_text(encoding="utf-8"))["error"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        why = f"{type(e).__name__}: {e}"
        log.warning("%s is unreadable (%s): member %s counted as failed", failed, why, failed.parent.name)
        return f"(failed.json unreadable: {type(e).__name__})"


def _member_config(member: Path):
    """What decides how the member is ranked, from the config that made its checkpoints (Hydra
    rewrites .hydra/ before a member runs), or .hydra/'s for a member that made none."""
    from omegaconf import OmegaConf

    candidates = (member / "checkpoints" / "config.yaml", member / ".hydra" / "config.yaml")
    saved = next((p for p in candidates if p.exists()), None)
    cfg = OmegaConf.load(saved) if saved else OmegaConf.create()
    return OmegaConf.create(
        {
            "checkpoint": {"best_metric": OmegaConf.select(cfg, "checkpoint.best_metric", default="accuracy")},
            "data": {"val_split": OmegaConf.select(cfg, "data.val_split", default=None)},
            "ema": {"decay": OmegaConf.select(cfg, "ema.decay", default=None)},
        }
    )


def _rank(row: dict) -> tuple:
    """Failed members last, pruned ones before them; then by best_val (members with a validation
    split), else final_test."""
    score = row["best_val"] if row["best_val"] is not None else row["final_test"]
    return (row["status"] == "failed", row["status"] == "pruned", score is None, -(score or 0.0))


def members(sweep_dir) -> list[Path]:
    return sorted((p for p in Path(sweep_dir).iterdir() if (p / OVERRIDES).exists()), key=lambda p: p.name)


def write_summary(sweep_dir) -> list[dict]:
    """summary.csv and summary.md, best first (_rank); failed members last."""
    sweep_dir = Path(sweep_dir)
    rows = [member_row(m) for m in members(sweep_dir)]
    rows.sort(key=_rank)
    # Whole files, renamed into place: members of a parallel launcher (joblib) write at once.
    from resnet_train.report.metrics import write_atomic

    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(sweep_dir / "summary.csv", table.getvalue())

    def cell(value):
        if isinstance(value, float):
            return f"{value:.4f}"
        return "" if value is None else str(value).replace("|", "/")

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    from resnet_train.tools.sweep_study import study_lines

    lines += study_lines(sweep_dir)  # an Optuna search's: its trials by state, pruned ones, importances
    write_atomic(sweep_dir / "summary.md", "\n".join(lines) + "\n")
    return rows
