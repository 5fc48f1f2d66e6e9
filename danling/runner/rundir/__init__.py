"""The run directory: its files, its lock, and its creation at start."""
