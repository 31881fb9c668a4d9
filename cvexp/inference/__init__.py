"""Inference: the one path from a trained model (artifact or checkpoint) to predictions, and the inputs it reads."""
