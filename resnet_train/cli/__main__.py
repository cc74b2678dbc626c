"""python -m resnet_train.cli ...: the same as resnet-train."""

from resnet_train.cli import train

train()
