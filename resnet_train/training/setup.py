"""A run's set-up, each part checked before the next costs anything: the runtime (strategy,
precision, measured levers), the input (dataset, run length, evaluation and training batches), the
model with its optimizer and Trainer, the restore (own checkpoint, else init_from); then the run
directory becomes this run's. set_up returns what the loop needs (Run) and what it changes (State)."""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from resnet_train import config as config_lib
from resnet_train import models, optim
from resnet_train.errors import RunDirError
from resnet_train.models.probabilities import task_of
from resnet_train.optim import schedules
from resnet_train.report import plots, tracking
from resnet_train.report.metrics import NullReporter, Reporter, best_logged, best_logged_step, hparams_of, write_json
from resnet_train.report.step_log import StepLog
from resnet_train.runtime import device_pool, onednn, threads, tuning
from resnet_train.runtime import devices as runtime
from resnet_train.training import distill, early_stop, finetune, inputs, pretrained, prune, resolved, run_dir, selection
from resnet_train.training.checkpoint import Checkpointer
from resnet_train.training.inputs import Input
from resnet_train.training.interrupts import StopRequests
from resnet_train.training.trainer import Trainer

log = logging.getLogger(__name__)


@dataclass
class Run:
    """What the loop needs, made once by set_up."""

    cfg: object
    workdir: Path
    own_dir: Path  # the chief's is the run directory; other workers' a temporary folder
    rt: runtime.Runtime
    splits: object
    info: object
    model: object
    trainer: Trainer
    checkpointer: Checkpointer
    reporter: object
    epoch_batches: Callable  # (epoch, skip) -> an iterator of that epoch's batches from `skip` on
    distribute_eval: Callable  # (dataset, size) -> the distributed evaluation batches
    eval_ds: object  # the per-epoch evaluation's batches (validation split, else test set)
    eval_split: str  # "val" or "test"
    steps_per_epoch: int
    epochs: int
    total_steps: int
    steps_per_call: int
    every_steps: int
    train_flops: float  # per image, forward + backward
    peak: float  # the measured matmul rate over all replicas: MFU's denominator
    params: int
    step_log: StepLog  # log.every_steps / every_seconds: per-step TensorBoard points, lines off a terminal


@dataclass
class State:
    """What changes as the loop goes."""

    step: int
    best_so_far: float | None  # the best evaluation checkpoint.best_metric logged up to `step`
    eval_metrics: dict | None = None  # the last epoch's
    selected_metrics: dict | None = None  # the last epoch's figures that choose (selection.py: EMA's, if any)
    first_call: bool = True
    patience: early_stop.Patience | None = None  # early_stop's count of epochs without improvement
    stopped_early_at_epoch: int | None = None
    eval_confusion: object = None  # the last epoch's evaluation confusion matrix (numpy)
    curves: plots.CurvesEvery | None = None  # curves.png, redrawn as epochs end
    trial_stop: object = None  # trial_stop.TrialStop: a search member's reports to its Optuna trial


def set_up(cfg, workdir: Path, overrides, stop: StopRequests, held_log) -> tuple[Run, State]:
    """Runtime, data, model, optimizer, trainer, restore -- each checked before the next costs
    anything; then the run directory becomes this run's."""
    tracking.check_installed(cfg.logger)  # a missing package fails before any work
    rt, levers = _runtime(cfg, workdir, stop)
    # Only the chief writes; other workers save their (required) checkpoint copies to a temp dir.
    own_dir = workdir if rt.is_chief else Path(tempfile.mkdtemp(prefix="resnet_train_worker_"))
    data = inputs.make(cfg, workdir, rt)
    model, optimizer, trainer = _model_and_trainer(cfg, workdir, rt, data, xla=bool(levers["xla"][0]))
    params = models.count_params(model)
    # Model FLOPs utilisation: training FLOPs per image (forward + backward = 3x forward) x images/s
    # over the machine's measured matmul rate.
    train_flops = 3 * models.forward_flops(model)
    peak = runtime.peak_flops(rt.precision) * rt.replicas
    info = data.info
    _log_model(cfg, model, params, data)
    checkpointer, step = _restore(cfg, workdir, own_dir, rt, model, optimizer, trainer, info, overrides, held_log)
    if step:
        log.info("Continuing at step %d of %d", step, data.total_steps)

    # Every worker takes the same decisions (saving is collective under several workers): the
    # best accuracy so far comes from the records up to the restored step only.
    chosen_by, split = cfg.checkpoint.best_metric, selection.records_split(cfg)
    best_so_far = best_logged(workdir, split, chosen_by, up_to_step=step)
    if checkpointer.best_set_aside and best_so_far is not None:  # best/ was past the restored step
        checkpointer.adopt_best(best_logged_step(workdir, split, chosen_by, up_to_step=step))
    reporter = _reporter(cfg, workdir, rt, step, info)
    run = Run(
        cfg=cfg,
        workdir=workdir,
        own_dir=own_dir,
        rt=rt,
        splits=data.splits,
        info=info,
        model=model,
        trainer=trainer,
        checkpointer=checkpointer,
        reporter=reporter,
        epoch_batches=data.epoch_batches,
        distribute_eval=data.distribute_eval,
        eval_ds=data.eval_ds,
        eval_split=data.eval_split,
        steps_per_epoch=data.steps_per_epoch,
        epochs=data.epochs,
        total_steps=data.total_steps,
        steps_per_call=int(levers["steps_per_call"][0]),
        every_steps=cfg.checkpoint.every_steps or 0,
        train_flops=train_flops,
        peak=peak,
        params=params,
        step_log=StepLog(
            cfg.log.every_steps,
            cfg.log.every_seconds,
            reporter,
            data.total_steps,
            config_lib.step_batch(cfg),
            lines=rt.is_chief and not sys.stderr.isatty(),  # on a terminal the tqdm bar shows it
        ),
    )
    return run, _state(cfg, workdir, step, best_so_far)


