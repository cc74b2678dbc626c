"""Bad input, one table: each case gets one line on stderr saying what was wrong (and how to fix
it), exit code 2, no traceback, and no file of an existing run changed.

Cases that reach the run directory are pointed at a finished run (`existing`): it must come out
byte for byte the same. Cases that need a clean directory (data, replicas, init_from) use a fresh
one, which must stay empty. Every case runs the real console-script entry point in-process.
The expected line is the whole line, so its "how to fix" part is checked too.
"""

import json

import pytest
from helpers import TINY, cli_in_process, file_digests

from resnet_train.config import load_config
from resnet_train.training.loop import train_and_evaluate


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    existing = root / "existing"
    train_and_evaluate(load_config((*TINY, "epochs=1")), existing)
    (root / "a_file").write_text("not a directory")
    (root / "empty").mkdir()
    one_class = root / "one_class" / "cats"
    one_class.mkdir(parents=True)
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(one_class / f"{i}.png")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "configs" / "experiment").mkdir(parents=True)
    (root / "configs" / "experiment" / "broken.yaml").write_text("epochs: [1, 2\n")
    (root / "imagenet_manual").mkdir()
    # Would be created if a config's YAML tag ran code (its folder exists, so `touch` would work).
    marker = root / "yaml_exploit_marker"
    evil = root / "evil_run"
    (evil / ".hydra").mkdir(parents=True)
    (evil / ".hydra" / "config.yaml").write_text(f"depth: !!python/object/apply:os.system ['touch {marker}']\n")
    (evil / "dataset.json").write_text((existing / "dataset.json").read_text())
    for name, damaged in (("cut_dataset", '{"num_classes": 10, "image_sh'), ("keyless_dataset", '{"num_classes": 10}')):
        (root / name / ".hydra").mkdir(parents=True)
        (root / name / ".hydra" / "config.yaml").write_text((existing / ".hydra" / "config.yaml").read_text())
        (root / name / "dataset.json").write_text(damaged)  # a run's dataset.json, cut short or edited
    return {"root": root, "existing": existing, "marker": marker}


CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
TFDS_FIX = (
    "(or set data.manual_dir to the folder that holds it), or point data.data_dir at a prepared "
    "tensorflow-datasets folder"
)

