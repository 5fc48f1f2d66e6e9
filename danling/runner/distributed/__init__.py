"""Processes and ranks: the process group, DDP/FSDP2, agreement across ranks, preemption."""
