"""resnet-train's Optuna sweeper (hydra/sweeper=optuna), on Optuna >= 4: config.py registers it,
sweeper.py is the Hydra plugin, space.py reads the search space, study.py runs the study.
Hydra imports every module here when it scans for plugins: none imports Optuna at module level."""
