"""A Lightning logger that writes through the Emitter (``lightning`` package, 2.x).

``Trainer(logger=MetricRelayLogger("my-execution"))``; for the standalone ``pytorch_lightning``
package, the same class is in :mod:`metricrelay.integrations.pytorch_lightning`.
"""

from __future__ import annotations

from lightning.pytorch.loggers import Logger

from metricrelay.integrations.lightning_logger import LoggerMethods

__all__ = ["MetricRelayLogger"]


class MetricRelayLogger(LoggerMethods, Logger):
    """Lightning metrics and hyperparameters → the metricrelay stream; see LoggerMethods."""

    fabric = "lightning.fabric"
