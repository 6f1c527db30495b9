"""Training: the frozen encoders and the one query pipeline over a dataset, LatentRouter, its capability memory,
slices and profiles, the per-query cost model, the training loop, and the run folder it writes."""
