"""Deployment: the Hugging Face export, the MLflow pyfunc model, registration with aliases."""