def _state(cfg, workdir: Path, step: int, best_so_far) -> State:
    """The loop's start: the restored patience count; the curves redrawn from now on."""
    curves = plots.CurvesEvery(workdir / run_dir.METRICS, workdir / run_dir.CURVES)
    return State(step=step, best_so_far=best_so_far, patience=early_stop.restored(cfg, workdir, step), curves=curves)


def _reporter(cfg, workdir: Path, rt, step: int, info):
    """The chief's TensorBoard, metrics.jsonl and experiment trackers (the other workers report nothing)."""
    if not rt.is_chief:
        return NullReporter()
    reporter = Reporter(workdir, step, "tensorboard" in cfg.logger, tracking.open_trackers(cfg, workdir))
    reporter.hparams(hparams_of(cfg, info.name))
    return reporter


def _log_model(cfg, model, params: int, data: Input) -> None:
    step_batch = config_lib.step_batch(cfg)
    info, lr = data.info, optim.effective_lr(cfg.optimizer, step_batch)
    held_out = f"{info.val_size} val / " if info.val_size else ""
    log.info("Model %s: %s parameters; %s: %d train / %s%d test images, %d steps/epoch; lr %.4g (optimizer.lr %g "
             "per %d images x batch %d)", model.name, f"{params:,}", info.name, info.train_size, held_out,
             info.test_size, data.steps_per_epoch, lr, cfg.optimizer.lr,
             optim.lr_reference(cfg.optimizer, step_batch), step_batch)  # fmt: skip
    if cfg.optimizer.accumulate_steps > 1:
        log.info("Gradient accumulation: %d micro-batches of %d per optimizer step (batch norm sees %d)",
                 cfg.optimizer.accumulate_steps, cfg.batch_size, cfg.batch_size)  # fmt: skip


def _runtime(cfg, workdir: Path, stop: StopRequests):
    """Strategy, precision (a resumed run keeps what `auto` chose when it started), the measured
    levers; the checks that need the replica count. Returns (runtime.Runtime, levers)."""
    r = cfg.runtime
    precision, precision_kept = resolved.resumed_precision(workdir, r.precision)
    devices = device_pool.take(r, str(workdir)) if r.devices == device_pool.POOL else r.devices
    rt = runtime.configure(cfg.seed, r.deterministic, r.strategy, precision, devices, r.cpu_replicas)
    if precision_kept:
        log.info(precision_kept)
    levers = tuning.resolve(r)
    log.info(
        "oneDNN kernels %s (%s); XLA %s (%s); %d step(s) per call (%s); threads: %s",
        "on" if onednn.enabled() else "off",
        onednn.apply(r.onednn),
        "on" if levers["xla"][0] else "off",
        levers["xla"][1],
        levers["steps_per_call"][0],
        levers["steps_per_call"][1],
        threads.in_effect(),
    )
    stop.install()  # after the strategy: see StopRequests.install
    config_lib.check_replicas(cfg, rt.replicas)
    if levers["xla"][0]:
        runtime.check_xla()
    optim.check(cfg)  # a bad optimizer, schedule or EMA setting fails here, before any data is read
    return rt, levers


