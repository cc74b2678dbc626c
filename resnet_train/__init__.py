"""resnet-train: the papers' ResNets, trained from Hydra configs with TensorFlow."""

__version__ = "0.1.0"
