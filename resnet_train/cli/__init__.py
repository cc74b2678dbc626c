"""Hydra entry points, kept thin: compose the config, call the library, turn user errors into
one line and exit code 2. TensorFlow is imported only inside the task, so --help and --cfg are fast.
"""

from __future__ import annotations

import logging
import os
import sys
import time

PROCESS_START = time.time()  # for the "first step after N s" start-up figure

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from resnet_train.cli.hydra_errors import run_app
from resnet_train.config import store
from resnet_train.errors import EXIT_USER_ERROR, exit_code
from resnet_train.runtime.cluster import worker_suffix

# A log line that cannot be written (a full disk) must not print logging's own traceback: the run
# reports the failed write as one line itself.
logging.raiseExceptions = False

store.register()  # the configs' YAML files name their schemas (schema.py)
# ${worker_suffix:} in train.yaml: non-chief workers log to train_worker<i>.log beside the chief's.
OmegaConf.register_new_resolver("worker_suffix", worker_suffix, replace=True)
# ${hydra_files_subdir:${hydra.mode}} in train.yaml: .hydra/ from Hydra for sweep members only.
OmegaConf.register_new_resolver(
    "hydra_files_subdir", lambda mode: ".hydra" if "MULTIRUN" in str(mode) else None, replace=True
)


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


def fail(error, retry_exit_code: int | None = None) -> None:
    """One clear line for the user and the error's exit code (errors.py; runtime.retry_exit_code for
    a lost peer when set). In a sweep, re-raise so Hydra records the failed member."""
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        raise error
    print(f"{os.path.basename(sys.argv[0]) or 'resnet-train'}: error: {error}", file=sys.stderr)
    sys.exit(exit_code(error, retry_exit_code))


@hydra.main(version_base=None, config_path="pkg://resnet_train.configs", config_name="train")
def _train(cfg) -> float | None:
    from resnet_train.config import validate
    from resnet_train.errors import UserError
    from resnet_train.runtime import device_pool, onednn, threads, tuning

    try:  # before TensorFlow's import: oneDNN is fixed by it, and a bad value is refused in about a second
        validate(cfg)  # (again, on the run's own settings, once its directory is read: training/loop.py)
        setting = onednn.normalise(cfg.runtime.onednn)
        wanted = tuning.wanted(cfg.runtime)
        measured = tuning.tune(log=logging.getLogger("resnet_train.runtime.tuning").info) if wanted else None
        onednn.apply(setting, measured=tuning.choice(measured, "onednn"))
        threads.apply(cfg.runtime.threads, measured=tuning.choice(measured, "threads"))
        workdir = HydraConfig.get().runtime.output_dir
        _writable_before_tensorflow(workdir)
    except UserError as error:
        fail(error)
    from resnet_train.errors import Preempted, StoppedDuringSetUp

    try:
        _quiet_tensorflow()
        from resnet_train.training.loop import train_and_evaluate

        _check_search_has_validation(cfg)
        results = train_and_evaluate(
            cfg, workdir, started=PROCESS_START, overrides=list(HydraConfig.get().overrides.task), trial=_trial(cfg)
        )
    except UserError as error:
        fail(error, cfg.runtime.retry_exit_code)
    except (Preempted, StoppedDuringSetUp) as stop:  # the same command continues the run
        print(f"resnet-train: {stop}", file=sys.stderr)
        sys.exit(exit_code(stop, cfg.runtime.retry_exit_code))
    except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint of this step
        print(
            f"resnet-train: interrupted; rerun the same command to continue from the last checkpoint in "
            f"{workdir}/checkpoints",
            file=sys.stderr,
        )
        sys.exit(130)
    finally:  # runtime.devices=pool: free for the others while this process waits for its next member
        device_pool.release()
    test, k = results["test"], results["top_k"]
    figure = (
        f"Test mAP {test['map']:.4f} (macro-F1 {test['macro_f1']:.4f}, exact match {test['accuracy']:.4f}, "
        if "map" in test  # data.task=multilabel
        else f"Test accuracy {test['accuracy']:.4f} (top-{k} {test[f'top{k}']:.4f}, "
    )
    print(
        f"{figure}loss {test['loss']:.4f}) on {test['examples']} images after {results['epochs']} epochs, "
        f"{results['wall_time_s']:.0f} s\nRun directory: {workdir}"
    )
    # What sweepers optimise: the figure behind best/ (best_val_<checkpoint.best_metric>), None
    # without a validation split. The test set is reported, never searched on.
    from resnet_train.training import selection

    return selection.objective(cfg, results)


