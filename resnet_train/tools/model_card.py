"""README.md beside every export: a Hugging Face Hub model card (YAML metadata, then sections)
written from the run's results.json, dataset.json and saved config, naming every exported file in
the folder and how to load it.

Figures keep their split: results.json's `test` block is the test split (the final weights),
`eval` is the validation split only when the run had one (eval_split: val; otherwise it repeats
the test figures and is left out), and a best-over-epochs test figure is called optimistic."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from resnet_train.models.probabilities import task_of
from resnet_train.training.run_dir import RESULTS

CARD = "README.md"
# (glob in the export folder, format, how to load it)
LOADERS = [
    ("saved_model", "SavedModel", 'm = tf.saved_model.load("saved_model")\n'
     'out = m.signatures["serving_default"](images=uint8_images)  # probabilities, classes, embeddings\n'
     'out = m.signatures["serving_encoded"](encoded=tf.constant([open("cat.jpg", "rb").read()]))'),
    ("*.keras", "Keras", 'model = keras.saving.load_model("{name}", safe_mode=True)\n'
     "probabilities = keras.ops.softmax(model(uint8_images))  # the model returns logits"),
    ("*.tflite", "TFLite", 'from ai_edge_litert.interpreter import Interpreter\n'
     'interpreter = Interpreter(model_path="{name}")  # outputs: probabilities, classes'),
    ("*.onnx", "ONNX", 'session = onnxruntime.InferenceSession("{name}")\n'
     'probabilities, classes, embeddings = session.run(["probabilities", "classes", "embeddings"], '
     '{{"images": uint8_images}})'),
]  # fmt: skip
SPLIT_NAMES = {"test": "test", "val": "validation", "train": "train"}
# data.task=multilabel: the .keras file returns logits, one sigmoid per label, then the threshold.
MULTILABEL_KERAS = (
    'model = keras.saving.load_model("{name}", safe_mode=True)\n'
    "probabilities = keras.ops.sigmoid(model(uint8_images))  # logits -> one sigmoid per label\n"
    "labels = probabilities >= {threshold}  # multi-label: every label at the threshold"
)
NOT_FIGURES = ("examples", "threshold")  # numbers in a results block that are not metrics


def multilabel_threshold(run) -> float | None:
    """A multi-label run's data.threshold (what its card tells users to apply); None for multiclass."""
    if task_of(run.info) != "multilabel":
        return None
    return float(OmegaConf.select(run.cfg, "data.threshold", default=0.5))


def exported_files(folder: Path, threshold: float | None = None) -> list[tuple[str, str, str]]:
    """(file name, format, how to load it) for each export in the folder; with a multi-label run's
    threshold, the .keras snippet applies a sigmoid per label and the threshold, the SavedModel's,
    ONNX's and the float TFLite files' read their `labels` output too."""
    found = []
    for pattern, fmt, code in LOADERS:
        if fmt == "Keras" and threshold is not None:
            code = MULTILABEL_KERAS.replace("{threshold}", f"{threshold:g}")
        elif fmt in ("SavedModel", "ONNX") and threshold is not None:  # their `labels` output (export.py)
            code = code.replace("classes, embeddings", "classes, embeddings, labels")
            code = (
                code.replace('"embeddings"]', '"embeddings", "labels"]') + f"  # labels: probabilities >= {threshold:g}"
            )
        for path in sorted(folder.glob(pattern)):
            if not path.name.startswith(".") and (path.is_file() or (path / "saved_model.pb").exists()):
                text = code.format(name=path.name)
                if fmt == "TFLite" and threshold is not None and not path.name.endswith("int8_full.tflite"):
                    # the float-output files carry `labels` (export.py); the integer-only one does not
                    text = text.replace("probabilities, classes", f"probabilities, classes, labels (>= {threshold:g})")
                found.append((path.name, fmt, text + _integer_note(path.name)))
    return found


def _integer_note(name: str) -> str:
    """An integer-only TFLite file (quantize=int8_full) takes and returns uint8: say how to read it."""
    if not name.endswith("int8_full.tflite"):
        return ""
    return (
        "\n# uint8 in and out: probabilities = scale * (q - zero_point), (scale, zero_point) being the "
        '"quantization" of the probabilities output in interpreter.get_output_details()'
    )


def read_results(run_dir: Path) -> dict | None:
    path = Path(run_dir) / RESULTS
    return json.loads(path.read_text()) if path.exists() else None


