"""What a run writes for people: metrics.jsonl, TensorBoard, progress bars (metrics.py) and plots."""
