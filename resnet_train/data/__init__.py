"""Data sources and pipelines. `load(data_cfg)` picks the source named by `data.source`."""
from __future__ import annotations

from resnet_train.data.info import DatasetInfo, Splits
from resnet_train.errors import ConfigError

__all__ = ["load", "DatasetInfo", "Splits", "SOURCES"]

SOURCES = ("embedded", "tfds", "synthetic")


def load(cfg) -> Splits:
    """`cfg` is the `data` config group (a mapping)."""
    source = cfg.get("source")
    if source == "embedded":
        from resnet_train.data import embedded

        return embedded.load(image_size=int(cfg.get("image_size", 32)),
                             test_fraction=float(cfg.get("test_fraction", 0.2)))
    if source == "tfds":
        from resnet_train.data import tfds_source

        return tfds_source.load(
            cfg["name"],
            data_dir=cfg.get("data_dir"),
            manual_dir=cfg.get("manual_dir"),
            download=bool(cfg.get("download", True)),
            mean=cfg.get("mean"),
            std=cfg.get("std"),
        )
    if source == "synthetic":
        from resnet_train.data import synthetic

        return synthetic.load(
            image_shape=tuple(cfg.get("image_shape", (32, 32, 3))),
            num_classes=int(cfg.get("num_classes", 10)),
            train_size=int(cfg.get("train_size", 1024)),
            test_size=int(cfg.get("test_size", 256)),
        )
    raise ConfigError(f"data.source must be one of {', '.join(SOURCES)} (got {source!r})")