def _model_and_trainer(cfg, workdir: Path, rt, data: Input, xla: bool):
    """The model (fine-tuning's frozen layers marked), the optimizer with its schedule, the Trainer."""
    info, r = data.info, cfg.runtime
    ft = cfg.finetune
    finetune.input_normalisation(cfg, info, workdir)  # init_from: the source's statistics, or the data's
    with rt.strategy.scope():
        model = models.from_config(cfg.model, info)
        models.freeze(model, ft.freeze)  # before the optimizer sees the variables
        lr = optim.effective_lr(cfg.optimizer, config_lib.step_batch(cfg))
        schedule = schedules.lr_schedule(cfg.schedule, lr, data.total_steps, data.steps_per_epoch, cfg.optimizer.lr)
        optimizer = optim.build_optimizer(
            cfg.optimizer,
            schedule,
            loss_scaling=rt.precision == "mixed_float16",
            ema_decay=cfg.ema.decay,
            variables=model.trainable_variables,
        )
        optimizer.build(model.trainable_variables)  # slots exist before a restore fills them
    trainer = Trainer(
        model,
        optimizer,
        rt.strategy,
        cfg.batch_size,
        head_lr_mult=ft.head_lr_mult,
        weight_decay=optim.coupled_weight_decay(cfg.optimizer),
        clip_norm=optim.clip_norm(cfg.optimizer),
        decay_bn=cfg.optimizer.decay_bn,
        num_classes=info.num_classes,
        label_smoothing=cfg.augment.label_smoothing,
        loss=cfg.loss.name,
        target_threshold=cfg.loss.target_threshold,
        xla=xla,
        max_nonfinite_steps=(r.max_nonfinite_steps if rt.precision == "mixed_float16" else 0),
        accumulate_steps=cfg.optimizer.accumulate_steps,
        class_weights=data.class_weights,
        distill=distill.load(cfg, data, rt.strategy, workdir),  # checked against the run's own teacher
        pruner=prune.from_config(cfg, model, rt.strategy, data.total_steps, data.steps_per_epoch),
        multilabel=(cfg.data.threshold, info.class_names) if info.task == "multilabel" else None,
    )
    return model, optimizer, trainer


def _restore(cfg, workdir: Path, own_dir: Path, rt, model, optimizer, trainer, info, overrides, held_log):
    """This run's own checkpoint, else init_from (fine-tuning), else from scratch; then the
    directory becomes this run's (config, resolved settings, dataset saved). Returns
    (Checkpointer, the step the run continues from, the same on every worker)."""
    checkpointer = Checkpointer(
        own_dir / "checkpoints",
        model,
        optimizer,
        max_to_keep=cfg.checkpoint.keep,
        read_from=workdir / "checkpoints",
        extra={"train_sums": trainer.sums, **({"prune": trainer.pruner.state} if trainer.pruner else {})},
    )
    # A directory with progress (metrics, best/, damaged checkpoints set aside) but no readable
    # checkpoint is refused on every rerun, never taken for a new run.
    restored = checkpointer.restore_latest(expect_progress=run_dir.has_progress(workdir))
    if not restored and cfg.init_from:
        with rt.strategy.scope():
            if pretrained.is_pretrained(cfg.init_from):  # keras-hub / keras.applications weights
                initialised = pretrained.initialise(model, cfg.init_from, cfg.model)
            else:
                initialised = finetune.initialise_from(model, cfg.init_from, info.class_names, task_of(info))
        if rt.is_chief:
            write_json(workdir / "init_from.json", initialised)
    if rt.is_chief:  # the data, model and checkpoint fit: from here on the directory is this run's
        run_dir.save_config(workdir, cfg, overrides)
        resolved.save(workdir, rt.precision)
        write_json(workdir / run_dir.DATASET, info.to_dict())
    held_log.release()
    step = int(checkpointer.step.numpy()) if restored else 0
    _check_workers_agree(rt.strategy, step, workdir)
    distill.measure(trainer.distill, workdir, step, rt, cfg.batch_size)  # the teacher's test figures, once
    return checkpointer, step


def _check_workers_agree(strategy, step: int, workdir: Path) -> None:
    """Every worker must continue from the same step (else the collectives would hang)."""
    import tensorflow as tf

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return
    check_steps_agree(strategy, lambda: tf.constant([step], tf.int64), step, workdir)


def check_steps_agree(strategy, replica_step, step: int, workdir: Path) -> None:
    """Gathers every replica's restored step (`replica_step()`, run on each replica) and refuses
    unless all are equal: a sum would pass a worker whose step is the others' mean."""
    steps = strategy.gather(strategy.run(replica_step), axis=0).numpy().tolist()
    if min(steps) != max(steps):
        raise RunDirError(
            f"the workers restored different checkpoints (steps {steps}; this one: step {step} from "
            f"{workdir}): give every worker the same hydra.run.dir on a file system they share"
        )
