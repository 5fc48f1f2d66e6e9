"""Scripts that the runner tests launch in child processes (`torchrun`, plain `python`, a checkpoint saver)."""
