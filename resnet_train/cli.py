"""Hydra entry points, kept thin: compose the config, call the library, turn user errors into
one line and exit code 2. TensorFlow is imported only inside the task, so --help and --cfg are fast.
"""
from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from resnet_train.cluster import worker_suffix

EXIT_USER_ERROR = 2

# ${worker_suffix:} in train.yaml: non-chief workers log to train_worker<i>.log beside the chief's.
OmegaConf.register_new_resolver("worker_suffix", worker_suffix, replace=True)


def _quiet_tensorflow() -> None:
    """Imports TensorFlow without its start-up chatter on stderr.

    TF 2.21 prints oneDNN / CUDA-probe notices through absl before any log level applies
    (TF_CPP_MIN_LOG_LEVEL does not reach them), so stderr is pointed at /dev/null for the import
    only. Import errors still surface: Python raises them after stderr is restored.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("RESNET_TRAIN_VERBOSE_TF"):
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        import tensorflow as tf

        tf.config.list_physical_devices()  # device probing prints too (cuInit on GPU-less hosts)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _fail(error) -> None:
    """One clear line for the user. In a sweep, re-raise so Hydra records the failed member."""
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        raise error
    print(f"{os.path.basename(sys.argv[0]) or 'resnet-train'}: error: {error}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


@hydra.main(version_base=None, config_path="configs", config_name="train")
def _train(cfg) -> float:
    _quiet_tensorflow()
    from resnet_train.errors import UserError
    from resnet_train.train import train_and_evaluate

    workdir = HydraConfig.get().runtime.output_dir
    try:
        results = train_and_evaluate(cfg, workdir)
    except UserError as error:
        _fail(error)
    test = results["test"]
    print(
        f"Test accuracy {test['accuracy']:.4f} (top-5 {test.get('top5', float('nan')):.4f}, "
        f"loss {test['loss']:.4f}) on {test['examples']} images after {results['epochs']} epochs, "
        f"{results['wall_time_s']:.0f} s\nRun directory: {workdir}"
    )
    return float(test["accuracy"])  # what sweepers optimise


def train() -> None:
    """Console script `resnet-train`."""
    _train()


if __name__ == "__main__":
    train()


@hydra.main(version_base=None, config_path="configs", config_name="show_augment")
def _show_augment(cfg) -> None:
    _quiet_tensorflow()
    from resnet_train import data as data_lib
    from resnet_train.data.augment import make_augment, make_batch_augment
    from resnet_train.errors import UserError
    from resnet_train.plots import augment_gallery

    try:
        splits = data_lib.load(cfg.data)
        info = splits.info
        images, labels = next(iter(splits.train.batch(int(cfg.images))))
        path = augment_gallery(
            images, labels.numpy(), info.class_names, make_augment(cfg.augment, info.image_shape, info.mean),
            make_batch_augment(cfg.augment, info.num_classes), int(cfg.versions), int(cfg.seed), cfg.out,
        )
    except UserError as error:
        _fail(error)
    print(f"Wrote {path.resolve()}")


def show_augment() -> None:
    """scripts/show_augment.py and the console script `resnet-show-augment`."""
    _show_augment()
