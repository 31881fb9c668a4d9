"""Evaluation: COCO metrics, reports and plots."""
