"""Training: config -> objects (build), TrainState, the loop, checkpoints, the run directory."""
