"""Meters and metrics: running averages, dataset-level metrics and their functional forms."""

from .average_meter import AverageMeter, AverageMeters, MultiTaskAverageMeters

__all__ = ["AverageMeter", "AverageMeters", "MultiTaskAverageMeters"]
