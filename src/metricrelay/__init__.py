"""metricrelay: a durable relay of training metrics to SAP AI Core."""

__version__ = "0.1.0"

from metricrelay.points import PointError
from metricrelay.producer import AsyncEmitter, BufferFull, Emitter

__all__ = ["AsyncEmitter", "BufferFull", "Emitter", "PointError", "__version__"]
