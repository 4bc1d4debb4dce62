"""Datasets: scanning and validating folders, captions and templates, sizes, the latent cache."""
