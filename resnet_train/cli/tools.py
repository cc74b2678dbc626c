"""The after-training commands as Hydra apps (resnet-eval, -predict, -explain, -plot, -export) and
resnet-sweep-report; thin like the training command's (cli/__init__.py), whose error handling they share."""

from __future__ import annotations

import sys

import hydra
from omegaconf import OmegaConf

from resnet_train.cli import run_tool
from resnet_train.cli.hydra_errors import run_app
from resnet_train.errors import EXIT_USER_ERROR


@hydra.main(version_base=None, config_path="pkg://resnet_train.configs", config_name="eval")
def _eval(cfg) -> float:
    def task():
        from resnet_train.tools.evaluate import evaluate_run

        result = evaluate_run(
            cfg.run,
            cfg.checkpoint,
            cfg.data.split,
            OmegaConf.to_container(cfg.data),
            None if cfg.tta == "none" else cfg.tta,
            cfg.batch_size,
            cfg.threshold,
        )
        if result["task"] == "multilabel":
            from resnet_train.tools.multilabel import print_eval

            print_eval(result)
        else:
            _print_multiclass(result)
        sparsity = result["sparsity"]
        print(
            f"sparsity: {sparsity['overall']:.1%} of the {sparsity['weights']:,} conv and dense kernel weights are zero"
        )
        if sparsity["overall"]:
            print("per-layer sparsity:", ", ".join(f"{name} {s:.1%}" for name, s in sparsity["layers"].items()))
        print("Wrote " + " and ".join(result["files"]))
        return result["map" if result["task"] == "multilabel" else "accuracy"]

    return run_tool(task)


def _print_multiclass(result) -> None:
    k = next(key for key in result if key.startswith("top") and key != "top1")
    print(
        f"{result['dataset']} {result['split']}: {result['examples']} images, loss {result['loss']:.4f}, "
        f"top-1 {result['accuracy']:.4f}, {k} {result[k]:.4f} (tta {result['tta']})"
    )
    per_class = sorted(result["per_class_accuracy"].items(), key=lambda kv: (kv[1] is None, kv[1]))
    shown = per_class if len(per_class) <= 20 else per_class[:10]
    print(
        ("per-class accuracy:" if len(per_class) <= 20 else "lowest per-class accuracy:"),
        ", ".join(f"{name} {acc:.3f}" for name, acc in shown if acc is not None),
    )


def evaluate() -> None:
    """Console script `resnet-eval`."""
    run_app(_eval, "eval")


def _require_images(cfg) -> None:
    from resnet_train.errors import UserError

    if not cfg.images:
        raise UserError("images=[PATH,...] is required: image files and/or folders")


@hydra.main(version_base=None, config_path="pkg://resnet_train.configs", config_name="predict")
def _predict(cfg) -> None:
    def task():
        import json

        from resnet_train.errors import UserError
        from resnet_train.tools.multilabel import check_threshold
        from resnet_train.tools.predict import predict_files
        from resnet_train.training.runs import load_run

        _require_images(cfg)
        check_threshold(cfg.threshold)
        if cfg.output not in ("text", "json", "embeddings"):
            raise UserError(f"output must be text, json or embeddings (got {cfg.output!r})")
        if cfg.out is not None and cfg.output != "embeddings":
            raise UserError(f"out={cfg.out} applies to output=embeddings only")
        if cfg.output == "embeddings":
            return _write_embeddings(cfg)
        run = load_run(cfg.run, cfg.checkpoint)
        results, failed = predict_files(run, list(cfg.images), cfg.top_k, threshold=cfg.threshold)
        if cfg.output == "json":
            print(
                json.dumps(
                    {"predictions": results, "failed": [{"path": str(p), "error": why} for p, why in failed]}, indent=2
                )
            )
        else:
            for r in results:
                print(f"{r['path']}: {_predicted(r)}")
        for path, why in failed:
            print(f"resnet-predict: could not predict {path}: {why}", file=sys.stderr)
        if failed:
            sys.exit(EXIT_USER_ERROR)  # bad input, though the readable images were predicted above

    run_tool(task)


def _predicted(r) -> str:
    """One image's text line: its top-k classes, or a multi-label run's labels at the threshold."""
    if "labels" not in r:
        return ", ".join(f"{p['class']} {p['probability']:.3f}" for p in r["predictions"])
    if r["labels"]:
        return ", ".join(f"{p['class']} {p['probability']:.3f}" for p in r["labels"]) + f" (>= {r['threshold']:g})"
    top = r["predictions"][0]
    return f"no label >= {r['threshold']:g} (most probable: {top['class']} {top['probability']:.3f})"


def _write_embeddings(cfg) -> None:
    """output=embeddings: the pooled features of every readable image, with its file name."""
    from resnet_train.tools import embeddings
    from resnet_train.training.runs import load_run, read_run

    out = embeddings.check_out(cfg.out or read_run(cfg.run)[0] / "embeddings.npz")
    run = load_run(cfg.run, cfg.checkpoint)
    vectors, files, failed = embeddings.embed_files(run, list(cfg.images))
    if len(files):
        embeddings.write(out, vectors, files)
        print(
            f"Wrote {len(files)} embeddings of {vectors.shape[1]} features ({run.model.name}'s pooled layer) to {out}"
        )
    for path, why in failed:
        print(f"resnet-predict: could not embed {path}: {why}", file=sys.stderr)
    if failed:
        sys.exit(EXIT_USER_ERROR)


def predict() -> None:
    """Console script `resnet-predict`."""
    run_app(_predict, "predict")


