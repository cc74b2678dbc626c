"""data=tfrecord: TFRecords of tf.train.Example in the layout TF's ImageNet scripts write,
made here by the tests."""

import json
import logging

import numpy as np
import pytest
from helpers import NAMES, write_records

from resnet_train.errors import DataError


@pytest.fixture
def records(tmp_path):
    write_records(tmp_path / "rec" / "train", 48, shards=3)
    write_records(tmp_path / "rec" / "validation", 18, shards=2, seed=1)
    return tmp_path / "rec"


def _load(records, **overrides):
    from helpers import compose

    from resnet_train import data

    args = [f"data.train_files={records}/train-*", f"data.eval_files={records}/validation-*", "data.image_size=16"]
    return data.load(compose("data=tfrecord", *args, *[f"data.{k}={v}" for k, v in overrides.items()]).data)


def test_records_load_with_the_label_offset_and_the_records_class_names(records):
    splits = _load(records, label_offset=1)
    info = splits.info
    assert (info.num_classes, info.train_size, info.test_size) == (3, 48, 18)
    assert info.class_names == NAMES and info.encoded
    from resnet_train.data import pipeline

    decode = pipeline.eval_preprocess(info)
    for encoded, label in splits.test:
        image = decode(encoded).numpy()
        assert image.shape == (16, 16, 3)
        assert int(np.argmax(image.reshape(-1, 3).mean(0))) == int(label)  # the colour is the class


def test_each_epoch_reads_the_files_in_its_own_seeded_order(records):
    splits = _load(records, label_offset=1)

    def labels(epoch):
        return [int(y) for _, y in splits.train_for_epoch(7, epoch)]

    assert sorted(labels(0)) == sorted(labels(1)) and len(labels(0)) == 48
    assert labels(0) == labels(0)  # a resumed epoch reads them in the same order again
    assert any(labels(e) != labels(0) for e in range(1, 6))


def test_labels_file_and_class_count(records, tmp_path):
    names = tmp_path / "labels.txt"
    names.write_bytes(b"cat\nd\xf6g\nfox\nyak\n")  # one name in Latin-1: shown with its byte escaped
    info = _load(records, label_offset=1, labels_file=names).info
    assert info.class_names == ["cat", "d\\xf6g", "fox", "yak"] and info.num_classes == 4


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"label_offset": 0, "num_classes": 3}, r"is 3, out of range for 3 classes after data.label_offset=0 "),
        ({"label_offset": 2}, r"start at 1, below data.label_offset=2: set data.label_offset=1"),
        ({"train_files": "/nonexistent/train-*"}, r"data.train_files=/nonexistent/train-\* matches no file"),
        ({"label_offset": 1, "class_names": "[a,b]"}, r"a label in data.train_files is 3, out of range for 2 classes"),
        ({"label_offset": 1, "num_classes": 3, "class_names": "[a,b]"}, r"names 2 classes, data.num_classes is 3"),
    ],
    ids=["offset-missing", "offset-too-large", "no-files", "too-few-names", "names-count"],
)
def test_bad_settings_fail_with_one_clear_line(records, overrides, message):
    with pytest.raises(DataError, match=message):
        _load(records, **overrides)


def test_a_file_that_is_not_tfrecord_is_named(records):
    (records / "train-99999-of-99999").write_bytes(b"not a tfrecord file at all, just bytes")
    with pytest.raises(DataError, match=r"train-99999-of-99999 \(data.train_files\) is not a TFRecord file"):
        _load(records, label_offset=1)


def test_labels_numbered_from_one_without_the_offset_get_a_warning(records, caplog):
    with caplog.at_level(logging.WARNING):
        info = _load(records).info
    assert info.num_classes == 4 and "set data.label_offset=1" in caplog.text


def test_without_mean_and_std_the_records_use_127_5_and_64_and_say_so(records, caplog):
    with caplog.at_level(logging.WARNING):
        info = _load(records, label_offset=1).info
    assert (info.mean, info.std) == ((127.5,) * 3, (64.0,) * 3)
    assert "No data.mean / data.std for these TFRecords: using 127.5 / 64" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        info = _load(records, label_offset=1, mean="[100,110,120]", std="[50,60,70]").info
    assert (info.mean, info.std) == ((100.0, 110.0, 120.0), (50.0, 60.0, 70.0))
    assert "No data.mean" not in caplog.text


