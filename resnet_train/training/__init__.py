"""A training run: the loop (loop.py, its set-up in setup.py), the Trainer's compiled step, checkpoints,
stop requests, the run directory and its lock, fine-tuning's start, a run loaded back (runs.py)."""