def result_blocks(results: dict | None) -> list[tuple[str, str, dict]]:
    """(split, what it measured, figures) from results.json, each under the split it comes from."""
    if not results:
        return []
    blocks = [("test", "the final weights", results["test"])]
    if results.get("test_ema"):
        blocks.append(("test", "the EMA weights", results["test_ema"]))
    if results.get("eval_split") == "val" and results.get("eval"):
        blocks.append(("val", "the final weights, last epoch", results["eval"]))
    return blocks


def _metrics(figures: dict, multilabel: bool = False) -> dict:
    """The figures the metadata lists; a multi-label run's accuracy is named what it is: exact match."""
    named = lambda k: "exact_match" if multilabel and k == "accuracy" else k  # noqa: E731
    return {named(k): v for k, v in figures.items() if k not in NOT_FIGURES and isinstance(v, (int, float))}


def front_matter(run, results, files) -> dict:
    """The Hub's metadata: library, tags, datasets, metrics and their values (model-index)."""
    formats = {fmt for _, fmt, _ in files}
    name = results["dataset"] if results else run.info.name
    tags = ["image-classification", "resnet", "tensorflow", "resnet-train"]
    tags += [t for t, fmt in (("onnx", "ONNX"), ("tflite", "TFLite")) if fmt in formats]
    multilabel = task_of(run.info) == "multilabel"
    tags += ["multi-label-classification"] if multilabel else []
    index = [
        {
            "task": {"type": "image-classification", "name": "Image Classification"},
            "dataset": {"name": name, "type": name, "split": SPLIT_NAMES[split]},
            "metrics": [
                {"type": k, "value": float(v), "name": f"{SPLIT_NAMES[split]} {k} ({what})"}
                for k, v in _metrics(figures, multilabel).items()
            ],
        }
        for split, what, figures in result_blocks(results)
    ]
    meta = {
        "library_name": "keras" if "Keras" in formats else "tensorflow",
        "pipeline_tag": "image-classification",
        "tags": tags,
        "datasets": [name],
        "metrics": sorted({k for _, _, f in result_blocks(results) for k in _metrics(f, multilabel)}),
    }
    if index:
        meta["model-index"] = [{"name": run.model.name, "results": index}]
    return meta


def _recipe(cfg, results, multilabel: bool) -> list[str]:
    get = lambda key: OmegaConf.select(cfg, key, default=None)  # noqa: E731
    loss = "bce (a sigmoid per label: data.task=multilabel)" if multilabel else get("loss.name") or "ce"
    aug = {k: v for k, v in OmegaConf.to_container(cfg.augment).items() if v not in (None, 0, 0.0, False)}
    return [
        f"- optimizer: {get('optimizer.name')}, lr {get('optimizer.lr')}, momentum {get('optimizer.momentum')}, "
        f"weight decay {get('optimizer.weight_decay')} ({get('optimizer.weight_decay_mode')})",
        f"- schedule: {get('schedule.name')}, warm-up {get('schedule.warmup_epochs')} epochs",
        f"- epochs: {results['epochs'] if results else get('epochs')}, steps: {results['steps'] if results else '?'}, "
        f"batch size {get('batch_size')}, seed {get('seed')}",
        f"- augmentation: {', '.join(f'{k}={v}' for k, v in aug.items()) or 'none'}",
        f"- precision: {results['precision'] if results else get('runtime.precision')}, "
        f"replicas: {results['replicas'] if results else '?'}",
        f"- loss: {loss}; drop_path {get('model.drop_path') or 0}; EMA decay {get('ema.decay')}; "
        f"init_from {get('init_from')}; distilled from {get('distill.teacher')}",
    ]


def _results_section(run, results, export) -> list[str]:
    lines = ["## Results", ""]
    if not results:
        return [*lines, f"No {RESULTS} in the run: it did not finish, so no figures are given.", ""]
    lines += ["| split | weights | examples | metric | value |", "|---|---|---|---|---|"]
    for split, what, figures in result_blocks(results):
        for k, v in _metrics(figures, task_of(run.info) == "multilabel").items():
            lines.append(f"| {SPLIT_NAMES[split]} | {what} | {figures.get('examples')} | {k} | {v:.4f} |")
    for k, metric, what in _best_figures(results):
        lines.append(f"| {what} | the epoch's weights | | {metric} | {results[k]:.4f} |")
    lines += ["", f"Exported weights: `{Path(run.checkpoint).name}` ({run.weights}); results.json's test figures "
              f"are the final checkpoint's (`{Path(results.get('checkpoint') or '?').name}`)."]  # fmt: skip
    if export and "accuracy" in export:
        lines.append(
            f"Measured by resnet-export on {export['examples']} {SPLIT_NAMES.get(export['split'], export['split'])} "
            f"images: the exported {export['format']} file {export['accuracy']:.4f}, the original "
            f"{export['original_accuracy']:.4f}"
            + (
                f" (exact match at {export['threshold']:g}); mAP {export['map']:.4f}, the original "
                f"{export['original_map']:.4f}."
                if "map" in export
                else "."
            )
        )
    return [*lines, ""]


