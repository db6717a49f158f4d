"""Baseline training (``loop``), orbax checkpoints and the data a checkpoint was trained on.
Comes after data and models, before faults."""
