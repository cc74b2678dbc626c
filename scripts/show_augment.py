#!/usr/bin/env python
"""Writes a PNG grid of augmented training images, to see an augmentation before training with it.

    python scripts/show_augment.py augment=autoaugment out=autoaugment.png
    python scripts/show_augment.py data=cifar10 augment=cutmix images=6 versions=4
"""
from resnet_train.cli import show_augment

if __name__ == "__main__":
    show_augment()