def _best_figures(results) -> list[tuple[str, str, str]]:
    """(key, metric, what) of results.json's best-over-epochs figures: best_val_<metric> (the best
    validation epoch) and best_test_<metric>_optimistic (the test set chose the epoch)."""
    found = []
    for k, v in results.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if k.startswith("best_val_"):
            found.append((k, k[len("best_val_") :], "validation, the best epoch"))
        elif k.startswith("best_test_") and k.endswith("_optimistic"):
            found.append((k, k[len("best_test_") : -len("_optimistic")], "test, best over epochs (optimistic)"))
    return found


def _outputs(run) -> str:
    info, threshold = run.info, multilabel_threshold(run)
    if threshold is None:
        return f"probabilities over {info.num_classes} classes"
    return (
        f"multi-label: a probability per label (a sigmoid each, {info.num_classes} labels; a row need not sum "
        f"to 1), a label predicted where its probability is at least {threshold:g} (the run's data.threshold)"
    )


def _architecture_and_data(run, results) -> list[str]:
    info, model, m = run.info, run.model, run.cfg.model
    h, w, c = info.image_shape
    classes = ", ".join(info.class_names[:30]) + (f", ... ({info.num_classes})" if info.num_classes > 30 else "")
    width = model.get_layer("pool").output.shape[-1]
    params = results["parameters"] if results else sum(int(v.numpy().size) for v in model.trainable_weights)
    return [
        "## Architecture",
        "",
        f"- {model.name}: depth {run.cfg.depth}, {params:,} trained parameters, variant {m.variant}, "
        f"block {m.block}, shortcut {m.shortcut}",
        f"- input: uint8 images {h}x{w}x{c}, normalised inside the model",
        f"- outputs: {_outputs(run)}; embeddings: the {width} pooled features",
        "",
        "## Data",
        "",
        f"- dataset: {info.name} (source {run.cfg.data.source}); train {info.train_size}, "
        f"validation {info.val_size or 0}, test {info.test_size} images",
        f"- classes: {classes}",
        "",
    ]


def card(run, out_dir: Path, export: dict | None = None) -> str:
    threshold = multilabel_threshold(run)
    results, files, info = read_results(run.run_dir), exported_files(out_dir, threshold), run.info
    lines = ["---", yaml.safe_dump(front_matter(run, results, files), sort_keys=False).rstrip(), "---", ""]
    lines += [f"# {run.model.name} on {info.name}", "", "Trained and exported with resnet-train.", ""]
    lines += _architecture_and_data(run, results)
    lines += ["## Training recipe", "", *_recipe(run.cfg, results, task_of(run.info) == "multilabel"), ""]
    lines += _results_section(run, results, export)
    lines += ["## Intended use and limitations", "", _intended_use(info, threshold), ""]
    lines += ["## How to load", ""]
    if threshold is not None:
        lines += [
            f"Multi-label: every format's `probabilities` are per-label sigmoids (not a softmax); "
            f"`probabilities >= {threshold:g}` gives the labels. `classes` is the most probable label only.",
            "",
        ]
    for name, fmt, code in files:
        lines += [f"### {fmt}: `{name}`", "", "```python", code, "```", ""]
    return "\n".join(lines)


def _intended_use(info, threshold) -> str:
    h, w, _ = info.image_shape
    if threshold is None:
        return (
            f"Classifies {h}x{w} images into the {info.num_classes} classes above, as the training data showed "
            "them. Images of other classes still get one of these; probabilities are not calibrated; accuracy "
            "holds only for images like the test split's. The figures come from the splits named, on the "
            "number of images given: small splits give wide error bars."
        )
    return (
        f"Tags {h}x{w} images with any of the {info.num_classes} labels above (multi-label), as the training "
        f"data showed them: each label whose probability reaches {threshold:g}. Other content gets no label of "
        "its own; probabilities are not calibrated; the figures hold only for images like the test split's. "
        "They come from the splits named, on the number of images given: small splits give wide error bars."
    )


def write_card(run, out_dir: Path, export: dict | None = None) -> Path:
    from resnet_train.tools.staged import staged

    path = Path(out_dir) / CARD
    with staged(path) as (temp,):
        temp.write_text(card(run, Path(out_dir), export))
    return path