def test_tfrecords_train_through_resnet_train(cli, records, tmp_path):
    run = tmp_path / "run"
    done = cli(
        "data=tfrecord",
        f"data.train_files={records}/train-*",
        f"data.eval_files={records}/validation-*",
        "data.label_offset=1",
        "data.image_size=32",
        "depth=8",
        "epochs=2",
        "batch_size=8",
        "runtime=one_device",
        "runtime.precision=float32",
        f"hydra.run.dir={run}",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads((run / "dataset.json").read_text())
    assert info["class_names"] == NAMES and info["train_size"] == 48
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 2 * (48 // 8)
    assert "TFRecords: 3 classes, 48 train examples in 3 files, 18 eval in 2 files" in (run / "train.log").read_text()


# --- data.shard=files: each input pipeline its own files ----------------------------------------
def test_each_input_pipeline_reads_its_own_files_of_the_epoch(records):
    splits = _load(records, label_offset=1)
    for epoch in (0, 1):
        parts = [sorted(int(y) for _, y in splits.train_shard(7, epoch, 3, i)) for i in range(3)]
        assert sorted(sum(parts, [])) == sorted(int(y) for _, y in splits.train)  # all, each once
        assert all(len(p) == 16 for p in parts)  # one file each (48 examples in 3 files)
    with pytest.raises(DataError, match="data.shard=files gives each of 4 input pipelines its own files"):
        splits.train_shard(7, 0, 4, 0)


def test_sharded_pipelines_step_together_on_uneven_files_and_resume_exactly(tmp_path):
    """Files of 10, 14 and 24 examples over 2 pipelines: each makes the epoch's 48 // 8 = 6 batches
    of 4 from its own examples (repeating them when it has fewer), and a resumed epoch continues
    where it stopped."""
    from resnet_train.data import pipeline

    for name, count in (("a", 10), ("b", 14), ("c", 24)):
        write_records(tmp_path / name, count, shards=1, seed=len(name) + count)
    cfg = [f"data.train_files=[{tmp_path}/a-*,{tmp_path}/b-*,{tmp_path}/c-*]", f"data.eval_files={tmp_path}/a-*"]
    from helpers import compose

    from resnet_train import data

    splits = data.load(compose("data=tfrecord", "data.image_size=16", "data.label_offset=1", *cfg).data)
    assert splits.info.train_size == 48

    def batches(index, skip=0):
        part = splits.train_shard(3, 1, 2, index)
        ds = pipeline.train_batches(part, 48, 8, 3, 1, skip_batches=skip, pipelines=2, pipeline_id=index, sharded=True)
        return [(list(x.numpy()), y.numpy().tolist()) for x, y in ds]  # encoded JPEGs

    first, second = batches(0), batches(1)
    assert len(first) == len(second) == 6 and all(len(y) == 4 for _, y in first + second)
    assert batches(1, skip=4) == second[4:]


def _break_image(path, index: int) -> None:
    """Record `index` of a TFRecord file gets bytes that are no image; its label and CRC stay valid."""
    import tensorflow as tf

    records = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
    example = tf.train.Example.FromString(records[index])
    example.features.feature["image/encoded"].bytes_list.value[:] = [b"not an image"]
    records[index] = example.SerializeToString()
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def test_a_record_whose_image_does_not_decode_is_named_with_the_checkpoints_kept(cli, records, tmp_path):
    """The label scan passes it (valid CRC and label); training fails on it mid-run: one line naming
    the file and the record, exit 2, the run's checkpoints as they were (not a traceback that every
    rerun repeats at the same step)."""
    from helpers import file_digests

    run = tmp_path / "run"
    args = [f"data.train_files={records}/train-*", f"data.eval_files={records}/validation-*", "data.label_offset=1"]
    args = ["data=tfrecord", *args, "data.image_size=16", "depth=8", "batch_size=8", f"hydra.run.dir={run}"]
    assert cli(*args, "epochs=1").returncode == 0
    kept = file_digests(run / "checkpoints")  # (its config.yaml records each command: epochs=2 comes next)
    kept = {name: digest for name, digest in kept.items() if not name.endswith(".yaml")}
    broken = records / "train-00001-of-00003"
    _break_image(broken, 5)
    done = cli(*args, "epochs=2")
    lines = [line for line in done.stderr.strip().splitlines() if not line.startswith("[")]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines[0].startswith(f"resnet-train: error: {broken}, record 5: its image does not decode (after step ")
    assert "Unknown image file format" in lines[0] and "a rerun resumes from" in lines[0] and "ckpt-6" in lines[0]
    assert {name: digest for name, digest in file_digests(run / "checkpoints").items() if name in kept} == kept
    assert not any(name.startswith("ckpt-") and name not in kept for name in file_digests(run / "checkpoints"))


def test_the_decode_pass_names_a_bad_last_record_and_passes_good_files(records):
    from resnet_train.data import faults

    files = sorted(str(p) for p in records.glob("train-*"))
    assert faults.first_bad_record(files, "image/encoded") is None
    _break_image(records / "train-00002-of-00003", 15)  # its last record: no later one shows the gap
    found = faults.first_bad_record(files, "image/encoded")
    assert found == (str(records / "train-00002-of-00003"), 15, "its image does not decode")
