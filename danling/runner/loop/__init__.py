"""One batch and one epoch: training, evaluation and inference loops, stepping, precision, data."""
