"""Training: one loop for every model and method (AMP, DDP via torchrun, exact resume)."""
