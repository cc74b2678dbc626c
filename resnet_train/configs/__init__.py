"""Hydra config groups (also reachable as the top-level configs/ folder)."""
