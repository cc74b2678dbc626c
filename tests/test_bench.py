"""The benchmark's measuring pieces on tiny sizes (the full run is scripts/bench.py, ~9 minutes)."""

import json

import benchmarks as bench  # scripts/benchmarks.py (conftest puts scripts/ on the path)

from resnet_train import models
from resnet_train.runtime import devices as runtime


def test_forward_flops_match_the_known_figures():
    # ResNet-20: 41M multiply-adds; ResNet-50: 4.1G (He et al. 2016, Table 1: 3.8G without the head).
    assert round(models.forward_flops(models.build(20, 10)) / 2e6) == 41
    assert round(models.forward_flops(models.build(50, 1000, (224, 224, 3))) / 2e9, 1) == 4.1


def test_matmul_rate_and_our_measurements_run():
    """(The Keras fit peer runs in the next test's process: the same function, ~3 s of tracing.)"""
    assert runtime.matmul_flops("float32", n=256, repeats=2) > 1e8
    ours = bench.train_throughput(8, (16, 16, 3), 8, windows=2, steps_per_window=2, steps_per_call=2)
    assert ours["images_per_sec"] > 0 and ours["parameters"] > 0
    assert bench.eval_throughput(8, (16, 16, 3), 8, batches=2)["images_per_sec"] > 0
    # The input pipeline alone, as the command builds it: one pipeline running on past an epoch's end.
    from resnet_train.data import synthetic

    data = synthetic.load(image_shape=(8, 8, 3), num_classes=4, train_size=32, test_size=8)
    assert bench.pipeline_throughput(data.train, 32, 8, windows=2, steps_per_window=6)["images_per_sec"] > 0


def test_a_peer_is_timed_with_onednns_other_setting_in_a_process_of_its_own():
    """Keras fit at its best includes oneDNN's other setting, which TensorFlow fixes at import: the
    suite's one run of the peer (bench.py times it in process too, by the same function)."""
    from resnet_train.runtime import onednn

    other = bench.with_onednn(
        not onednn.enabled(),
        "keras_fit_throughput",
        depth=8,
        image_shape=[16, 16, 3],
        batch_size=8,
        windows=2,
        steps_per_window=2,
    )
    assert other["onednn"] is (not onednn.enabled()) and other["images_per_sec"] > 0


def test_the_command_row_reads_the_real_commands_log_and_the_run_logs_mfu(tmp_path):
    """scripts/bench.py's row for `resnet-train` itself: a fresh process, its per-epoch img/s after
    the first epoch, the first call's cost, the oneDNN choice it logged. Its metrics.jsonl holds
    the model FLOPs utilisation of each epoch's training."""
    from resnet_train.runtime import onednn

    overrides = ("runtime=one_device", "runtime.precision=float32")
    result = bench.cli_throughput(8, 16, 4, 3, *overrides, run_dir=tmp_path / "run")
    assert result["min"] <= result["images_per_sec"] <= result["max"] and result["images_per_sec"] > 0
    assert result["first_call_s"] > 0 and result["first_step_s"] > result["first_call_s"]
    assert set(result["overhead_s_per_epoch"]) == {1, 2, 3} and result["first_epoch_images_per_sec"] > 0
    assert result["onednn"] == ("on" if onednn.enabled() else "off")  # the suite pins its subprocesses to its own
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert record["split"] == "train" and 0 < record["mfu"] < 1


def test_the_cpu_is_named_with_the_flags_that_decide_the_kernels():
    cpu = bench.cpu_description()
    assert cpu["model"] and cpu["cores"] >= 1
    assert set(cpu["flags"]) <= {
        "avx2",
        "fma",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "amx_bf16",
        "amx_tile",
        "amx_int8",
    }


def test_a_rounds_ratio_is_the_median_of_per_round_ratios_against_the_peers_best_of_each_round():
    """scripts/bench.py's command vs peers rounds, on made-up figures (no TensorFlow run)."""
    import bench_rounds

    rounds = [
        {"command": {"typed": 100.0}, "keras fit": {"float32 a": 100.0, "mixed_bfloat16 b": 50.0}},
        {"command": {"typed": 100.0}, "keras fit": {"float32 a": 150.0, "mixed_bfloat16 b": 200.0}},
        {"command": {"typed": 300.0}, "keras fit": {"float32 a": 150.0, "mixed_bfloat16 b": 10.0}},
    ]
    summary = bench_rounds.summarize(rounds, "typed", "keras fit")
    # The peer's best is taken per round (b wins round 2 only), and the ratios are 1.0, 0.5, 2.0:
    # their median is 1.0, where the ratio of medians would be 100 / 150 = 0.67.
    assert [r["setting"] for r in summary["rounds"]] == ["float32 a", "mixed_bfloat16 b", "float32 a"]
    assert [r["ratio"] for r in summary["rounds"]] == [1.0, 0.5, 2.0]
    assert (summary["median"], summary["min"], summary["max"]) == (1.0, 0.5, 2.0)
    # Against the peer's float32 settings only (the command at float32 where auto picks bfloat16).
    float32 = bench_rounds.summarize(rounds, "typed", "keras fit", "float32")
    assert [r["ratio"] for r in float32["rounds"]] == [1.0, 100 / 150, 2.0] and float32["min"] == 100 / 150
    # Settings under half of round 1's best are not timed again.
    assert bench_rounds.kept({"a": 100.0, "b": 50.0, "c": 49.0}) == ["a", "b"]


def test_mfus_yardstick_is_the_matmul_rate_of_the_runs_own_precision(tmp_path, monkeypatch):
    """Issue 35 item 4: a bfloat16 run's MFU is measured against the bfloat16 matmul rate, a float32
    run's against float32's (a bf16 run against the float32 rate would read up to 2x too high on
    bf16 CPUs); each rate measured once per machine and dtype, then read from the cache."""
    measured = []

    def fake_matmul(dtype, n=2048, repeats=20):
        measured.append(dtype)
        return {"float32": 1e11, "bfloat16": 4e11, "float16": 8e11}[dtype]

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(runtime, "matmul_flops", fake_matmul)
    assert runtime.peak_flops("float32") == 1e11
    assert runtime.peak_flops("mixed_bfloat16") == 4e11
    assert runtime.peak_flops("mixed_float16") == 8e11
    assert runtime.peak_flops("mixed_bfloat16") == 4e11  # cached: not measured again
    assert measured == ["float32", "bfloat16", "float16"]
    cached = json.loads((tmp_path / "resnet_train" / "peak_flops.json").read_text())
    assert sorted(key.split("|")[-1] for key in cached) == ["bfloat16", "float16", "float32"]
