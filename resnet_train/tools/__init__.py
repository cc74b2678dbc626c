"""The after-training commands' library: evaluate, export, predict, explain, the lr-schedule plot,
sweep summaries and the Optuna study that continues."""
