#!/usr/bin/env python
"""Draws the learning-rate curve of a training config to a PNG, before spending hours on it.

    python scripts/plot_schedule.py schedule=onecycle optimizer.lr=0.4 out=onecycle.png
    python scripts/plot_schedule.py data=imagenet schedule=imagenet_step batch_size=1024 train_size=1281167
"""
from resnet_train.cli import plot_schedule

if __name__ == "__main__":
    plot_schedule()
