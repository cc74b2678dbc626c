"""experiment=imagenet_rsb_a3: "ResNet strikes back" procedure A3 composes from the pieces it needs
(LAMB, cosine + warm-up, BCE with its threshold, mixup + cutmix, RandAugment) and states its
published figure, "not measured here" until it is."""

from pathlib import Path

from helpers import compose

from resnet_train.config import validate


def test_the_a3_recipe_composes_validates_and_cites_its_figure():
    cfg = compose("experiment=imagenet_rsb_a3")
    validate(cfg)
    assert (cfg.depth, cfg.epochs, cfg.batch_size, cfg.data.name) == (50, 100, 2048, "imagenet2012")
    opt = cfg.optimizer
    assert (opt.name, opt.lr, opt.lr_batch_reference, opt.weight_decay, opt.decay_bn) == (
        "lamb",
        8e-3,
        2048,
        0.02,
        False,
    )
    assert (cfg.schedule.name, cfg.schedule.warmup_epochs, cfg.schedule.warmup_mode) == ("cosine", 5, "linear")
    assert (cfg.loss.name, cfg.loss.target_threshold) == ("bce", 0.2)
    aug = cfg.augment
    assert (aug.mixup_alpha, aug.cutmix_alpha, aug.label_smoothing) == (0.1, 1.0, 0.0)
    assert (aug.randaugment.num_ops, aug.randaugment.magnitude) == (2, 6)
    assert (cfg.model.drop_path, cfg.model.style, cfg.ema.decay) == (0.0, "standard", None)
    header = (Path(__file__).parents[1] / "configs" / "experiment" / "imagenet_rsb_a3.yaml").read_text()
    header = header.split("defaults:")[0]
    assert "78.1% top-1" in header and "not measured here" in header and "departs" in header
