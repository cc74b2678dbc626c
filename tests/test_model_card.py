"""The model card resnet-export writes beside every export (issue 34 item 4), and push_to."""

import json
import sys

import pytest
import yaml
from helpers import TINY, compose


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A ResNet-8 trained 1 epoch on 128 digits with a validation split (results.json then holds
    test, validation and best-validation figures)."""
    from resnet_train.training.loop import train_and_evaluate

    workdir = tmp_path_factory.mktemp("card") / "run"
    train_and_evaluate(compose(*TINY, "epochs=1", "data.val_split=0.25"), workdir)
    return workdir


def read_card(folder):
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    meta, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(meta), body


def test_every_export_gets_a_card_with_results_jsons_figures_under_their_splits(run, tmp_path, cli):
    from resnet_train.tools.export import export_run

    out = tmp_path / "export"
    for fmt in ("onnx", "saved_model"):
        export_run(run, fmt=fmt, out=out)
    done = cli(f"run={run}", "format=keras", f"out={out}", entry="resnet-export")
    assert done.returncode == 0 and f"Wrote the model card {out / 'README.md'}" in done.stdout, done.stderr[-2000:]

    results = json.loads((run / "results.json").read_text())
    assert results["eval_split"] == "val"
    meta, body = read_card(out)
    assert meta["library_name"] == "keras" and meta["datasets"] == ["digits"]
    assert {"image-classification", "resnet", "onnx"} <= set(meta["tags"])
    (model,) = meta["model-index"]
    by_split = {r["dataset"]["split"]: {m["type"]: m["value"] for m in r["metrics"]} for r in model["results"]}
    assert set(by_split) == {"test", "validation"}
    expected_test = {k: v for k, v in results["test"].items() if k != "examples"}
    expected_val = {k: v for k, v in results["eval"].items() if k != "examples"}
    assert by_split["test"] == expected_test and by_split["validation"] == expected_val
    assert set(meta["metrics"]) == set(expected_test)
    for r in model["results"]:  # each figure's name says its split
        assert all(m["name"].startswith(r["dataset"]["split"]) for m in r["metrics"])
    assert (
        f"| validation, the best epoch | the epoch's weights | | accuracy | {results['best_val_accuracy']:.4f} |"
        in body
    )
    assert (
        f"| test | the final weights | {results['test']['examples']} | accuracy | {results['test']['accuracy']:.4f} |"
        in body
    )
    for name, fmt in (("saved_model", "SavedModel"), ("model.keras", "Keras"), ("model.onnx", "ONNX")):
        assert f"### {fmt}: `{name}`" in body
    for section in ("## Architecture", "## Data", "## Training recipe", "## Results", "## Intended use"):
        assert section in body
    assert f"{results['parameters']:,} trained parameters" in body and "optimizer: sgd, lr 0.1" in body


def test_without_a_validation_split_no_figure_is_called_validation(run):
    from resnet_train.tools.model_card import result_blocks

    results = json.loads((run / "results.json").read_text())
    results.update(eval_split="test", eval=results["test"])  # as a run without data.val_split writes it
    assert [(split, what) for split, what, _ in result_blocks(results)] == [("test", "the final weights")]


def test_push_offline_is_one_line_and_keeps_the_export(run, tmp_path, cli, monkeypatch, network_log):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")  # so the upload gets as far as the network
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    out = tmp_path / "export"
    done = cli(f"run={run}", "format=keras", f"out={out}", "push_to=hf://someone/digits", entry="resnet-export")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("resnet-export:")]
    assert len(errors) == 1 and errors[0].startswith(f"resnet-export: error: could not push {out} to hf://someone/")
    assert "the export is kept there" in errors[0] and "Traceback" not in done.stderr
    assert (out / "model.keras").is_file() and (out / "README.md").is_file()
    assert any("huggingface.co" in line for line in network_log.take())  # refused by the suite's guard


@pytest.mark.parametrize(
    "push_to, missing, message",
    [
        ("s3://bucket/model", False, "push_to must be hf://USER/REPO"),
        ("hf://someone/digits", True, "push_to needs huggingface_hub: pip install 'resnet-train[hub]'"),
    ],
)
def test_a_push_that_cannot_start_is_refused_before_exporting(
    run, tmp_path, cli, monkeypatch, push_to, missing, message
):
    if missing:
        monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    out = tmp_path / "export"
    done = cli(f"run={run}", "format=keras", f"out={out}", f"push_to={push_to}", entry="resnet-export")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("resnet-export:")]
    assert len(errors) == 1 and message in errors[0], done.stderr[-2000:]
    assert not out.exists()


def test_an_integer_only_tflite_files_snippet_says_how_to_read_its_uint8_outputs(tmp_path):
    from resnet_train.tools.model_card import exported_files

    for name in ("model.tflite", "model_int8.tflite", "model_int8_full.tflite"):
        (tmp_path / name).write_bytes(b"")
    snippets = {name: code for name, fmt, code in exported_files(tmp_path)}
    assert "scale * (q - zero_point)" in snippets["model_int8_full.tflite"]
    assert "zero_point" not in snippets["model.tflite"] and "zero_point" not in snippets["model_int8.tflite"]
