"""Training: the overlap pretext task's sampling, losses and metrics (the engine comes next)."""