def _writable_before_tensorflow(workdir) -> None:
    """A run directory that cannot take a file (full disk, permissions) fails in a second instead of
    after TensorFlow's import (~7 s of CPU on 2 cores of an AMD EPYC Zen 3). The loop checks again;
    a finished run (results.json) writes nothing and is left to it, as are non-chief workers."""
    from pathlib import Path

    from resnet_train.runtime import cluster
    from resnet_train.training import run_dir

    if cluster.is_chief() and not (Path(workdir) / run_dir.RESULTS).exists():
        run_dir.ensure_writable(Path(workdir))


def _trial(cfg):
    """A search member's Optuna trial, when its search prunes (tools/trial_pruning.py); not under
    runtime=multi_worker, whose workers would have to agree on the pruner's answer."""
    if cfg.runtime.strategy == "multi_worker" or not OmegaConf.select(HydraConfig.get(), "sweeper.pruner"):
        return None
    from resnet_train.tools import trial_pruning

    return trial_pruning.from_hydra(HydraConfig.get())


def _check_search_has_validation(cfg) -> None:
    """A hyper-parameter search (any sweeper that optimises the returned value) needs a validation
    split: optimising the test accuracy would tune on the test set."""
    from resnet_train.training.selection import search_refusal

    refusal = search_refusal(str(OmegaConf.select(HydraConfig.get(), "sweeper._target_") or ""), cfg.data.val_split)
    if refusal:
        # Every trial would fail alike: one line and exit 2 for the whole search, not a member's traceback.
        print(f"resnet-train: error: {refusal}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def train() -> None:
    """Console script `resnet-train`."""
    from resnet_train.errors import StoppedDuringSetUp
    from resnet_train.training import interrupts

    interrupts.catch_from_the_start()  # a scheduler's SIGTERM / SIGUSR2 from here on is a stop a rerun continues
    try:
        run_app(_train, "train")
    except StoppedDuringSetUp as stop:  # during Hydra's composition: no config to read retry_exit_code from
        print(f"resnet-train: {stop}", file=sys.stderr)
        sys.exit(exit_code(stop))
    finally:
        interrupts.release_start_catch()


@hydra.main(version_base=None, config_path="pkg://resnet_train.configs", config_name="show_augment")
def _show_augment(cfg) -> None:
    _quiet_tensorflow()
    import tensorflow as tf

    from resnet_train import data as data_lib
    from resnet_train.data import pipeline
    from resnet_train.data.augment import make_augment, make_batch_augment
    from resnet_train.errors import UserError
    from resnet_train.report.plots import augment_gallery

    try:
        splits = data_lib.load(cfg.data)
        info = splits.info
        load = pipeline.file_loader(info)  # a streamed folder holds paths
        train = splits.train.map(lambda x, y: (load(x), y)) if load else splits.train
        images, labels = next(iter(train.batch(cfg.images)))
        decode = pipeline.eval_preprocess(info)  # streamed JPEGs: the originals as evaluation sees them
        path = augment_gallery(
            images,
            labels.numpy(),
            info.class_names,
            make_augment(cfg.augment, info.image_shape, info.mean, encoded=info.encoded),
            make_batch_augment(cfg.augment, info.num_classes),
            cfg.versions,
            cfg.seed,
            cfg.out,
            originals=tf.stack([decode(x) for x in images]) if decode else None,
        )
    except UserError as error:
        fail(error)
    print(f"Wrote {path.resolve()}")


def show_augment() -> None:
    """The console script `resnet-show-augment`."""
    run_app(_show_augment, "show_augment")


def run_tool(task):
    """Runs a tool's body; user errors become one line and exit code 2."""
    from resnet_train.runtime import onednn, threads, tuning

    # The tools have no runtime group: oneDNN and threads as runtime=auto measured them here, else
    # the CPU's rule and TensorFlow's default.
    measured = tuning.cached()  # read once
    onednn.apply("auto", measured=tuning.choice(measured, "onednn"))
    threads.apply("auto", measured=tuning.choice(measured, "threads"))
    _quiet_tensorflow()
    from resnet_train.errors import UserError

    try:
        return task()
    except UserError as error:
        fail(error)


@hydra.main(version_base=None, config_path="pkg://resnet_train.configs", config_name="plot_schedule")
def _plot_schedule(cfg) -> None:
    def task():
        from resnet_train.tools.schedule_plot import plot_schedule

        path, lrs = plot_schedule(cfg)
        print(
            f"Wrote {path.resolve()} (lr from {lrs[0]:.4g}, peak {lrs.max():.4g}, last {lrs[-1]:.4g}; {len(lrs)} steps)"
        )

    run_tool(task)


def plot_schedule() -> None:
    """The console script `resnet-plot-schedule`."""
    run_app(_plot_schedule, "plot_schedule")