@hydra.main(version_base=None, config_path="pkg://resnet_train.configs", config_name="explain")
def _explain(cfg) -> None:
    def task():
        from pathlib import Path

        from resnet_train.errors import UserError
        from resnet_train.models.probabilities import task_of
        from resnet_train.report.plots import grad_cam_figure
        from resnet_train.tools.explain import grad_cam, output_names
        from resnet_train.training.runs import load_images, load_run

        _require_images(cfg)
        run = load_run(cfg.run, cfg.checkpoint)
        images, ok, failed = load_images(list(cfg.images), run.info)
        if cfg.class_index is not None and not 0 <= cfg.class_index < run.info.num_classes:
            raise UserError(f"class_index must be in 0..{run.info.num_classes - 1} (got {cfg.class_index})")
        out = Path(cfg.out) if cfg.out else run.run_dir / "explain"
        if len(ok):
            heat, classes, probs = grad_cam(run.model, images, cfg.class_index, task_of(run.info))
            for path, name, image, h, c, p in zip(ok, output_names(ok), images, heat, classes, probs):
                title = f"Grad-CAM: {run.info.class_names[c]} ({p:.2f})"
                print(f"{path}: {grad_cam_figure(image, h, title, out / name)}")
        for path, why in failed:
            print(f"resnet-explain: could not read {path}: {why}", file=sys.stderr)
        if failed:
            sys.exit(EXIT_USER_ERROR)

    run_tool(task)


def explain() -> None:
    """Console script `resnet-explain`."""
    run_app(_explain, "explain")


@hydra.main(version_base=None, config_path="pkg://resnet_train.configs", config_name="plot")
def _plot(cfg) -> None:
    def task():
        from pathlib import Path

        from resnet_train.errors import UserError
        from resnet_train.report.plots import compare_runs
        from resnet_train.training.run_dir import METRICS

        runs = [Path(str(r)).expanduser() for r in cfg.runs]
        if not runs:
            raise UserError("runs=[DIR,...] is required: run directories (or a sweep's members)")
        missing = [str(r) for r in runs if not (r / METRICS).exists()]
        if missing:
            raise UserError(f"no {METRICS} in {', '.join(missing)}: not resnet-train run directories")
        names = list(cfg.names) if cfg.names else None
        if names and len(names) != len(runs):
            raise UserError(f"names has {len(names)} entries for {len(runs)} runs")
        print(f"Wrote {compare_runs(runs, cfg.out, names).resolve()}")

    run_tool(task)


def plot() -> None:
    """Console script `resnet-plot`."""
    run_app(_plot, "plot")


@hydra.main(version_base=None, config_path="pkg://resnet_train.configs", config_name="export")
def _export(cfg) -> None:
    def task():
        from pathlib import Path

        from resnet_train.tools import hub
        from resnet_train.tools.export import export_run

        if cfg.push_to is not None:
            hub.repo_id(cfg.push_to)  # a bad target or a missing package: refused before any work
        r = export_run(
            cfg.run,
            cfg.checkpoint,
            cfg.format,
            cfg.quantize,
            cfg.out,
            cfg.split,
            opset=cfg.opset,
            calibration_images=cfg.calibration_images,
            latency_runs=cfg.latency_runs,
        )
        if r["format"] == "all":  # the comparison table
            print(r["markdown"], end="")
            print("Wrote " + " and ".join([*r["files"], r["card"]]))
        else:
            _print_export(r)
        if cfg.push_to is not None:
            print(f"Pushed {Path(r['card']).parent} to {hub.push(Path(r['card']).parent, cfg.push_to)}")

    run_tool(task)


def _print_export(r) -> None:
    """One export's file, size and figures beside the original's, and its model card."""
    quant = "" if r["quantize"] == "none" else f" ({r['quantize']})"
    quant += f" (opset {r['opset']})" if r["opset"] else ""
    weights = " with the EMA weights" if r.get("weights") == "ema" else ""
    print(f"Exported {r['format']}{quant}{weights}: {r['path']} ({r['bytes'] / 1e6:.2f} MB)")
    what = f"Exact-match accuracy at threshold {r['threshold']:g}" if "map" in r else "Accuracy"
    print(
        f"{what} on {r['examples']} {r['split']} images: exported {r['accuracy']:.4f}, original "
        f"{r['original_accuracy']:.4f}; top-1 agreement {r['top1_agreement']:.4f}, largest probability "
        f"difference {r['max_probability_difference']:.2e}"
    )
    if "map" in r:
        print(
            f"mAP: exported {r['map']:.4f}, original {r['original_map']:.4f}; "
            f"the same label set on {r['label_agreement']:.4f} of the images"
        )
    print(f"Wrote the model card {r['card']}")


def export() -> None:
    """Console script `resnet-export`."""
    run_app(_export, "export")


def sweep_report() -> None:
    """Console script `resnet-sweep-report DIR`: the summary table of a sweep directory."""
    import argparse

    from resnet_train.tools.sweep import members, write_summary

    parser = argparse.ArgumentParser(prog="resnet-sweep-report", description="Summarise a sweep directory.")
    parser.add_argument("sweep_dir", help="the -m run's directory (outputs/multirun/<date>/<time>)")
    args = parser.parse_args()
    from pathlib import Path

    if not Path(args.sweep_dir).is_dir() or not members(args.sweep_dir):
        print(f"resnet-sweep-report: error: {args.sweep_dir} holds no sweep members", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    rows = write_summary(args.sweep_dir)
    print((Path(args.sweep_dir) / "summary.md").read_text(), end="")
    failed = [r["member"] for r in rows if r["status"] == "failed"]
    if failed:
        print(f"failed members: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)
