"""Sweeps: the search space, the objective, storages and the study runner."""
