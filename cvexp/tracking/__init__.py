"""Experiment tracking: MLflow helpers."""