T = "resnet-train: error: "
# data.task=multilabel's labels file formats, as its errors name them (braces doubled: .format below).
LABELS_FORMATS = (
    'a CSV with the header "file,labels" (labels separated by spaces) or a JSON object '
    '{{"relative/path.jpg": ["label", ...]}}'
)
# (id, tool, arguments, the whole expected stderr line, where, environment): {root} and {existing}
# are filled in.
CASES = [
    (
        "unknown key",
        "resnet-train",
        ["optimzer.lr=0.1"],
        T + "unknown setting 'optimzer.lr' (did you mean optimizer.lr?); `resnet-train --cfg job` lists the settings",
        "existing",
        {},
    ),
    (
        "unknown top-level key",
        "resnet-train",
        ["epoch=3"],
        T + "unknown setting 'epoch' (did you mean epochs?); `resnet-train --cfg job` lists the settings",
        "existing",
        {},
    ),
    (
        "override syntax",
        "resnet-train",
        ["depth==20"],
        T + "Error parsing override 'depth==20': overrides are key=value, e.g. optimizer.lr=0.05 (quote values "
        "with spaces)",
        "existing",
        {},
    ),
    (
        "depth not 6n+2",
        "resnet-train",
        ["depth=21"],
        T + "CIFAR ResNet depth must be 6n+2: 20, 32, 44, 56, 110, 1202, ... (got 21); for ImageNet ResNets "
        "(18, 34, 50, 101, 152, 200) add model.variant=imagenet",
        "existing",
        {},
    ),
    ("depth not an integer", "resnet-train", ["depth=abc"], T + "depth must be an integer (got 'abc')", "existing", {}),
    (
        "depth wrong for the variant",
        "resnet-train",
        ["model.variant=imagenet", "depth=20"],
        T + "ImageNet ResNet depth must be one of 18, 34, 50, 101, 152, 200 (got 20)",
        "existing",
        {},
    ),
    (
        "unknown dataset",
        "resnet-train",
        ["data=cifar11"],
        T + "unknown data 'cifar11' (did you mean cifar10?): choose one of cifar10, cifar100, digits, folder, "
        "imagenet, synthetic, tfds, tfrecord",
        "existing",
        {},
    ),
    (
        "unknown optimizer",
        "resnet-train",
        ["optimizer=adamax"],
        T + "unknown optimizer 'adamax' (did you mean adam?): choose one of adam, adamw, lamb, lars, sgd",
        "existing",
        {},
    ),
    (
        "unknown experiment",
        "resnet-train",
        ["experiment=cifar10_papr"],
        T + "unknown experiment 'cifar10_papr' (did you mean cifar10_paper?): choose one of cifar10_fast, "
        "cifar10_paper, cifar10_paper_deep, cifar10_preact, imagenet_90ep, imagenet_rsb_a3",
        "existing",
        {},
    ),
    (
        "zero lr",
        "resnet-train",
        ["optimizer.lr=0"],
        T + "optimizer.lr must be a positive number (got 0)",
        "existing",
        {},
    ),
    (
        "negative lr",
        "resnet-train",
        ["optimizer.lr=-0.1"],
        T + "optimizer.lr must be a positive number (got -0.1)",
        "existing",
        {},
    ),
    ("zero epochs", "resnet-train", ["epochs=0"], T + "epochs must be a positive integer (got 0)", "existing", {}),
    (
        "negative epochs",
        "resnet-train",
        ["epochs=-3"],
        T + "epochs must be a positive integer (got -3)",
        "existing",
        {},
    ),
    (
        "zero batch",
        "resnet-train",
        ["batch_size=0"],
        T + "batch_size must be a positive integer (got 0)",
        "existing",
        {},
    ),
    ("negative seed", "resnet-train", ["seed=-1"], T + "seed must be a non-negative integer (got -1)", "existing", {}),
    ("unknown loss", "resnet-train", ["loss=focal"], T + "unknown loss 'focal': choose one of bce, ce", "existing", {}),
    (
        "bce threshold of 1",
        "resnet-train",
        ["loss=bce", "loss.target_threshold=1"],
        T + "loss.target_threshold is for loss=bce, in [0, 1) (got 1 with loss=bce)",
        "existing",
        {},
    ),
    (
        "unknown model style",
        "resnet-train",
        ["model.style=resnet_e"],
        T + "model.style must be standard or resnet_d (got 'resnet_e')",
        "existing",
        {},
    ),
    (
        "no copies of an image",
        "resnet-train",
        ["data.repeated_aug=0"],
        T + "data.repeated_aug must be a positive integer (got 0)",
        "existing",
        {},
    ),
    (
        "drop path of 1",
        "resnet-train",
        ["model.drop_path=1"],
        T + "model.drop_path must be in [0, 1), the last block's drop rate (got 1)",
        "existing",
        {},
    ),
    (
        "unknown precision",
        "resnet-train",
        ["runtime.precision=fp8"],
        T + "runtime.precision must be one of auto, float32, mixed_float16, mixed_bfloat16 (got 'fp8')",
        "existing",
        {},
    ),
    (
        "unknown strategy",
        "resnet-train",
        ["runtime.strategy=tpu"],
        T + "runtime.strategy must be one of auto, one_device, mirrored, multi_worker (got 'tpu')",
        "existing",
        {},
    ),
    (
        "unknown onednn setting",
        "resnet-train",
        ["runtime.onednn=maybe"],
        T + "runtime.onednn must be one of auto, true, false (got 'maybe'): auto turns oneDNN on on x86 CPUs with "
        "AVX2, where it is faster",
        "existing",
        {},
    ),
    (
        "xla not a boolean",
        "resnet-train",
        ["runtime.xla=maybe"],
        T + "runtime.xla must be true, false or auto (got 'maybe'); auto: what runtime=auto measured on this machine",
        "existing",
        {},
    ),
    (
        "threads not two counts",
        "resnet-train",
        ["runtime.threads=[1]"],
        T + "runtime.threads must be auto, default or [inter_op, intra_op] thread counts, 0 for TensorFlow's default "
        "(got [1]); e.g. runtime.threads=[1,2]",
        "existing",
        {},
    ),
    (
        "retry exit code not a number",
        "resnet-train",
        ["runtime.retry_exit_code=abc"],
        T + "runtime.retry_exit_code must be an integer (got 'abc'): null or an exit code from 4 to 255, e.g. 138",
        "existing",
        {},
    ),
    (
        "retry exit code a fraction",
        "resnet-train",
        ["runtime.retry_exit_code=1.5"],
        T + "runtime.retry_exit_code must be an integer (got 1.5): null or an exit code from 4 to 255, e.g. 138",
        "existing",
        {},
    ),
    (
        "retry exit code 0 (success)",
        "resnet-train",
        ["runtime.retry_exit_code=0"],
        T + "runtime.retry_exit_code must be null (75 for a stop, 4 for a lost peer) or an exit code from 4 to 255 "
        "(got 0): 0-3 mean done, a crash, bad input and a diverged run; Kubeflow's restartPolicy: ExitCode "
        "retries 138",
        "existing",
        {},
    ),
    (
        "retry exit code 1 (a crash)",
        "resnet-train",
        ["runtime.retry_exit_code=1"],
        T + "runtime.retry_exit_code must be null (75 for a stop, 4 for a lost peer) or an exit code from 4 to 255 "
        "(got 1): 0-3 mean done, a crash, bad input and a diverged run; Kubeflow's restartPolicy: ExitCode "
        "retries 138",
        "existing",
        {},
    ),
    (
        "retry exit code 2 (bad input)",
        "resnet-train",
        ["runtime.retry_exit_code=2"],
        T + "runtime.retry_exit_code must be null (75 for a stop, 4 for a lost peer) or an exit code from 4 to 255 "
        "(got 2): 0-3 mean done, a crash, bad input and a diverged run; Kubeflow's restartPolicy: ExitCode "
        "retries 138",
        "existing",
        {},
    ),
    (
        "retry exit code past 255",
        "resnet-train",
        ["runtime.retry_exit_code=256"],
        T + "runtime.retry_exit_code must be null (75 for a stop, 4 for a lost peer) or an exit code from 4 to 255 "
        "(got 256): 0-3 mean done, a crash, bad input and a diverged run; Kubeflow's restartPolicy: ExitCode "
        "retries 138",
        "existing",
        {},
    ),
    (
        "steps per call not a count",
        "resnet-train",
        ["runtime.steps_per_call=0"],
        T + "runtime.steps_per_call must be an integer >= 1 or auto (got 0); auto: what runtime=auto measured on this "
        "machine",
        "existing",
        {},
    ),
    (
        "download not a boolean",
        "resnet-train",
        ["data=cifar10", "data.download=maybe"],
        T + "data.download must be true or false (got 'maybe'): false never touches the network, true lets "
        "tensorflow-datasets download a dataset that is not prepared",
        "existing",
        {},
    ),
    (
        "zero steps",
        "resnet-train",
        ["steps=0"],
        T + "steps must be null or a positive integer, the run's length in optimizer steps (got 0)",
        "existing",
        {},
    ),
    (
        "warm-up longer than the run",
        "resnet-train",
        ["schedule.warmup_epochs=100", "epochs=1"],
        T + "schedule.warmup_epochs=100 is longer than the run (1 epoch): lower it or raise epochs",
        "existing",
        {},
    ),
    (
        "one checkpoint kept",
        "resnet-train",
        ["checkpoint.keep=1"],
        T + "checkpoint.keep must be an integer >= 2, so that a damaged newest checkpoint has a fallback (got 1)",
        "existing",
        {},
    ),
    (
        "yaml syntax error",
        "resnet-train",
        ["--config-dir", "{root}/configs", "experiment=broken"],
        T + "YAML syntax error in {root}/configs/experiment/broken.yaml, line 2: expected ',' or ']', but got "
        "'<stream end>'; fix the file",
        "existing",
        {},
    ),
    (
        "resume with another config",
        "resnet-train",
        [*TINY, "epochs=1", "optimizer.lr=0.5"],
        T + "{existing} holds a run with another config (optimizer.lr: 0.1 -> 0.5): rerun with its config to "
        "continue it, or choose a new hydra.run.dir (init_from={existing} starts a new run from its weights)",
        "existing",
        {},
    ),
    (
        "malformed TF_CONFIG",
        "resnet-train",
        ["runtime=multi_worker"],
        T + "TF_CONFIG must be JSON with 'cluster' and 'task' entries (Expecting property name enclosed in double "
        "quotes: line 1 column 2 (char 1))",
        "existing",
        {"TF_CONFIG": "{bad"},
    ),
    (
        "TF_CONFIG of a parameter server",
        "resnet-train",
        ["runtime=multi_worker"],
        T + "TF_CONFIG has a task of role 'ps' (a parameter server): this trainer has no parameter servers or side-car "
        "evaluators (every task trains and evaluates): start only chief/master and worker tasks",
        "existing",
        {"TF_CONFIG": '{"cluster": {"chief": ["a:2222"], "ps": ["b:2222"]}, "task": {"type": "ps", "index": 0}}'},
    ),
    (
        "TF_CONFIG of an evaluator",
        "resnet-train",
        ["runtime=multi_worker"],
        T + "TF_CONFIG has a task of role 'evaluator' (a side-car evaluator): this trainer has no parameter servers or "
        "side-car evaluators (every task trains and evaluates): start only chief/master and worker tasks",
        "existing",
        {"TF_CONFIG": '{"cluster": {"chief": ["a:2222"]}, "task": {"type": "evaluator", "index": 0}}'},
    ),
    (
        "run dir under a file",
        "resnet-train",
        ["hydra.run.dir={root}/a_file/run"],
        T + "Not a directory: {root}/a_file/run (check the path, e.g. hydra.run.dir=...)",
        None,
        {},
    ),
    (
        "batch not divisible by replicas",
        "resnet-train",
        ["runtime=mirrored", "runtime.cpu_replicas=2", "batch_size=33"],
        T + "batch_size=33 (the global batch) does not divide over 2 replicas: use a multiple of 2, e.g. 32 or 34",
        "fresh",
        {},
    ),
    (
        "batch larger than the data",
        "resnet-train",
        [*TINY, "batch_size=4096"],
        T + "batch_size=4096 is larger than the 128 training images of digits: choose a batch of at most 128 images",
        "fresh",
        {},
    ),
    (
        "label smoothing out of range",
        "resnet-train",
        [*TINY, "augment.label_smoothing=1.5"],
        T + "augment.label_smoothing must be in [0, 1) (got 1.5)",
        "fresh",
        {},
    ),
    (
        "ema decay out of range",
        "resnet-train",
        [*TINY, "ema.decay=2"],
        T + "ema.decay must be in (0, 1), e.g. 0.999 (got 2)",
        "fresh",
        {},
    ),
    # data.download=false: never a download (nor a probe of the host), whatever the machine.
    (
        "missing cifar data_dir",
        "resnet-train",
        ["data=cifar10", "data.download=false", "data.data_dir={root}/nowhere", "data.manual_dir={root}/nowhere"],
        T + "cifar10 is not prepared in {root}/nowhere and downloads are off (data.download=false): put "
        "cifar-10-binary.tar.gz (from "
        + CIFAR_URL
        + ") into {root}/nowhere "
        + TFDS_FIX
        + ", or set data.download=true to let tensorflow-datasets download it",
        "fresh",
        {},
    ),
    (
        "missing imagenet archives",
        "resnet-train",
        ["data=imagenet", "data.download=false", "data.data_dir={root}/tfds", "data.manual_dir={root}/imagenet_manual"],
        T + "imagenet2012 is not prepared in {root}/tfds and it cannot be downloaded automatically: put "
        "ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar (downloaded by hand from https://image-net.org/) into "
        "{root}/imagenet_manual " + TFDS_FIX,
        "fresh",
        {},
    ),
    (
        "image folder missing",
        "resnet-train",
        ["data=folder", "data.path={root}/no_such_folder"],
        T + "data.path={root}/no_such_folder does not exist or is not a folder",
        "fresh",
        {},
    ),
    (
        "image folder empty",
        "resnet-train",
        ["data=folder", "data.path={root}/empty"],
        T + "no images in {root}/empty: expected one sub-folder per class holding .jpg, .jpeg, .png, .bmp, .gif files",
        "fresh",
        {},
    ),
    (
        "multi-label folder without a labels file",
        "resnet-train",
        ["data=folder", "data.path={root}/one_class", "data.task=multilabel"],
        T
        + "no labels file in {root}/one_class: data.task=multilabel looks for labels.csv or labels.json "
        + LABELS_FORMATS.join("()")
        + ", or the file named by data.labels_file",
        "fresh",
        {},
    ),
    (
        "multi-label folder, data.labels_file not there",
        "resnet-train",
        ["data=folder", "data.path={root}/one_class", "data.task=multilabel", "data.labels_file=tags.csv"],
        T + "data.labels_file=tags.csv: no such file in {root}/one_class (data.task=multilabel lists each "
        "split's images with their labels: " + LABELS_FORMATS + ")",
        "fresh",
        {},
    ),
    (
        "data.task unknown",
        "resnet-train",
        ["data.task=multiclas"],
        T + "data.task must be multiclass (one label per image) or multilabel (several labels per image) "
        "(got 'multiclas')",
        "fresh",
        {},
    ),
    (
        "data.threshold outside (0, 1)",
        "resnet-train",
        ["data.threshold=1.5"],
        T + "data.threshold must be in (0, 1): a label is predicted when its probability is at least this (got 1.5)",
        "fresh",
        {},
    ),
    (
        "checkpoint.best_metric=map on a single-label run",
        "resnet-train",
        ["checkpoint.best_metric=map"],
        T + "checkpoint.best_metric=map (mean average precision) is for data.task=multilabel: choose accuracy, "
        "balanced_accuracy or macro_f1",
        "fresh",
        {},
    ),
    (
        "multilabel on a single-label source",
        "resnet-train",
        ["data.task=multilabel"],
        T + "data.task=multilabel: data.source=embedded has one label per image; several come from data=folder "
        "(with a labels file) or data=tfrecord (several image/class/label values per record)",
        "fresh",
        {},
    ),
    (
        "multilabel with balanced sampling",
        "resnet-train",
        ["data=folder", "data.path={root}/one_class", "data.task=multilabel", "data.sampling=balanced"],
        T + "data.task=multilabel: data.sampling=balanced draws each class equally often, which images with "
        "several labels cannot be: use data.sampling=natural",
        "fresh",
        {},
    ),
    (
        "multilabel with class weights",
        "resnet-train",
        ["data=folder", "data.path={root}/one_class", "data.task=multilabel", "data.class_weights=auto"],
        T + "data.task=multilabel: data.class_weights weighs an example by its one class: leave it null",
        "fresh",
        {},
    ),
    (
        "multilabel with data.classes",
        "resnet-train",
        ["data=folder", "data.path={root}/one_class", "data.task=multilabel", "data.classes=[0,1]"],
        T + "data.task=multilabel: data.classes keeps some classes' images, which multi-label images do not split "
        "into: leave it null",
        "fresh",
        {},
    ),
    (
        "multilabel choosing best/ by balanced accuracy",
        "resnet-train",
        [
            "data=folder",
            "data.path={root}/one_class",
            "data.task=multilabel",
            "checkpoint.best_metric=balanced_accuracy",
        ],
        T + "data.task=multilabel: checkpoint.best_metric=balanced_accuracy needs one label per image: choose map, "
        "macro_f1 or accuracy (exact match)",
        "fresh",
        {},
    ),
    (
        "multilabel with a distillation teacher",
        "resnet-train",
        ["data=folder", "data.path={root}/one_class", "data.task=multilabel", "distill.teacher={root}"],
        T + "data.task=multilabel: distill.teacher's soft targets are one softmax over the classes: leave "
        "distill.teacher unset",
        "fresh",
        {},
    ),
    (
        "image folder with one class",
        "resnet-train",
        ["data=folder", "data.path={root}/one_class"],
        T + "{root}/one_class has one class (cats): a classifier needs at least two class folders",
        "fresh",
        {},
    ),
    (
        "image folder cache setting",
        "resnet-train",
        ["data=folder", "data.path={root}/one_class", "data.cache=sometimes"],
        T + "data.cache must be auto, true (decode into memory) or false (stream from the files) (got 'sometimes')",
        "fresh",
        {},
    ),
    (
        "tfrecord files missing",
        "resnet-train",
        ["data=tfrecord", "data.train_files={root}/none-*", "data.eval_files={root}/none-*"],
        T + "data.train_files={root}/none-* matches no file: give a glob of TFRecord files, e.g. '/data/train-*'",
        "fresh",
        {},
    ),
    (
        "data.shard unknown",
        "resnet-train",
        [*TINY, "data.shard=workers"],
        T + "data.shard must be batches (every worker reads all and keeps its slice of each batch) or "
        "files (every worker reads only its own files) (got 'workers')",
        "fresh",
        {},
    ),
    (
        "finetune normalization unknown",
        "resnet-train",
        [*TINY, "finetune.normalization=imagenet"],
        T + "finetune.normalization must be source (the init_from model's input statistics) or data (this "
        "dataset's) (got 'imagenet')",
        "fresh",
        {},
    ),
    (
        "early_stop patience zero",
        "resnet-train",
        [*TINY, "early_stop.patience=0"],
        T + "early_stop.patience must be null or a positive number of epochs (got 0)",
        "fresh",
        {},
    ),
    (
        "early_stop min_delta negative",
        "resnet-train",
        [*TINY, "early_stop.min_delta=-0.1"],
        T + "early_stop.min_delta must be >= 0 (got -0.1)",
        "fresh",
        {},
    ),
    (
        "early_stop without a validation split",
        "resnet-train",
        [*TINY, "early_stop.patience=3"],
        T + "early_stop.patience needs a validation split to watch: add data.val_split=0.1 (or a count of "
        "images); without one it would stop on the test set",
        "fresh",
        {},
    ),
    (
        "log every_steps zero",
        "resnet-train",
        [*TINY, "log.every_steps=0"],
        T + "log.every_steps must be null or a positive integer (got 0)",
        "fresh",
        {},
    ),
    (
        "log every_seconds negative",
        "resnet-train",
        [*TINY, "log.every_seconds=-1"],
        T + "log.every_seconds must be null or a positive number of seconds (got -1)",
        "fresh",
        {},
    ),
    (
        "logger unknown",
        "resnet-train",
        [*TINY, "logger=[tensorboard,neptune]"],
        T + "logger entries must be among tensorboard, mlflow, wandb, e.g. logger=[tensorboard,mlflow] (got 'neptune')",
        "fresh",
        {},
    ),
    (
        "logger twice",
        "resnet-train",
        [*TINY, "logger=[mlflow,mlflow]"],
        T + "logger names a logger twice (got ['mlflow', 'mlflow'])",
        "fresh",
        {},
    ),
    (
        "wandb mode unknown",
        "resnet-train",
        [*TINY, "wandb.mode=cloud"],
        T + "wandb.mode must be online or offline (got 'cloud')",
        "fresh",
        {},
    ),
    (
        "init_from nothing",
        "resnet-train",
        [*TINY, "init_from={root}/no_such_run"],
        T + "init_from={root}/no_such_run does not exist",
        "fresh",
        {},
    ),
    (
        "init_from another architecture",
        "resnet-train",
        [*TINY, "depth=14", "init_from={existing}"],
        T + "init_from={existing} (cifar_resnet8) does not fit cifar_resnet14: layer stage1_block2_conv1 needs "
        "[(3, 3, 16, 16)], the checkpoint has missing; fine-tune from the same architecture (depth, variant)",
        "fresh",
        {},
    ),
    (
        "run= not a run directory",
        "resnet-eval",
        ["run={root}/empty"],
        "resnet-eval: error: {root}/empty is not a resnet-train run directory (no .hydra/config.yaml or dataset.json)",
        None,
        {},
    ),
    (
        "checkpoint= nothing",
        "resnet-eval",
        ["run={existing}", "checkpoint={root}/nope"],
        "resnet-eval: error: no checkpoint ({root}/nope) in {existing}: train first, or pass checkpoint=auto | best | "
        "last | PATH",
        None,
        {},
    ),
    (
        "unreadable image",
        "resnet-predict",
        ["run={existing}", "images=[{root}/broken.png]"],
        "resnet-predict: could not predict {root}/broken.png: not a readable image",
        None,
        {},
    ),
    (
        "top_k not a number",
        "resnet-predict",
        ["run={existing}", "images=[{root}/broken.png]", "top_k=many"],
        "resnet-predict: error: top_k must be an integer (got 'many')",
        None,
        {},
    ),
    (
        "embeddings file of another type",
        "resnet-predict",
        ["run={existing}", "images=[{root}/broken.png]", "output=embeddings", "out={root}/e.csv"],
        "resnet-predict: error: out={root}/e.csv must end in .npz (NumPy) or .parquet (Parquet) for output=embeddings",
        None,
        {},
    ),
    (
        "out without output=embeddings",
        "resnet-predict",
        ["run={existing}", "images=[{root}/broken.png]", "out={root}/e.npz"],
        "resnet-predict: error: out={root}/e.npz applies to output=embeddings only",
        None,
        {},
    ),
    (
        "threshold outside (0, 1)",
        "resnet-eval",
        ["run={existing}", "threshold=1.5"],
        "resnet-eval: error: threshold must be in (0, 1): a label is predicted when its probability is at least "
        "this (got 1.5)",
        "existing",
        {},
    ),
    (
        "threshold on a single-label run",
        "resnet-predict",
        ["run={existing}", "images=[{root}/broken.png]", "threshold=0.3"],
        "resnet-predict: error: threshold=0.3 applies to multi-label runs (data.task=multilabel); this run "
        "predicts one class per image: use top_k",
        None,
        {},
    ),
    (
        "unknown tool setting",
        "resnet-eval",
        ["run={existing}", "ttaa=flip"],
        "resnet-eval: error: unknown setting 'ttaa' (did you mean tta?); `resnet-eval --cfg job` lists the settings",
        None,
        {},
    ),
    (
        "unknown export format",
        "resnet-export",
        ["run={existing}", "format=torchscript"],
        "resnet-export: error: format must be one of saved_model, keras, tflite, onnx, all (got 'torchscript')",
        None,
        {},
    ),
    (
        "ONNX opset tf2onnx cannot write",
        "resnet-export",
        ["run={existing}", "format=onnx", "opset=7"],
        "resnet-export: error: opset must be an ONNX opset from 13 to 18 (got 7)",
        None,
        {},
    ),
    (
        "opset given for another format",
        "resnet-export",
        ["run={existing}", "format=tflite", "opset=17"],
        "resnet-export: error: opset=17 applies to format=onnx only",
        None,
        {},
    ),
    (
        "quantize given for onnx",
        "resnet-export",
        ["run={existing}", "format=onnx", "quantize=float16"],
        "resnet-export: error: quantize=float16 applies to format=tflite only",
        None,
        {},
    ),
    (
        "damaged dataset.json",
        "resnet-eval",
        ["run={root}/cut_dataset"],
        "resnet-eval: error: {root}/cut_dataset/dataset.json is damaged (JSONDecodeError: Unterminated string "
        "starting at: line 1 column 21 (char 20)): it holds the run's classes and input statistics, which the "
        "tools need; put it back from a copy of the run (rerunning an unfinished run's command writes it again "
        "from its data)",
        None,
        {},
    ),
    (
        "dataset.json without its keys",
        "resnet-export",
        ["run={root}/keyless_dataset"],
        "resnet-export: error: {root}/keyless_dataset/dataset.json is damaged (KeyError: 'image_shape'): it holds "
        "the run's classes and input statistics, which the tools need; put it back from a copy of the run (rerunning "
        "an unfinished run's command writes it again from its data)",
        None,
        {},
    ),
    # Refused by the safe YAML loader (the tag is named), not merely "some error about a config".
    (
        "config with a YAML exploit",
        "resnet-eval",
        ["run={root}/evil_run"],
        "resnet-eval: error: {root}/evil_run/.hydra/config.yaml is not a readable resnet-train config (could not "
        "determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system')",
        None,
        {},
    ),
    (
        "prune sparsity 1",
        "resnet-train",
        ["prune.sparsity=1.0"],
        T + "prune.sparsity must be in [0, 1), the final fraction of zero weights; 0: off (got 1)",
        "existing",
        {},
    ),
    (
        "prune scope unknown",
        "resnet-train",
        ["prune.sparsity=0.5", "prune.scope=channel"],
        T + "prune.scope must be layer or global (got 'channel')",
        "existing",
        {},
    ),
    (
        "prune window backwards",
        "resnet-train",
        ["prune.sparsity=0.5", "prune.start=0.6", "prune.end=0.4"],
        T + "prune.start and prune.end must satisfy 0 <= start < end within [0, 1] (got 0.6 and 0.4)",
        "existing",
        {},
    ),
    (
        "prune with ema",
        "resnet-train",
        ["prune.sparsity=0.5", "ema.decay=0.99"],
        T + "prune.sparsity does not combine with ema.decay: the averaged weights the tools use would not hold the "
        "pruned zeros; prune without ema.decay",
        "existing",
        {},
    ),
    (
        "prune window past the run",
        "resnet-train",
        [*TINY, "epochs=1", "prune.sparsity=0.5", "prune.unit=step", "prune.end=100"],
        T + "prune.start and prune.end (unit step: steps 0 and 100) must make a window inside the run's 4 steps, "
        "start before end",
        "fresh",
        {},
    ),
    (
        "prune excludes no such layer",
        "resnet-train",
        [*TINY, "epochs=1", "prune.sparsity=0.5", "prune.exclude=[stage9,logits]"],
        T + "prune.exclude names no conv or dense layer of cifar_resnet8: stage9 (its 8: stem_conv, "
        "stage1_block1_conv1, ..., logits; `resnet-eval` lists them all)",
        "fresh",
        {},
    ),
    (
        "prune with everything frozen or excluded",
        "resnet-train",
        [*TINY, "epochs=1", "prune.sparsity=0.5", "finetune.freeze=backbone"],
        T + "prune.sparsity is set but no conv or dense kernel is left to prune: prune.exclude names them all, or "
        "finetune.freeze froze the rest",
        "fresh",
        {},
    ),
    (
        "unknown quantisation",
        "resnet-export",
        ["run={existing}", "format=tflite", "quantize=int4"],
        "resnet-export: error: quantize must be one of none, float16, dynamic, int8, int8_full (got 'int4')",
        None,
        {},
    ),
    (
        "int8 asked of a SavedModel",
        "resnet-export",
        ["run={existing}", "format=saved_model", "quantize=int8"],
        "resnet-export: error: quantize=int8 applies to format=tflite or onnx only",
        None,
        {},
    ),
    (
        "integer-only asked of onnx",
        "resnet-export",
        ["run={existing}", "format=onnx", "quantize=int8_full"],
        "resnet-export: error: quantize=int8_full applies to format=tflite only",
        None,
        {},
    ),
    (
        "quantize given with format=all",
        "resnet-export",
        ["run={existing}", "format=all", "quantize=int8"],
        "resnet-export: error: format=all exports every quantisation of every format: leave out quantize=int8",
        None,
        {},
    ),
    (
        "no calibration images",
        "resnet-export",
        ["run={existing}", "format=tflite", "quantize=int8_full", "calibration_images=0"],
        "resnet-export: error: calibration_images must be at least 1 training image (got 0)",
        None,
        {},
    ),
    (
        "no latency runs",
        "resnet-export",
        ["run={existing}", "format=all", "latency_runs=0"],
        "resnet-export: error: latency_runs must be at least 1 timed call (got 0)",
        None,
        {},
    ),
    (
        "push_to not a Hub repository",
        "resnet-export",
        ["run={existing}", "push_to=s3://bucket/model"],
        "resnet-export: error: push_to must be hf://USER/REPO, a Hugging Face Hub model repository (got "
        "'s3://bucket/model')",
        None,
        {},
    ),
    (
        "distillation temperature 0",
        "resnet-train",
        ["distill.temperature=0"],
        T + "distill.temperature must be > 0, e.g. 4 (got 0)",
        "existing",
        {},
    ),
    (
        "distillation alpha above 1",
        "resnet-train",
        ["distill.alpha=1.5"],
        T + "distill.alpha must be in [0, 1], the soft targets' weight in the loss (got 1.5)",
        "existing",
        {},
    ),
    (
        "teacher with other classes",
        "resnet-train",
        [*TINY, "data.classes=[0,1,2]", "distill.teacher={existing}"],
        T + "distill.teacher={existing} has 10 classes (0, 1, 2, 3, ... 9); this run's data has 3 (0, 1, 2): "
        "distil from a teacher trained on the same classes, in the same order",
        "fresh",
        {},
    ),
    (
        "teacher given to a run trained without one",
        "resnet-train",
        [*TINY, "epochs=1", "distill.teacher={existing}"],
        T + "{existing} holds a run with another config (distill.teacher: None -> {existing}): rerun with its "
        "config to continue it, or choose a new hydra.run.dir (init_from={existing} starts a new run from its weights)",
        "existing",
        {},
    ),
    (
        "keras.applications weights as the teacher",
        "resnet-train",
        ["distill.teacher=keras_applications:{root}/resnet50.h5"],
        T + "distill.teacher=keras_applications:{root}/resnet50.h5: keras.applications weights cannot teach "
        "directly: fine-tune them on this data first (init_from=keras_applications:{root}/resnet50.h5) and give "
        "that run as distill.teacher",
        "existing",
        {},
    ),
]


