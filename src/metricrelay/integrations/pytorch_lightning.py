"""The Lightning logger for the standalone ``pytorch_lightning`` package (same as
:mod:`metricrelay.integrations.lightning`, on that package's ``Logger`` and Fabric)."""

from __future__ import annotations

from pytorch_lightning.loggers import Logger

from metricrelay.integrations.lightning_logger import LoggerMethods

__all__ = ["MetricRelayLogger"]


class MetricRelayLogger(LoggerMethods, Logger):
    """``pytorch_lightning`` metrics and hyperparameters → the metricrelay stream."""

    fabric = "lightning_fabric"
