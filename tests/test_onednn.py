"""runtime.onednn: who decides whether TensorFlow's oneDNN kernels run (the CLI applies it before
TensorFlow's import: test_cli's end-to-end run flips it and reads the log)."""

import pytest

from resnet_train.errors import ConfigError
from resnet_train.runtime import onednn

AVX2 = {"avx", "avx2", "fma", "sse4_2"}


def test_auto_turns_onednn_on_on_x86_with_avx2_and_leaves_tensorflow_its_choice_elsewhere():
    assert onednn.decide("auto", environ={}, flags=AVX2, machine="x86_64") == (
        True,
        "runtime.onednn=auto: an x86 CPU with AVX2, where oneDNN's kernels are faster",
    )
    assert onednn.decide("auto", environ={}, flags=AVX2 | {"avx512f", "avx512_bf16"}, machine="x86_64")[0] is True
    why = "runtime.onednn=auto: TensorFlow's own default on this CPU (not an x86 CPU with AVX2)"
    assert onednn.decide("auto", environ={}, flags={"avx", "sse4_2"}, machine="x86_64") == (None, why)
    assert onednn.decide("auto", environ={}, flags={"asimd", "fp"}, machine="aarch64") == (None, why)


def test_an_exported_variable_wins_over_auto_and_the_setting_wins_over_both():
    for value, on in (("0", False), ("1", True), ("false", False), ("True", True)):
        assert onednn.decide("auto", environ={"TF_ENABLE_ONEDNN_OPTS": value}, flags=AVX2, machine="x86_64") == (
            on,
            f"TF_ENABLE_ONEDNN_OPTS={value} in the environment",
        )
    # What TensorFlow would not read as a boolean is not a choice: auto decides.
    assert onednn.decide("auto", environ={"TF_ENABLE_ONEDNN_OPTS": "yes"}, flags=AVX2, machine="x86_64")[0] is True
    for setting, on in ((True, True), ("true", True), (False, False), ("false", False)):  # YAML gives booleans
        assert onednn.decide(setting, environ={"TF_ENABLE_ONEDNN_OPTS": str(int(not on))}, flags=AVX2) == (
            on,
            f"runtime.onednn={str(on).lower()}",
        )


def test_a_bad_setting_is_one_clear_error():
    for bad in ("maybe", 1, None):
        with pytest.raises(ConfigError) as refused:
            onednn.normalise(bad)
        assert str(refused.value) == (
            f"runtime.onednn must be one of auto, true, false (got {bad!r}): auto turns "
            f"oneDNN on on x86 CPUs with AVX2, where it is faster"
        )


def test_after_tensorflows_import_a_setting_cannot_change_it_and_says_so(monkeypatch):
    import tensorflow  # noqa: F401  (imported: the choice is fixed)

    monkeypatch.setattr(onednn, "_decided", {})
    now = onednn.enabled()
    other = "false" if now else "true"
    assert onednn.apply(other) == (
        f"runtime.onednn={other}, but TensorFlow was imported before in this process: it stays "
        f"{'on' if now else 'off'} (set TF_ENABLE_ONEDNN_OPTS={int(not now)} before importing TensorFlow)"
    )
    assert onednn.apply("true" if now else "false") == f"runtime.onednn={'true' if now else 'false'}"
    # A decision made before the import is reported as it was made.
    monkeypatch.setattr(onednn, "_decided", {"auto": (now, "decided before the import")})
    assert onednn.apply("auto") == "decided before the import"
