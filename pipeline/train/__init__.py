"""Training: one engine for pretraining and fine-tuning, the overlap task, losses, metrics."""
