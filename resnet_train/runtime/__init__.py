"""Where and how a run computes: devices, strategy and precision (devices.py), oneDNN, runtime=auto's
measured levers (tuning.py, probe.py), the multi-worker cluster. No TensorFlow import here: cli.py
sets oneDNN and the thread pools before TensorFlow starts."""
