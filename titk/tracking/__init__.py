"""Tracking in MLflow with explicit run ids, and dataset manifests."""
