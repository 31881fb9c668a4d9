"""Training back ends: where and how a LightningModule is fitted (``trainer`` config group)."""