@pytest.mark.parametrize("name,tool,args,expected,where,env", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    places, tmp_path, monkeypatch, capsys, name, tool, args, expected, where, env
):
    root, existing = places["root"], places["existing"]
    args = [a.format(root=root, existing=existing) for a in args]
    fresh = tmp_path / "fresh"
    if tool == "resnet-train" and where:
        args.append(f"hydra.run.dir={existing if where == 'existing' else fresh}")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    before = file_digests(existing)

    code, out, err = cli_in_process(monkeypatch, capsys, tool, *args)

    lines = [line for line in err.strip().splitlines() if not line.startswith("[")]  # not log lines
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0] == expected.format(root=root, existing=existing)
    assert "Traceback" not in err + out
    assert file_digests(existing) == before
    if where == "fresh" and fresh.exists():  # at most the log of the attempt
        assert set(file_digests(fresh)) <= {"train.log"}
    assert places["marker"].parent.is_dir() and not places["marker"].exists()  # nothing in a config is executed


def test_hydra_full_error_still_gives_the_traceback(places, monkeypatch, capsys):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        cli_in_process(monkeypatch, capsys, "resnet-train", "optimzer.lr=0.1", f"hydra.run.dir={places['existing']}")


def test_the_existing_run_is_finished_and_its_dataset_json_real(places):
    # `existing` really is a finished run (so "unchanged" above means something) ...
    existing = places["existing"]
    assert json.loads((existing / "results.json").read_text())["epochs"] == 1
    assert (existing / "checkpoints" / "checkpoint").is_file()
    # ... its dataset.json describes the data it was trained on, and the YAML-exploit run carries the
    # same one, so that case gets past "not a run directory" to the parsing of its config.
    dataset = json.loads((existing / "dataset.json").read_text())
    assert (dataset["name"], dataset["num_classes"], dataset["train_size"], dataset["test_size"]) == (
        "digits",
        10,
        128,
        64,
    )
    assert (places["root"] / "evil_run" / "dataset.json").read_text() == (existing / "dataset.json").read_text()


def test_the_first_line_of_an_exception_never_fails_on_an_empty_message():
    """errors.first_line is what every one-line message quotes of an underlying error."""
    from resnet_train.errors import first_line

    assert first_line(ValueError("")) == "ValueError"  # no IndexError inside an `except`
    assert first_line(OSError("bad header\nsecond line")) == "bad header"
    assert first_line(ValueError("x" * 50 + "/the/path"), 9, tail=True) == "/the/path"
    assert first_line(ValueError("abcdef"), 3) == "abc"
    import tensorflow as tf

    assert first_line(tf.errors.DataLossError(None, None, "  truncated record\nmore")) == "truncated record"


def test_the_cli_explains_a_bad_override_without_starting_tensorflow():
    """hydra_errors' did-you-mean composes the config through config.load_config: TensorFlow-free,
    so a typo's message comes back without a TensorFlow start-up (~4 s)."""
    import subprocess
    import sys

    code = (
        "import sys; from resnet_train.cli.hydra_errors import did_you_mean; "
        "print(did_you_mean('optimizer.momentun', 'train')); "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "did you mean optimizer.momentum?" in done.stdout
