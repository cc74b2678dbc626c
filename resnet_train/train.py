"""`from resnet_train.train import train_and_evaluate, load_config`: the notebook entry point the
README documents, kept where it always was; the loop lives in training/loop.py."""

from resnet_train.config import load_config
from resnet_train.training.loop import train_and_evaluate

__all__ = ["load_config", "train_and_evaluate"]
